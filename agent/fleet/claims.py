"""One alert for the fleet, not one per host: a marker on the share claims it.

Every agent of a fleet sees a department or organisation budget cross 80% at about the same time,
and each records the alert in its own ledger. Before posting it, the outbox claims it on the share
with a marker named for the alert (budget, subject, period, threshold), created exclusively::

    <share>/fleet/_alerts/<2 hex>/<sha256 of the alert's key>.json
    {"key": "budget_alert:eng:department:eng:2026-12:80", "host": "<host-id>",
     "hostname": "ws-17", "event_id": 42, "claimed_at": "..."}

The marker is written whole in a temp file, then linked to its name, which fails when the name
exists (atomic on local disks, NFS and SMB; where a share cannot link, an O_EXCL create is the
fallback). The host that made it posts the alert; the others mark theirs as sent by that host.
The host that made it reads it back after a restart and posts again (the same Idempotency-Key).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from agent.files import write_synced_temp
from agent.ledger.database import utc_now_iso

ALERTS = "_alerts"  # under <share>/fleet/; readers of host folders skip names starting with "_"
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}


@dataclass(frozen=True)
class Claim:
    ours: bool
    host: str  # the host id that holds it
    hostname: str
    event_id: int | None  # that host's event


class FleetClaims:
    """This host's side of the alert markers on one share."""

    def __init__(self, share_dir: Path, host_id: str) -> None:
        self.root = share_dir / "fleet" / ALERTS
        self.host_id = host_id

    def claim(self, key: str, event_id: int) -> Claim:
        """Claim the alert ``key`` for this host's ``event_id``, or say who holds it.

        Raises OSError when the share cannot be written or read (the caller tries again later)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = {"key": key, "host": self.host_id, "hostname": socket.gethostname(), "event_id": event_id,
                "claimed_at": utc_now_iso()}  # fmt: skip
        if self._create(path, json.dumps(mine, sort_keys=True).encode()):
            return Claim(True, self.host_id, socket.gethostname(), event_id)
        held = self._read(path)
        host = str(held.get("host", ""))
        held_event = held.get("event_id")
        held_event = held_event if isinstance(held_event, int) else None
        ours = host == self.host_id and held_event == event_id
        return Claim(ours, host or "an unknown host", str(held.get("hostname", "")), held_event)

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.json"

    def _create(self, path: Path, data: bytes) -> bool:
        """``data`` at ``path`` if nothing is there yet: True when this call made it."""
        temp = write_synced_temp(path, data)
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        try:  # a share without hard links: an exclusive create (a reader may see it part-written)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    @staticmethod
    def _read(path: Path) -> dict[str, object]:
        try:
            held = json.loads(path.read_bytes())
        except ValueError:  # being written by a host without hard links, or hand-edited: someone holds it
            return {}
        return held if isinstance(held, dict) else {}
