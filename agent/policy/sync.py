"""Policy sync: read the signed policy from the share, verify, validate, apply atomically.

Share layout (written by ``aifinops policy publish``)::

    <share>/policy/policy.toml       the policy, exactly the bytes that were signed
    <share>/policy/policy.toml.sig   "<key id>:<base64 Ed25519 signature>"

The agent reads both files in a worker thread with a timeout (a dead SMB/NFS mount blocks
reads for minutes), checks the signature against ``share.public_keys``, parses, refuses
rollbacks, then swaps one reference and records the policy as last-known-good in the ledger.
Anything wrong keeps the policy in force and leaves a ``policy_rejected`` event for admins,
one per (file, reason), or per day for an unreachable share.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.errors import LedgerError, PolicyError
from agent.ledger.database import utc_now_iso
from agent.ledger.events import EventLog
from agent.ledger.policies import PolicyStore
from agent.policy.model import MAX_POLICY_BYTES, Policy, parse_policy
from agent.policy.signing import MAX_SIGNATURE_BYTES, verify

log = logging.getLogger(__name__)

POLICY_FOLDER = "policy"
POLICY_FILE = "policy.toml"
SIGNATURE_FILE = "policy.toml.sig"

ReadFile = Callable[[Path, int], bytes]
T = TypeVar("T")


def read_limited(path: Path, limit_bytes: int) -> bytes:
    """The file's bytes; PolicyError when it is larger than ``limit_bytes``."""
    with path.open("rb") as f:
        data = f.read(limit_bytes + 1)
    if len(data) > limit_bytes:
        raise PolicyError(f"{path.name} is larger than {limit_bytes} bytes", code="too_large")
    return data


@dataclass(frozen=True)
class Published:
    policy: Policy
    sha256: str  # of body
    key_id: str
    body: bytes
    signature: bytes


