"""Tokens stored hashed, authentication, revocation and the workstation's first-run user."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import AuthError, InvalidRequest
from agent.identity import (
    TOKEN_PREFIX,
    Identity,
    check_name,
    hash_token,
    read_token_file,
    write_token_file,
)
from agent.ledger.database import Database
from agent.ledger.users import UserStore


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(tmp_path / "ledger.db")
    yield database
    database.close()


@pytest.fixture
def identity(db: Database) -> Identity:
    return Identity(UserStore(db))


@pytest.fixture
def os_user(monkeypatch: pytest.MonkeyPatch) -> str:
    """getpass.getuser() reads LOGNAME first: pin the OS account name."""
    monkeypatch.setenv("LOGNAME", "tester")
    return "tester"


def all_cell_values(db: Database) -> list[object]:
    tables = [r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
    rows = [row for table in tables for row in db.query(f"SELECT * FROM {table}")]  # noqa: S608
    return [value for row in rows for value in row.values()]


def test_add_user_returns_a_token_and_stores_only_its_hash(identity: Identity, db: Database) -> None:
    token = identity.add_user("alice", "sales")
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) > len(TOKEN_PREFIX) + 40  # 32 random bytes, base64url
    [row] = db.query("SELECT token_hash FROM tokens")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    assert not any(isinstance(v, str) and token[len(TOKEN_PREFIX) :] in v for v in all_cell_values(db))


def test_tokens_are_not_reused(identity: Identity) -> None:
    assert identity.add_user("alice", "sales") != identity.add_user("bob", "sales")


def test_authenticate_maps_a_token_to_its_user(identity: Identity) -> None:
    alice = identity.add_user("alice", "sales")
    root = identity.add_user("root", "it", admin=True)
    caller = identity.authenticate(alice)
    assert (caller.user, caller.department, caller.is_admin) == ("alice", "sales", False)
    assert identity.authenticate(root).is_admin is True
    assert identity.authenticate(root).user_id != caller.user_id


@pytest.mark.parametrize("token", [None, "", "afo_not-a-real-token", "Bearer x"])
def test_missing_or_unknown_tokens_are_auth_errors(identity: Identity, token: str | None) -> None:
    identity.add_user("alice", "sales")
    with pytest.raises(AuthError):
        identity.authenticate(token)


def test_a_token_with_a_changed_character_is_refused(identity: Identity) -> None:
    token = identity.add_user("alice", "sales")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(AuthError):
        identity.authenticate(flipped)


def test_revoke_stops_every_token_of_the_user(identity: Identity) -> None:
    first = identity.add_user("alice", "sales")
    second = identity.issue_token("alice", label="laptop")
    bob = identity.add_user("bob", "sales")
    assert identity.authenticate(second).user == "alice"

    assert identity.revoke("alice") is True
    for token in (first, second):
        with pytest.raises(AuthError):
            identity.authenticate(token)
    assert identity.authenticate(bob).user == "bob"  # nobody else is affected
    assert identity.revoke("alice") is False  # already revoked
    assert identity.revoke("nobody") is False
    with pytest.raises(InvalidRequest):
        identity.issue_token("alice")  # no new tokens for a revoked user


def test_list_users_counts_active_tokens(identity: Identity) -> None:
    identity.add_user("alice", "sales")
    identity.issue_token("alice")
    identity.add_user("bob", "it", admin=True)
    identity.revoke("bob")
    users = {u.name: u for u in identity.list_users()}
    alice = users["alice"]
    assert (alice.active_tokens, alice.role, alice.revoked_at) == (2, "user", None)
    assert (users["bob"].active_tokens, users["bob"].role) == (0, "admin")
    assert users["bob"].revoked_at is not None


def test_a_duplicate_user_is_an_invalid_request(identity: Identity) -> None:
    identity.add_user("alice", "sales")
    with pytest.raises(InvalidRequest, match="already exists"):
        identity.add_user("alice", "marketing")


def test_a_duplicate_user_leaves_the_first_one_intact(identity: Identity) -> None:
    token = identity.add_user("alice", "sales")
    with pytest.raises(InvalidRequest):
        identity.add_user("alice", "marketing")
    assert [(u.name, u.department, u.active_tokens) for u in identity.list_users()] == [("alice", "sales", 1)]
    assert identity.authenticate(token).department == "sales"


@pytest.mark.parametrize(
    ("name", "department"),
    [
        ("", "sales"),
        ("alice", ""),
        ("-alice", "sales"),
        ("al ice", "sales"),
        ("alice;drop", "sales"),
        ("a" * 65, "sales"),
        ("alice", "sales dept"),
        ("ålice", "sales"),
    ],
)
def test_bad_names_are_rejected_and_nothing_is_stored(identity: Identity, name: str, department: str) -> None:
    with pytest.raises(InvalidRequest, match="not valid"):
        identity.add_user(name, department)
    assert identity.list_users() == []


@pytest.mark.parametrize("name", ["a", "alice", "alice.smith@corp.example", "u_1-2", "A" * 64])
def test_good_names_are_accepted(name: str) -> None:
    assert check_name("user name", name) == name


def test_a_name_with_a_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        check_name("user name", "alice\n")


# -- token files and the first-run OS user --------------------------------------------------


def test_token_file_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "config" / "token"
    write_token_file(path, "afo_abc")
    assert read_token_file(path) == "afo_abc"
    write_token_file(path, "afo_def")  # replaces
    assert read_token_file(path) == "afo_def"
    assert [p.name for p in path.parent.iterdir()] == ["token"]
    if sys.platform != "win32":
        assert os.stat(path).st_mode & 0o777 == 0o600


def test_read_token_file_of_nothing_is_none(tmp_path: Path) -> None:
    assert read_token_file(tmp_path / "missing") is None
    (tmp_path / "blank").write_text("  \n")
    assert read_token_file(tmp_path / "blank") is None
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    assert read_token_file(tmp_path / "binary") is None


def test_provision_os_user_makes_the_first_user_an_admin_with_a_private_token_file(
    identity: Identity, os_user: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "config" / "token"
    caller = identity.provision_os_user(token_file, department="it")
    assert caller is not None
    assert (caller.user, caller.department, caller.is_admin) == (os_user, "it", True)
    token = read_token_file(token_file)
    assert token is not None and token.startswith(TOKEN_PREFIX)
    assert identity.authenticate(token) == caller
    if sys.platform != "win32":
        assert os.stat(token_file).st_mode & 0o777 == 0o600


def test_provision_os_user_is_idempotent(identity: Identity, os_user: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    first = identity.provision_os_user(token_file)
    content = token_file.read_bytes()
    second = identity.provision_os_user(token_file)
    assert second == first
    assert token_file.read_bytes() == content
    assert [(u.name, u.active_tokens) for u in identity.list_users()] == [(os_user, 1)]


def test_the_os_user_is_not_admin_when_the_ledger_already_has_users(
    identity: Identity, os_user: str, tmp_path: Path
) -> None:
    identity.add_user("boss", "it", admin=True)
    caller = identity.provision_os_user(tmp_path / "token")
    assert caller is not None
    assert (caller.user, caller.is_admin) == (os_user, False)


def test_a_garbage_token_file_gets_a_new_token_for_the_same_user(
    identity: Identity, os_user: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    first = identity.provision_os_user(token_file)
    token_file.write_text("this is not a token\n")
    second = identity.provision_os_user(token_file)
    assert second == first
    new_token = read_token_file(token_file)
    assert new_token is not None and new_token.startswith(TOKEN_PREFIX)
    assert identity.authenticate(new_token) == first
    assert [(u.name, u.active_tokens) for u in identity.list_users()] == [(os_user, 2)]
    # Not lost: it may be a token another agent issued (a shared box's system agent).
    assert (tmp_path / "token.replaced").read_text() == "this is not a token\n"


def test_a_revoked_os_user_is_left_revoked(identity: Identity, os_user: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    first = identity.provision_os_user(token_file)
    assert first is not None
    old = token_file.read_text()
    identity.revoke(os_user)
    assert identity.provision_os_user(token_file) is None
    assert token_file.read_text() == old  # the dead token is not replaced with a live one
    with pytest.raises(AuthError):
        identity.authenticate(old.strip())


@pytest.mark.parametrize(
    ("login", "expected"),
    [("John Smith", "John_Smith"), ("DOMAIN\\jsmith", "DOMAIN_jsmith"), ("-dash", "user")],
)
def test_odd_os_account_names_become_valid_user_names(
    identity: Identity, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, login: str, expected: str
) -> None:
    monkeypatch.setenv("LOGNAME", login)
    caller = identity.provision_os_user(tmp_path / "token")
    assert caller is not None
    assert caller.user == expected
