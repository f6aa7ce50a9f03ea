"""Secrets a policy names by reference, resolved on each box: never written on the share.

The share is readable by every employee, so a channel's webhook URL or SMTP password is named,
not given: ``env:NAME`` reads the environment variable NAME of the agent's process (what a service
installer sets), ``keyring:NAME`` reads the OS keyring (Windows Credential Manager, macOS Keychain,
the Secret Service on Linux) under the service ``aifinops`` as the user the agent runs as (what
``aifinops alerts set-secret NAME`` stores), ``file:PATH`` reads a file that only the agent's account
can read (a Windows machine agent runs as LOCAL SERVICE, which has no keyring an admin can fill and
whose machine-wide environment every user sees). A value is only ever returned, never logged.
"""

from __future__ import annotations

import os
from pathlib import Path

KEYRING_SERVICE = "aifinops"


class SecretMissing(Exception):
    """The reference resolves to nothing on this box; the message says where it looked."""


def resolve(reference: str) -> str:
    """The secret's value; raises SecretMissing (with a message fit for an admin) when absent."""
    source, _, name = reference.partition(":")
    if source == "env":
        value = os.environ.get(name, "")
        if not value:
            raise SecretMissing(f"the environment variable {name} is not set on this box")
        return value
    if source == "keyring":
        found = _keyring_get(name)
        if not found:
            raise SecretMissing(f"the OS keyring of this box has no secret {name!r} (service {KEYRING_SERVICE!r})")
        return found
    if source == "file":
        try:
            text = Path(name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise SecretMissing(f"the file {name} cannot be read on this box ({type(e).__name__})") from None
        if not text:
            raise SecretMissing(f"the file {name} on this box is empty")
        return text
    raise SecretMissing(f"{source!r} is not a secret source (env:, keyring: or file:)")


def store(name: str, value: str) -> None:
    """Put a secret in the OS keyring of the user this runs as (``aifinops alerts set-secret``)."""
    import keyring

    keyring.set_password(KEYRING_SERVICE, name, value)


def _keyring_get(name: str) -> str | None:
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:  # pragma: no cover - keyring is a dependency
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, name)
    except KeyringError as e:  # no backend on this box (a headless Linux without a Secret Service)
        raise SecretMissing(f"the OS keyring cannot be read on this box ({type(e).__name__}: {e})") from None
