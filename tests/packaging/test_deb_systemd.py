"""The .deb under a real systemd: packaging/linux/check-systemd.sh boots a Debian 12 container
(systemd-nspawn) with the package installed and checks the agent service from inside it: it
starts at boot as the user aifinops, answers, serves a chat with a token issued as DEPLOY.md
says, applies the share's signed policy, is restarted after a kill -9, stops cleanly, and
upgrade, remove and purge do what README.linux.md promises.

Runs when AIFINOPS_DEB names the package (`make package-test`) and this host can run an nspawn
container as root; skips saying why otherwise. About 40 s with the root file system cached in
~/.cache/aifinops-build/rootfs-bookworm.tar; the first run adds a debootstrap (about a minute,
from the Debian mirror). Nothing on this host is installed or started: the container has its
own root, users and network namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "packaging" / "linux" / "check-systemd.sh"
# Read at import: the suite's autouse fixture clears AIFINOPS_* from the environment.
DEB = os.environ.get("AIFINOPS_DEB", "")
HOME = Path(os.environ.get("HOME", "/root"))
ROOTFS_TAR = HOME / ".cache" / "aifinops-build" / "rootfs-bookworm.tar"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What check-systemd-inside.sh must report as passed: a check that silently went missing fails.
REQUIRED_CHECKS = [
    "the install (no systemd running) enabled aifinops-agent.service",
    "the agent started at boot answers http://127.0.0.1:8765/api/v1/info",
    "systemctl is-active aifinops-agent.service: active",
    "runs as User=aifinops Group=aifinops",
    "its environment: AIFINOPS_HOME=/var/lib/aifinops AIFINOPS_CONFIG=/etc/aifinops/config.toml",
    "systemd-analyze verify aifinops-agent.service: clean",
    "DEPLOY.md's 'sudo -u aifinops env ... aifinops users add alice' printed a token",
    "doctor as alice: the token line names her token file",
    "a chat completion with alice's token: HTTP 200",
    "... answered by the local model (X-AIFinOps-Route: local)",
    "doctor as the service user: policy version 1 in force",
    "doctor as alice: the policy in force is the system agent's (version 1)",
    "the policy refuses the local model to bob of research (gpt-4o-mini only): HTTP 403",
    "journalctl -u aifinops-agent.service: no traceback, ERROR, WARNING or permission problem",
    "kill -9 of the main process",
    "systemctl stop: inactive, Result=success, the agent exited 0 by itself",
    "after the upgrade the service is active",
    "after dpkg -r: the service is stopped",
    "... config, ledger, token and the user are kept",
    "after dpkg -P: /etc/aifinops, /var/lib/aifinops, the user and group are gone",
    "... and systemd knows no aifinops-agent.service any more",
]


def _skip_reason() -> str | None:
    if not DEB:
        return "AIFINOPS_DEB is not set: `make package-test` builds the .deb and sets it"
    if sys.platform != "linux" or os.geteuid() != 0:
        return "booting a container needs Linux and root (CI runs as root)"
    if shutil.which("systemd-nspawn") is None:
        return "no systemd-nspawn on this host (apt-get install systemd-container)"
    if not ROOTFS_TAR.is_file() and shutil.which("debootstrap") is None:
        return f"no cached {ROOTFS_TAR} and no debootstrap to make it (apt-get install debootstrap)"
    # Can this host make a container at all (namespaces, mounts)? Inside an unprivileged Docker
    # container it cannot. A volatile copy of this host's own /usr runs /bin/true in ~0.1 s.
    probe = subprocess.run(
        ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
         "-D", "/", "--volatile=yes", "/bin/true"],
        capture_output=True, text=True, timeout=60, env={"PATH": PATH},
    )  # fmt: skip
    if probe.returncode != 0:
        return f"systemd-nspawn cannot run a container on this host: {probe.stderr.strip()[-300:]}"
    return None


_SKIP = _skip_reason()


@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
def test_agent_service_under_real_systemd(tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": str(HOME)}
    cli = Path(sys.executable).parent / "aifinops"  # the admin CLI signs the share's policy
    if cli.is_file():
        env["AIFINOPS_CLI"] = str(cli)
    run = subprocess.run([CHECK, DEB, results], env=env, capture_output=True, text=True, timeout=1800)
    log = (results / "check.log").read_text(errors="replace") if (results / "check.log").exists() else ""
    report = f"{run.stdout}\n{run.stderr}\n--- check.log\n{log}"
    if not log:
        console = results / "console.log"
        report += "\n--- console.log\n" + (console.read_text(errors="replace")[-6000:] if console.exists() else "")
    assert run.returncode == 0, report
    assert (results / "status").read_text().strip() == "PASS", report
    passed = [line.removeprefix("ok ") for line in log.splitlines() if line.startswith("ok ")]
    failed = [line for line in log.splitlines() if line.startswith("FAIL ")]
    assert not failed, report
    missing = [check for check in REQUIRED_CHECKS if not any(line.startswith(check) for line in passed)]
    assert not missing, f"checks that did not run: {missing}\n{report}"
