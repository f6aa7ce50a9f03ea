"""Writing signed policies: next to the file (``sign``) or onto the share (``publish``).

A publish never leaves a half-written file under a name an agent reads: each file is written
to a temporary name in the same folder, flushed to disk, then renamed over the old one. The
.toml is renamed first, then the .sig. An agent that reads between the two renames sees a new
.toml with the old .sig; that pair fails verification, so nothing of it applies, and the agent
reads again a second later (and on its next sync).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.errors import PolicyError
from agent.files import fsync_dir, write_atomic, write_synced_temp
from agent.policy.model import Policy, parse_policy
from agent.policy.signing import sign
from agent.policy.sync import POLICY_FILE, POLICY_FOLDER, SIGNATURE_FILE


@dataclass(frozen=True)
class Signed:
    policy: Policy
    body: bytes
    signature: bytes


def sign_file(policy_file: Path, key_file: Path) -> Signed:
    """Validate and sign a policy file (nothing invalid is ever signed)."""
    body = _read(policy_file, "policy file")
    policy = parse_policy(body)
    return Signed(policy, body, sign(body, _read(key_file, "signing key")))


def write_signature(policy_file: Path, signed: Signed) -> Path:
    target = policy_file.with_name(policy_file.name + ".sig")
    write_atomic(target, signed.signature, mode=0o644)  # agents on other machines read it
    return target


def publish(signed: Signed, share_dir: Path, *, allow_older: bool = False) -> Path:
    """Put a signed policy on the share; returns the folder. Refuses what agents would refuse."""
    if not share_dir.is_dir():
        raise PolicyError(f"share {share_dir} is not a folder (is it mounted?)", code="share_unreachable")
    folder = share_dir / POLICY_FOLDER
    folder.mkdir(exist_ok=True)
    published = _published_version(folder / POLICY_FILE)
    if published is not None and not allow_older:
        version, body = published
        if body != signed.body and signed.policy.version <= version:
            raise PolicyError(
                f"the share holds version {version}; agents refuse older versions and changed files under the "
                f"same version: raise `version` above {version}",
                code="stale_version",
            )
    # Both on disk before either is renamed into place; agents on other machines read them.
    tmp_toml = write_synced_temp(folder / POLICY_FILE, signed.body, mode=0o644)
    tmp_sig = write_synced_temp(folder / SIGNATURE_FILE, signed.signature, mode=0o644)
    os.replace(tmp_toml, folder / POLICY_FILE)
    os.replace(tmp_sig, folder / SIGNATURE_FILE)
    fsync_dir(folder)
    return folder


def _published_version(path: Path) -> tuple[int, bytes] | None:
    try:
        body = path.read_bytes()
        return parse_policy(body).version, body
    except (OSError, PolicyError):
        return None  # nothing usable there: agents would not hold it against this one


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PolicyError(f"cannot read the {what} {path}: {e.strerror or e}", code="unreadable") from None
