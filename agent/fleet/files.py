"""Writing to the share so that a reader never sees half a file: temp file, fsync, rename.

A share (SMB, NFS) may vanish mid-write; the rename is the only moment a file appears under its
name, so a reader finds the old version or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

HOST_ID = re.compile(r"^[0-9a-f]{32}$")


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``, complete or not at all (an existing file is replaced whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems do not open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
