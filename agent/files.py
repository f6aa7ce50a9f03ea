"""Writing a file so that a reader never sees half of it: a temp file beside it, fsync, rename.

The rename is the only moment the file appears under its name, so a reader (another process, this
one after a crash or a power cut, an agent reading a share that vanished mid-write) finds the old
version or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """``data`` at ``path``, complete or not at all (an existing file is replaced whole).

    ``mode``: the file's permissions from the instant it exists (0o600: its owner's only), whatever
    the umask; without it, the default (0o666 less the umask)."""
    temp = write_synced_temp(path, data, mode=mode)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(path.parent)


def write_synced_temp(path: Path, data: bytes, *, mode: int | None = None) -> Path:
    """``data`` in a new temp file beside ``path``, on disk: the caller renames or links it into
    place (`write_atomic` does one file; a policy and its signature are both written first).

    The temp file has a name of its own, created exclusively, so two writers of one path never
    share one, and a file planted at a temp name is never written to. Nothing is left behind when
    writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temp, flags, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as out:
            if mode is not None and hasattr(os, "fchmod"):  # the umask may have taken bits asked for
                os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return temp


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems, and Windows, do not open folders)."""
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
