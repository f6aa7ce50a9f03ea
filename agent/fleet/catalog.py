"""What a reader trusts on the share: each host's manifest, checked before any segment is read.

A host is *readable* when its ``summary.json`` parses, is this schema or an older one, names the
folder's host id, and every segment it lists is there, of the listed size, with the listed
SHA-256. Anything else (a corrupt or truncated file, a newer agent's schema, a manifest naming a
segment still being copied) skips the whole host and names it with the reason, so a report is
never broken by one bad host and never silently counts half of one.

Checksums are remembered per file (path, size, mtime) in a small JSON file, so a report over an
unchanged share reads each segment's bytes once, not every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.fleet.files import HOST_ID, write_atomic
from agent.fleet.segments import MANIFEST, SCHEMA_VERSION, STREAMS

log = logging.getLogger(__name__)


_SEGMENT_PATH = re.compile(r"^\d{4}-\d{2}/(requests|gpu)-\d{6}\.parquet$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Segment:
    path: Path
    stream: str
    rows: int


@dataclass(frozen=True)
class Host:
    host_id: str
    folder: Path
    manifest: dict[str, Any]
    segments: tuple[Segment, ...]

    @property
    def hostname(self) -> str:
        return str(self.manifest.get("hostname") or "")

    @property
    def published_at(self) -> str:
        return str(self.manifest.get("published_at") or "")

    @property
    def budgets(self) -> list[dict[str, Any]]:
        budgets = self.manifest.get("budgets")
        return budgets if isinstance(budgets, list) else []


@dataclass(frozen=True)
class Skipped:
    """A host folder a reader left out, and why (in words an admin can act on)."""

    name: str
    folder: Path
    reason: str


@dataclass(frozen=True)
class Catalog:
    share_dir: Path
    hosts: tuple[Host, ...]
    skipped: tuple[Skipped, ...]

    def files(self, stream: str) -> list[str]:
        return [str(s.path) for host in self.hosts for s in host.segments if s.stream == stream]


class _BadHost(Exception):
    pass


@dataclass
class _Checksums:
    """sha256 of segment files already verified, keyed by path, size and mtime."""

    file: Path | None
    known: dict[str, str] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def load(cls, file: Path | None) -> _Checksums:
        if file is None:
            return cls(None)
        try:
            known = json.loads(file.read_bytes())
        except (OSError, ValueError):
            return cls(file)
        return cls(file, known if isinstance(known, dict) else {})

    def sha256(self, path: Path, stat: os.stat_result) -> str:
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        digest = self.known.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digest = h.hexdigest()
            self.known[key] = digest
            self.changed = True
        return digest

    def save(self) -> None:
        if self.file is not None and self.changed:
            try:
                write_atomic(self.file, json.dumps(self.known).encode())
            except OSError as e:
                log.info("could not keep the fleet checksum cache %s: %s", self.file, e)


def scan(share_dir: Path, checksum_cache: Path | None = None) -> Catalog:
    """Every host folder under ``<share>/fleet/``: the readable ones and the skipped ones.
    Raises OSError only when the fleet folder itself cannot be listed."""
    root = share_dir / "fleet"
    checksums = _Checksums.load(checksum_cache)
    hosts: list[Host] = []
    skipped: list[Skipped] = []
    for folder in sorted(_host_folders(root)):
        try:
            hosts.append(_read_host(folder, checksums))
        except _BadHost as e:
            skipped.append(Skipped(_name(folder), folder, str(e)))
    checksums.save()
    return Catalog(share_dir, tuple(hosts), tuple(skipped))


def _host_folders(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for entry in os.scandir(root):
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            yield Path(entry.path)


def _name(folder: Path) -> str:
    """The host's id, with its hostname when its manifest can say it."""
    try:
        hostname = json.loads((folder / MANIFEST).read_bytes()).get("hostname")
    except (OSError, ValueError, AttributeError):
        hostname = None
    return f"{folder.name} ({hostname})" if isinstance(hostname, str) and hostname else folder.name


def _read_host(folder: Path, checksums: _Checksums) -> Host:
    if not HOST_ID.match(folder.name):
        raise _BadHost("not a host folder (a host id is 32 hex digits)")
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise _BadHost(f"no {MANIFEST} yet (never published, or still being copied)") from None
    except (OSError, ValueError) as e:
        raise _BadHost(f"{MANIFEST} cannot be read: {e}") from None
    if not isinstance(manifest, dict):
        raise _BadHost(f"{MANIFEST} is not a JSON object")
    schema = manifest.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise _BadHost(f"{MANIFEST} has no valid schema version")
    if schema > SCHEMA_VERSION:
        raise _BadHost(f"written by a newer agent (schema {schema}; this one reads up to {SCHEMA_VERSION}): upgrade")
    if manifest.get("host_id") != folder.name:
        raise _BadHost(f"{MANIFEST} names host {manifest.get('host_id')!r}, not its folder's")
    entries = manifest.get("segments")
    if not isinstance(entries, list):
        raise _BadHost(f"{MANIFEST} lists no segments")
    segments = tuple(_check_segment(folder, entry, checksums) for entry in entries)
    return Host(folder.name, folder, manifest, segments)


def _check_segment(folder: Path, entry: Any, checksums: _Checksums) -> Segment:
    if not isinstance(entry, dict):
        raise _BadHost("a segment entry is not an object")
    relative, stream = entry.get("path"), entry.get("stream")
    size, rows, digest = entry.get("bytes"), entry.get("rows"), entry.get("sha256")
    if not isinstance(relative, str) or not _SEGMENT_PATH.match(relative):
        raise _BadHost(f"a segment path {relative!r} is not <yyyy-mm>/<stream>-<seq>.parquet")
    if stream not in STREAMS or not relative.split("/")[1].startswith(f"{stream}-"):
        raise _BadHost(f"segment {relative}: unknown stream {stream!r}")
    if not (isinstance(size, int) and isinstance(rows, int) and size > 0 and rows >= 0):
        raise _BadHost(f"segment {relative}: bytes and rows must be counts")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise _BadHost(f"segment {relative}: no sha256")
    path = folder / relative
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise _BadHost(f"segment {relative} is missing (half-written or still being copied)") from None
    except OSError as e:
        raise _BadHost(f"segment {relative} cannot be read: {e}") from None
    if stat.st_size != size:
        raise _BadHost(f"segment {relative} is {stat.st_size} bytes, the manifest says {size} (truncated?)")
    try:
        actual = checksums.sha256(path, stat)
    except OSError as e:
        raise _BadHost(f"segment {relative} cannot be read: {e}") from None
    if actual != digest:
        raise _BadHost(f"segment {relative} does not match its checksum (corrupt)")
    return Segment(path, stream, rows)
