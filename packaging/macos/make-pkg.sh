#!/bin/sh
# Build the macOS installer package from the PyInstaller output. Runs on macOS only (pkgbuild,
# productbuild); the CI workflow .github/workflows/installers.yml runs it on macos-latest.
#
#   packaging/macos/make-pkg.sh [VERSION]       (from anywhere; VERSION defaults to agent.__version__)
#
# Input: dist/aifinops.app (build.spec's BUNDLE, with packaging/macos/app_info.py's Info.plist)
# or, failing that, the one-folder dist/aifinops/, which is wrapped into aifinops.app here.
# Output: dist/aifinops-VERSION.pkg. Signed when MACOS_INSTALLER_IDENTITY names a
# "Developer ID Installer" identity in the keychain; unsigned otherwise (fine for
# `sudo installer -pkg`, refused by Gatekeeper when double-clicked from a download).
#
# Installed layout: /Applications/aifinops.app (Contents/MacOS/aifinops and aifinops-tray),
# /usr/local/bin/aifinops and aifinops-tray (links), /usr/local/share/aifinops/ (launchd plists,
# default_config.toml, uninstall.sh); the postinstall script does the rest (docs/DEPLOY.md).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO"
VERSION=${1:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' agent/__init__.py)}
BUILD=build/macos-pkg
ROOT=$BUILD/root
APP=$ROOT/Applications/aifinops.app
OUT=dist/aifinops-$VERSION.pkg

rm -rf "$BUILD"
mkdir -p "$ROOT/Applications" "$ROOT/usr/local/bin" "$ROOT/usr/local/share/aifinops/launchd" "$BUILD/scripts"

if [ -d dist/aifinops.app ]; then
    ditto dist/aifinops.app "$APP"
elif [ -d dist/aifinops ]; then
    echo "make-pkg: no dist/aifinops.app; wrapping the one-folder dist/aifinops/ into aifinops.app"
    mkdir -p "$APP/Contents/MacOS" "$APP/Contents/Resources"
    ditto dist/aifinops "$APP/Contents/MacOS"
    python3 "$HERE/app_info.py" "$VERSION" >"$APP/Contents/Info.plist"
else
    echo "make-pkg: build the bundle first: pyinstaller build.spec --noconfirm" >&2
    exit 1
fi
for exe in aifinops aifinops-tray; do
    if [ ! -x "$APP/Contents/MacOS/$exe" ]; then
        echo "make-pkg: $APP/Contents/MacOS/$exe is missing: the plists start it from there" >&2
        exit 1
    fi
    ln -s "/Applications/aifinops.app/Contents/MacOS/$exe" "$ROOT/usr/local/bin/$exe"
done
plutil -lint "$APP/Contents/Info.plist"

cp "$HERE"/com.aifinops.*.plist "$ROOT/usr/local/share/aifinops/launchd/"
plutil -lint "$ROOT"/usr/local/share/aifinops/launchd/*.plist
cp agent/default_config.toml "$ROOT/usr/local/share/aifinops/default_config.toml"
cp "$HERE/uninstall.sh" "$ROOT/usr/local/share/aifinops/uninstall.sh"
cp "$HERE/preinstall" "$HERE/postinstall" "$BUILD/scripts/"
chmod 755 "$BUILD/scripts/preinstall" "$BUILD/scripts/postinstall" "$ROOT/usr/local/share/aifinops/uninstall.sh"

# An upgrade must go to /Applications even if someone moved the app: not relocatable.
pkgbuild --analyze --root "$ROOT" "$BUILD/component.plist"
plutil -replace 0.BundleIsRelocatable -bool NO "$BUILD/component.plist"
pkgbuild --root "$ROOT" --component-plist "$BUILD/component.plist" \
    --identifier com.aifinops.pkg --version "$VERSION" \
    --scripts "$BUILD/scripts" --install-location / \
    "$BUILD/aifinops-component.pkg"

productbuild --synthesize --package "$BUILD/aifinops-component.pkg" "$BUILD/distribution.xml"
set -- --distribution "$BUILD/distribution.xml" --package-path "$BUILD"
if [ -n "${MACOS_INSTALLER_IDENTITY:-}" ]; then
    set -- "$@" --sign "$MACOS_INSTALLER_IDENTITY"
fi
mkdir -p dist
productbuild "$@" "$OUT"
pkgutil --payload-files "$OUT" | grep -q 'Applications/aifinops.app/Contents/MacOS/aifinops$'
echo "built $OUT"
