"""Who is calling: bearer tokens (stored hashed) -> Caller(user, department, role).

Tokens are 32 random bytes, so a plain SHA-256 is the right hash (no salt or slow KDF needed:
nothing to brute-force). One token acts for exactly one user.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import AuthError, InvalidRequest
from agent.files import write_atomic

if TYPE_CHECKING:  # the ledger (sqlite_utils, numpy): not for the CLI and tray, which read the token file only
    from agent.ledger.users import UserRow, UserStore

log = logging.getLogger(__name__)

TOKEN_PREFIX = "afo_"  # noqa: S105 - a prefix, not a secret
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class Caller:
    user_id: int
    user: str
    department: str
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidRequest(f"{kind} {value!r} is not valid: 1-64 letters, digits, '.', '_', '@' or '-'")
    return value


def write_token_file(path: Path, token: str) -> None:
    """Write the token readable by its owner only (0600), replacing any older file."""
    write_atomic(path, (token + os.linesep).encode("utf-8"), mode=0o600)  # the line end text mode wrote


def read_token_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, UnicodeDecodeError):
        return None


class Identity:
    def __init__(self, users: UserStore) -> None:
        self._users = users

    def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        row = self._users.by_token_hash(hash_token(token))
        if row is None:
            raise AuthError("invalid or revoked token", code="invalid_api_key")
        return _caller(row)

    def add_user(self, name: str, department: str, *, admin: bool = False) -> str:
        """Create a user and return their first token (shown once, stored only hashed)."""
        check_name("user name", name)
        check_name("department", department)
        token = new_token()
        self._users.add(name, department, "admin" if admin else "user", hash_token(token))
        return token

    def issue_token(self, name: str, label: str = "") -> str:
        row = self._users.get(name)
        if row is None or row.revoked_at:
            raise InvalidRequest(f"no active user {name!r}")
        token = new_token()
        self._users.add_token(row.id, hash_token(token), label)
        return token

    def revoke(self, name: str) -> bool:
        return self._users.revoke(name)

    def list_users(self) -> list[UserRow]:
        return self._users.all()

    def provision_os_user(self, token_file: Path, department: str = "default") -> Caller | None:
        """First run on a workstation: a user for the OS account and a 0600 token file.

        The first user of a fresh ledger becomes its admin (the box's owner). A revoked OS
        user is left revoked.
        """
        existing = read_token_file(token_file)
        if existing:
            try:
                return self.authenticate(existing)
            except AuthError:
                log.info("token file %s holds no token this agent knows", token_file)
        name = _os_user_name()
        row = self._users.get(name)
        if row is None:
            admin = self._users.count() == 0
            token = self.add_user(name, department, admin=admin)
            log.info("provisioned OS user %s (department %s, admin=%s)", name, department, admin)
        elif row.revoked_at:
            log.warning("OS user %s is revoked; not provisioning a token", name)
            return None
        else:
            token = self.issue_token(name, label="token-file")
        if existing:
            # It may be a token another agent issued (a shared box's system agent): keep it.
            kept = token_file.with_name(token_file.name + ".replaced")
            token_file.replace(kept)
            log.warning("token file %s replaced; the token it held is kept in %s", token_file, kept)
        write_token_file(token_file, token)
        return self.authenticate(token)


def _caller(row: UserRow) -> Caller:
    return Caller(row.id, row.name, row.department, row.role == "admin")


def _os_user_name() -> str:
    name = re.sub(r"[^A-Za-z0-9._@-]", "_", getpass.getuser()) or "user"
    return name if _NAME.fullmatch(name) else "user"
