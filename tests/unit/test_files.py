"""Files written whole or not at all: the one helper, and each place that writes through it."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.discovery import write_discovery
from agent.files import write_atomic
from agent.identity import read_token_file, write_token_file
from agent.paths import Paths
from agent.settings import default_config_text, write_default_config

# A writer puts the n-th version of its file in a folder and says where, and what a reader finds.
Writer = Callable[[Path, int], tuple[Path, str]]


def _atomic(folder: Path, n: int) -> tuple[Path, str]:
    write_atomic(folder / "state.json", f'{{"n": {n}}}'.encode())
    return folder / "state.json", f'{{"n": {n}}}'


def _token(folder: Path, n: int) -> tuple[Path, str]:
    write_token_file(folder / "token", f"afo_token{n}")
    return folder / "token", f"afo_token{n}"


def _discovery(folder: Path, n: int) -> tuple[Path, str]:
    path = write_discovery(Paths(folder, folder / "data", folder / "logs", folder / "cache"), f"http://127.0.0.1:{n}")
    return path, f"http://127.0.0.1:{n}"


def _default_config(folder: Path, n: int) -> tuple[Path, str]:
    write_default_config(folder / "config.toml")
    return folder / "config.toml", default_config_text()


def _read(path: Path) -> str:
    if path.name == "token":
        return read_token_file(path) or ""
    if path.name == "agent.json":
        return str(json.loads(path.read_text(encoding="utf-8"))["url"])
    return path.read_text(encoding="utf-8")


WRITERS = pytest.mark.parametrize(
    "write",
    [_atomic, _token, _discovery, _default_config],
    ids=["write_atomic", "token file", "discovery file", "default config"],
)


@WRITERS
def test_two_writers_of_one_file_do_not_share_a_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Writer
) -> None:
    """The first writer is held at its rename while a second one writes the same file from start
    to end: both succeed, the first rename lands last, and no temp file is left."""
    real_replace = os.replace
    renames: list[str] = []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renames.append(os.fspath(src))
        if len(renames) == 1:
            write(tmp_path, 2)  # the second writer, start to end (its rename comes through here)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    path, first = write(tmp_path, 1)
    monkeypatch.undo()
    assert len(renames) == 2
    assert _read(path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@WRITERS
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Writer
) -> None:
    path, first = write(tmp_path, 1)
    if path.name == "config.toml":
        path.unlink()  # it is written only when there is none

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        write(tmp_path, 2)
    monkeypatch.undo()
    if path.name == "config.toml":
        assert list(tmp_path.iterdir()) == []
    else:
        assert _read(path) == first
        assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_the_token_is_never_in_a_file_others_can_read(tmp_path: Path) -> None:
    """A file planted at a temp name beside the token file (readable by all, held open by a
    reader) never receives the token, and the token file is its owner's only."""
    path = tmp_path / "token"
    planted = tmp_path / "token.tmp"
    planted.write_text("")
    planted.chmod(0o644)
    with planted.open(encoding="utf-8") as reader:
        write_token_file(path, "afo_secret")
        assert reader.read() == ""
    assert read_token_file(path) == "afo_secret"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_write_atomic_creates_the_file_with_the_mode_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[int] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        modes.append(os.stat(src).st_mode & 0o777)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    old_umask = os.umask(0o077)  # takes more than 0o600 leaves: the mode asked for still wins
    try:
        write_atomic(tmp_path / "private", b"x", mode=0o640)
        write_atomic(tmp_path / "plain", b"x")
    finally:
        os.umask(old_umask)
    assert modes == [0o640, 0o600]  # the temp file had the mode before it had the name
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o600  # no mode: 0o666 less the umask


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_stale_temp_file_does_not_decide_the_discovery_files_mode(tmp_path: Path) -> None:
    paths = Paths(tmp_path, tmp_path / "data", tmp_path / "logs", tmp_path / "cache")
    stale = tmp_path / "agent.tmp"  # left by a writer that crashed, readable by all
    stale.write_text("")
    stale.chmod(0o644)
    path = write_discovery(paths, "http://127.0.0.1:8765")
    assert path.stat().st_mode & 0o777 == 0o600
