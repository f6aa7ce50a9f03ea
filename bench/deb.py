"""The Linux package: .deb size, installed size, and how long dpkg takes to install and purge it.

Run as root on a machine without aifinops installed (it installs the package, then purges it):
    make deb && .venv/bin/python bench/deb.py [dist/aifinops_<version>_amd64.deb]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import update_section  # noqa: E402

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
MIB = 1024 * 1024


def dpkg(*args: str) -> float:
    """Run dpkg; its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run(["dpkg", *args], env=ENV, check=True, capture_output=True)
    return time.perf_counter() - started


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    deb = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "dist" / f"aifinops_{VERSION}_amd64.deb")
    if os.geteuid() != 0:
        sys.exit("bench/deb.py installs the package: run it as root")
    if subprocess.run(["dpkg-query", "-W", "aifinops"], env=ENV, capture_output=True).returncode == 0:
        sys.exit("aifinops is installed (or has config files) here: purge it first")
    control_kib = int(subprocess.run(["dpkg-deb", "-f", str(deb), "Installed-Size"], capture_output=True, text=True,
                                     check=True).stdout)  # fmt: skip
    install_s = dpkg("--install", str(deb))
    try:
        opt = tree_bytes(Path("/opt/aifinops"))
        models = tree_bytes(Path("/opt/aifinops/_internal/models"))
    finally:
        purge_s = dpkg("--purge", "aifinops")
    rows = [
        ("`.deb` file (zstd)", f"{deb.stat().st_size / MIB:.0f} MiB ({deb.stat().st_size:,} bytes)"),
        ("installed size (control field `Installed-Size`)", f"{control_kib / 1024:.0f} MiB"),
        (
            "installed `/opt/aifinops` (file bytes)",
            f"{opt / MIB:.0f} MiB, of which default models {models / MIB:.0f} MiB",
        ),
        ("`dpkg --install` (unpack, user, config, enable; no share)", f"{install_s:.1f} s"),
        ("`dpkg --purge`", f"{purge_s:.1f} s"),
    ]
    body = "| what | figure |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    body += (
        "\n\nThe package is the PyInstaller bundle (`make bundle`) as it is, plus units, desktop files"
        " and scripts of a few kB. A server installing with `--no-install-recommends` adds no X"
        " libraries; a desktop pulls the nine small GL/xcb/Wayland libraries the tray's Qt leaves to the system."
    )
    update_section("deb", "Linux package (.deb)", "make deb && sudo .venv/bin/python bench/deb.py", body)
    print(body)


if __name__ == "__main__":
    main()
