"""`aifinops policy ...` as an admin runs it: init, validate, keygen, sign, publish, sync."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.ledger.policies import PolicyStore
from agent.paths import Paths


def aifinops(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def write_config(home: Path, share: Path, public_key: str) -> None:
    config = Paths.resolve(home).config_file
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[share]\npath = "{share}"\npublic_keys = ["{public_key}"]\nread_timeout_s = 2\n')


def test_an_admin_writes_signs_publishes_and_an_agent_syncs(tmp_path: Path, hermetic_home: Path) -> None:
    policy = tmp_path / "policy.toml"
    assert "wrote" in aifinops("policy", "init", "--out", str(policy)).stdout
    assert "valid. version 1, Example Corp" in aifinops("policy", "validate", str(policy)).stdout
    assert aifinops("policy", "init", "--out", str(policy), check=False).returncode == 1  # never overwritten

    keygen = aifinops("policy", "keygen", "--out", str(tmp_path / "keys")).stdout
    key = tmp_path / "keys" / "policy_signing_key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    [line] = [line for line in keygen.splitlines() if line.startswith("public_keys = ")]
    public_key = json.loads(line.split("=", 1)[1])[0]
    assert public_key.startswith("ed25519:")
    assert "BEGIN" not in keygen  # the private key is never printed
    again = aifinops("policy", "keygen", "--out", str(tmp_path / "keys"), check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr

    signed = aifinops("policy", "sign", str(policy), "--key", str(key)).stdout
    assert "signed version 1" in signed and (tmp_path / "policy.toml.sig").exists()

    share = tmp_path / "share"
    share.mkdir()
    write_config(hermetic_home, share, public_key)
    nothing = aifinops("policy", "sync", check=False)
    assert nothing.returncode == 1 and "no policy published" in nothing.stdout
    assert "running on the local config's defaults" in nothing.stdout

    assert (
        "published version 1"
        in aifinops("policy", "publish", str(policy), "--share", str(share), "--key", str(key)).stdout
    )
    assert sorted(p.name for p in (share / "policy").iterdir()) == ["policy.toml", "policy.toml.sig"]
    assert "applied policy version 1" in aifinops("policy", "sync").stdout
    assert "unchanged: version 1" in aifinops("policy", "sync").stdout

    db = Database.open(Paths.resolve(hermetic_home).ledger_file)
    try:
        row = PolicyStore(db).last_good()
        assert row is not None and row.version == 1 and row.body == policy.read_bytes()
        kinds = [e.kind for e in EventLog(db).since(0, user_id=None, department=None)]
        assert kinds == ["policy_rejected", "policy_applied"]
    finally:
        db.close()

    # An edit without a version bump is refused at publish time, before any agent sees it.
    policy.write_text(policy.read_text().replace('amount_usd = "5.00"', 'amount_usd = "6.00"'))
    stale = aifinops("policy", "publish", str(policy), "--share", str(share), "--key", str(key), check=False)
    assert stale.returncode == 1 and "raise `version` above 1" in stale.stderr

    # Tampering on the share: the agent keeps version 1 and says why.
    (share / "policy" / "policy.toml").write_bytes(policy.read_bytes().replace(b"version = 1", b"version = 2"))
    tampered = aifinops("policy", "sync", check=False)
    assert tampered.returncode == 1 and "bad signature" in tampered.stdout
    assert "policy version 1" in tampered.stdout


def test_invalid_policies_are_refused_with_the_offending_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\norganisation = "A"\ntimezone = "Nowhere/Land"\ndefault_department = "g"\n')
    result = aifinops("policy", "validate", str(bad), check=False)
    assert result.returncode == 1 and "timezone" in result.stderr and "Traceback" not in result.stderr
    aifinops("policy", "keygen", "--out", str(tmp_path))
    signing = aifinops("policy", "sign", str(bad), "--key", str(tmp_path / "policy_signing_key.pem"), check=False)
    assert signing.returncode == 1 and not (tmp_path / "bad.toml.sig").exists()
    bad.write_text("version = 1\nversion = 2\n")
    broken = aifinops("policy", "validate", str(bad), check=False)
    assert broken.returncode == 1 and "line 2" in broken.stderr


def test_sync_without_a_share_says_so() -> None:
    result = aifinops("policy", "sync", check=False)
    assert result.returncode == 1 and "no share configured" in result.stdout


def test_policy_commands_explain_themselves() -> None:
    for command in ("init", "validate", "keygen", "sign", "publish", "sync"):
        assert "Usage: aifinops policy" in aifinops("policy", command, "--help").stdout
