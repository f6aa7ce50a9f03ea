"""Files of the fleet: this install's host id and the publish lock.

``write_atomic`` and ``fsync_dir`` (a reader of the share finds the old file or the new one, never
a torn one) are ``agent.files``'s, named here too for the modules that write to the share.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from agent.files import fsync_dir as fsync_dir
from agent.files import write_atomic as write_atomic

HOST_ID = re.compile(r"^[0-9a-f]{32}$")


def host_id(data_dir: Path) -> str:
    """This install's id on the share: made once, kept in the data folder.

    It survives renames of the machine (the hostname is published beside it, not as it) and
    reinstalls that keep the data folder (and so the ledger it describes)."""
    path = data_dir / "host-id"
    try:
        existing = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        existing = ""
    except (OSError, UnicodeDecodeError):
        existing = ""
    if HOST_ID.match(existing):
        return existing
    made = uuid.uuid4().hex
    write_atomic(path, (made + "\n").encode())
    return made


@contextlib.contextmanager
def process_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a local file: one process at a time past this point (the agent's
    scheduled publish and a `fleet publish` of the same ledger)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
