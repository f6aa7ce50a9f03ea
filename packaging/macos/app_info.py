"""Info.plist keys for the macOS tray app bundle (aifinops.app), for build.spec and make-pkg.sh.

build.spec (on macOS) applies them to PyInstaller's BUNDLE::

    sys.path.insert(0, "packaging/macos")
    from app_info import BUNDLE_ID, info_plist
    BUNDLE(coll, name="aifinops.app", bundle_identifier=BUNDLE_ID,
           info_plist=info_plist(version), icon=...)

make-pkg.sh uses the same keys when it has to wrap a plain one-folder bundle itself. Imports
nothing of the project and does nothing at import time but build these constants.
"""

from __future__ import annotations

BUNDLE_ID = "com.aifinops.tray"
# The installed app; the launchd plists and the postinstall script name paths inside it.
APP_PATH = "/Applications/aifinops.app"

INFO_PLIST: dict[str, object] = {
    "CFBundleName": "aifinops",
    "CFBundleDisplayName": "aifinops",
    "CFBundleIdentifier": BUNDLE_ID,
    # Double-clicking the app starts the tray; the CLI/agent executable sits beside it.
    "CFBundleExecutable": "aifinops-tray",
    "CFBundlePackageType": "APPL",
    "CFBundleInfoDictionaryVersion": "6.0",
    # A menu-bar-only app: no Dock icon, no app menu.
    "LSUIElement": True,
    "LSMinimumSystemVersion": "11.0",
    "LSApplicationCategoryType": "public.app-category.productivity",
    "NSHighResolutionCapable": True,
    "NSHumanReadableCopyright": "Apache-2.0",
}


def info_plist(version: str) -> dict[str, object]:
    """INFO_PLIST with the version (`agent.__version__`, e.g. "0.1.0") filled in."""
    return {**INFO_PLIST, "CFBundleShortVersionString": version, "CFBundleVersion": version}


if __name__ == "__main__":  # make-pkg.sh: python3 app_info.py VERSION > Info.plist
    import plistlib
    import sys

    sys.stdout.buffer.write(plistlib.dumps(info_plist(sys.argv[1])))