def fetch(share_dir: Path, read_file: ReadFile = read_limited) -> tuple[bytes, bytes]:
    """(policy bytes, signature bytes) from the share; PolicyError when they cannot be read."""
    folder = share_dir / POLICY_FOLDER
    try:
        if not share_dir.is_dir():
            raise PolicyError(f"share {share_dir} is not reachable", code="share_unreachable")
        if not (folder / POLICY_FILE).exists():
            raise PolicyError(f"no policy published at {folder / POLICY_FILE}", code="not_published")
        body = read_file(folder / POLICY_FILE, MAX_POLICY_BYTES)
        try:
            signature = read_file(folder / SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
        except FileNotFoundError:
            raise PolicyError(f"unsigned: no {SIGNATURE_FILE} next to {POLICY_FILE}", code="unsigned") from None
    except OSError as e:
        raise PolicyError(
            f"cannot read the policy from {folder}: {e.strerror or e}", code="share_unreachable"
        ) from None
    return body, signature


def check(body: bytes, signature: bytes, public_keys: Sequence[str]) -> Published:
    """Verify, then parse (nothing of an unverified file is even parsed)."""
    kid = verify(body, signature, public_keys)
    policy = parse_policy(body)
    return Published(policy, hashlib.sha256(body).hexdigest(), kid, body, signature)


class _Reader:
    """Runs reads in a daemon thread with a timeout; never starts a second one while the
    first is still stuck (a hung mount would otherwise collect one thread per minute)."""

    def __init__(self) -> None:
        self._stuck: threading.Thread | None = None
        self._stuck_since = ""

    def run(self, fn: Callable[[], T], timeout_s: float) -> T:
        if self._stuck is not None and self._stuck.is_alive():
            log.debug("the share read started at %s is still blocked", self._stuck_since)
            raise PolicyError("the share has not answered an earlier read yet (a hung mount?)", code="share_slow")
        future: Future[T] = Future()

        def work() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller, who re-raises it
                future.set_exception(e)

        thread = threading.Thread(target=work, name="policy-share-read", daemon=True)
        thread.start()
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            self._stuck, self._stuck_since = thread, utc_now_iso()
            raise PolicyError(f"the share did not answer within {timeout_s:g} s", code="share_slow") from None


def read_published(
    share_dir: Path, public_keys: Sequence[str], timeout_s: float, *, read_file: ReadFile = read_limited
) -> Published:
    """Read, verify and parse the published policy; PolicyError saying why it cannot be used."""
    body, signature = _Reader().run(lambda: fetch(share_dir, read_file), timeout_s)
    return check(body, signature, public_keys)


@dataclass(frozen=True)
class SyncOutcome:
    result: Literal["applied", "unchanged", "rejected", "no_share"]
    reason: str = ""
    version: int | None = None  # of the policy in force after this sync
    sha256: str | None = None


@dataclass(frozen=True)
class PolicyStatus:
    source: Literal["none", "last_good", "share"]  # where the policy in force came from
    version: int | None
    sha256: str | None
    key_id: str | None
    applied_at: str | None
    share_dir: str | None
    last_attempt_at: str | None
    last_result: str | None
    last_failure_at: str | None
    last_failure_reason: str | None

    @property
    def summary(self) -> str:
        if self.version is None:
            return "no policy received yet: running on the local config's defaults"
        return f"policy version {self.version} ({self.sha256 and self.sha256[:12]}) applied {self.applied_at}"


@dataclass(frozen=True)
class _Applied:
    published: Published
    applied_at: str
    source: Literal["last_good", "share"]


class PolicySync:
    def __init__(
        self,
        store: PolicyStore,
        share_dir: Path | None,
        public_keys: Sequence[str],
        events: EventLog,
        *,
        timeout_s: float = 5.0,
        settle_s: float = 1.0,
        read_file: ReadFile = read_limited,
    ) -> None:
        self._store = store
        self._share_dir = share_dir
        self._keys = tuple(public_keys)
        self._events = events
        self._timeout_s = timeout_s
        self._settle_s = settle_s  # a publish caught between its two renames: read again after this
        self._read_file = read_file
        self._reader = _Reader()
        self._applied: _Applied | None = None  # swapped whole; readers never see half a policy
        self._sync_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._last_attempt: tuple[str, str] | None = None  # (at, result)
        self.last_read_unix: float | None = None  # the share's policy was last read (applied or unchanged)
        self._last_failure: tuple[str, str] | None = None  # (at, reason)

    @property
    def current(self) -> Policy | None:
        applied = self._applied
        return applied.published.policy if applied else None

    def load_last_good(self) -> Policy | None:
        """At start: put the last policy this agent applied back in force (the share may be down)."""
        with self._sync_lock:
            try:
                row = self._store.last_good()
            except LedgerError as e:
                log.warning("cannot read the last good policy: %s", e.message)
                return None
            if row is None:
                log.info("no policy received yet: running on the local config's defaults")
                return None
            try:
                if hashlib.sha256(row.body).hexdigest() != row.sha256:
                    raise PolicyError("its stored hash does not match its body", code="corrupt")
                policy = parse_policy(row.body)
            except PolicyError as e:
                log.warning("the last good policy (version %d) cannot be used: %s", row.version, e.message)
                self._failed(f"last good policy unusable: {e.message}")
                return None
            published = Published(policy, row.sha256, row.key_id, row.body, row.signature)
            self._applied = _Applied(published, row.applied_at, "last_good")
            log.info("policy version %d in force (last good, applied %s)", row.version, row.applied_at)
            return policy

    def sync_once(self) -> SyncOutcome:
        """One sync against the share. Never raises; every failure keeps the policy in force."""
        with self._sync_lock:
            try:
                outcome = self._sync()
            except Exception as e:  # a job boundary: the agent keeps serving on the last good policy
                log.exception("policy sync failed unexpectedly")
                outcome = self._reject(f"internal error: {type(e).__name__}: {e}", None)
            with self._status_lock:
                self._last_attempt = (utc_now_iso(), outcome.result)
                if outcome.result in ("applied", "unchanged"):
                    self.last_read_unix = time.time()
            return outcome

    def status(self) -> PolicyStatus:
        applied = self._applied
        with self._status_lock:
            attempt, failure = self._last_attempt, self._last_failure
        pub = applied.published if applied else None
        return PolicyStatus(
            source=applied.source if applied else "none",
            version=pub.policy.version if pub else None,
            sha256=pub.sha256 if pub else None,
            key_id=pub.key_id if pub else None,
            applied_at=applied.applied_at if applied else None,
            share_dir=str(self._share_dir) if self._share_dir else None,
            last_attempt_at=attempt[0] if attempt else None,
            last_result=attempt[1] if attempt else None,
            last_failure_at=failure[0] if failure else None,
            last_failure_reason=failure[1] if failure else None,
        )

    # -- one sync -------------------------------------------------------------------------------

    def _sync(self) -> SyncOutcome:
        if self._share_dir is None:
            return SyncOutcome("no_share", "no share configured (share.path)", *self._in_force())
        share = self._share_dir
        body: bytes | None = None
        try:
            body, signature = self._reader.run(lambda: fetch(share, self._read_file), self._timeout_s)
            if self._is_in_force(body):
                return SyncOutcome("unchanged", "", *self._in_force())
            try:
                published = check(body, signature, self._keys)
            except PolicyError as e:
                if e.code != "bad_signature" or self._settle_s <= 0:
                    raise
                time.sleep(self._settle_s)  # maybe caught between a publish's two renames: once more
                body, signature = self._reader.run(lambda: fetch(share, self._read_file), self._timeout_s)
                if self._is_in_force(body):
                    return SyncOutcome("unchanged", "", *self._in_force())
                published = check(body, signature, self._keys)
        except PolicyError as e:
            return self._reject(e.message, body)
        return self._apply(published)

    def _is_in_force(self, body: bytes) -> bool:
        applied = self._applied
        return applied is not None and hashlib.sha256(body).hexdigest() == applied.published.sha256

    def _apply(self, new: Published) -> SyncOutcome:
        old = self._applied.published if self._applied else None
        if old is not None:
            if new.policy.version < old.policy.version:
                reason = (
                    f"version {new.policy.version} is older than version {old.policy.version} in force: "
                    "rollback refused"
                )
                return self._reject(reason, new.body)
            if new.policy.version == old.policy.version:
                reason = (
                    f"version {new.policy.version} is already in force with other content: "
                    "a changed policy needs a higher version"
                )
                return self._reject(reason, new.body)
        try:
            row = self._store.save(new.policy.version, new.sha256, new.body, new.signature, new.key_id)
        except LedgerError as e:
            return self._reject(f"cannot record the policy in the ledger: {e.message}", new.body)
        self._applied = _Applied(new, row.applied_at, "share")
        body: dict[str, Any] = {
            "version": new.policy.version,
            "sha256": new.sha256,
            "key_id": new.key_id,
            "previous_version": old.policy.version if old else None,
        }
        self._add_event("policy_applied", body, None)
        log.info("policy version %d applied (sha256 %s, key %s)", new.policy.version, new.sha256[:12], new.key_id)
        return SyncOutcome("applied", "", new.policy.version, new.sha256)

    def _reject(self, reason: str, body: bytes | None) -> SyncOutcome:
        self._failed(reason)
        reason_id = hashlib.sha256(reason.encode("utf-8")).hexdigest()[:16]
        if body is not None:
            sha = hashlib.sha256(body).hexdigest()
            dedupe = f"policy_rejected:{sha}:{reason_id}"
        else:  # nothing read (share down): at most one event a day per reason
            sha = None
            dedupe = f"policy_rejected:{datetime.now(UTC).date().isoformat()}:{reason_id}"
        kept = self._applied.published.policy.version if self._applied else None
        event = {"reason": reason, "sha256": sha, "share": str(self._share_dir), "kept_version": kept}
        if self._add_event("policy_rejected", event, dedupe):
            log.warning("policy from the share rejected, keeping %s: %s", f"version {kept}" if kept else "none", reason)
        else:
            log.debug("policy still rejected: %s", reason)
        return SyncOutcome("rejected", reason, *self._in_force())

    def _failed(self, reason: str) -> None:
        with self._status_lock:
            self._last_failure = (utc_now_iso(), reason)

    def _add_event(self, kind: str, body: dict[str, Any], dedupe: str | None) -> bool:
        try:
            return self._events.add(kind, body, dedupe_key=dedupe) is not None
        except LedgerError as e:
            log.warning("cannot record the %s event: %s", kind, e.message)
            return True

    def _in_force(self) -> tuple[int | None, str | None]:
        applied = self._applied
        return (applied.published.policy.version, applied.published.sha256) if applied else (None, None)
