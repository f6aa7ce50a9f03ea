"""Policy sync against a real folder standing for the share, and a real ledger file.

Every fault of the share keeps the last good policy in force and leaves one visible
``policy_rejected`` event for admins; a valid newer policy applies, persists and survives a
restart.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.errors import PolicyError
from agent.ledger.database import Database
from agent.ledger.events import Event, EventLog
from agent.ledger.policies import PolicyStore
from agent.policy.publish import Signed, publish, sign_file
from agent.policy.signing import generate_keypair, sign
from agent.policy.sync import PolicySync, read_limited, read_published

KEY_PEM, PUBLIC_KEY = generate_keypair()
OTHER_PEM, _OTHER_PUBLIC = generate_keypair()


def body(version: int, extra: str = "") -> bytes:
    return (
        f'version = {version}\norganisation = "Acme"\ntimezone = "Europe/Berlin"\ndefault_department = "general"\n'
        f'{extra}[[budgets]]\nname = "daily"\nscope = "user"\nperiod = "day"\namount_usd = "{version}"\n'
        'action = "block"\n'
    ).encode()


@dataclass
class Share:
    root: Path

    @property
    def folder(self) -> Path:
        return self.root / "policy"

    def put(self, data: bytes, signature: bytes | None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "policy.toml").write_bytes(data)
        sig = self.folder / "policy.toml.sig"
        if signature is None:
            sig.unlink(missing_ok=True)
        else:
            sig.write_bytes(signature)

    def publish(self, data: bytes, pem: bytes = KEY_PEM) -> None:
        self.put(data, sign(data, pem))


@dataclass
class Agent:
    db: Database
    share: Share
    events: EventLog
    store: PolicyStore

    def sync(self, **kwargs: Any) -> PolicySync:
        kwargs.setdefault("timeout_s", 2.0)
        kwargs.setdefault("settle_s", 0.05)
        return PolicySync(self.store, self.share.root, [PUBLIC_KEY], self.events, **kwargs)

    def events_of(self, kind: str) -> list[Event]:
        return [e for e in self.events.since(0, user_id=None, department=None) if e.kind == kind]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    db = Database.open(tmp_path / "ledger.db")
    share = Share(tmp_path / "share")
    share.root.mkdir()
    yield Agent(db, share, EventLog(db), PolicyStore(db))
    db.close()


def test_a_valid_policy_applies_persists_and_is_in_force_after_a_restart(agent: Agent) -> None:
    sync = agent.sync()
    assert sync.current is None and "running on the local config's defaults" in sync.status().summary
    agent.share.publish(body(1))
    outcome = sync.sync_once()
    assert (outcome.result, outcome.version) == ("applied", 1)
    assert sync.current is not None and sync.current.budgets[0].amount_micro_usd == 1_000_000
    assert sync.sync_once().result == "unchanged"
    [applied] = agent.events_of("policy_applied")
    assert (applied.user_id, applied.department, applied.body["version"]) == (None, None, 1)

    agent.share.publish(body(2))
    assert sync.sync_once().result == "applied"
    assert agent.store.count() == 2
    status = sync.status()
    assert (status.source, status.version, status.last_result, status.last_failure_reason) == (
        "share",
        2,
        "applied",
        None,
    )

    agent.share.put(b"garbage", b"")  # the share breaks while the agent is down
    restarted = agent.sync()
    policy = restarted.load_last_good()
    assert policy is not None and policy.version == 2 and restarted.current == policy
    assert restarted.status().source == "last_good"
    assert restarted.sync_once().result == "rejected"
    assert restarted.current == policy


def _remove(path: Callable[[Share], Path]) -> Callable[[Share], None]:
    def remove(share: Share) -> None:
        target = path(share)
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return remove


FAULTS: dict[str, tuple[Callable[[Share], None], str]] = {
    "share folder missing": (_remove(lambda s: s.root), "is not reachable"),
    "policy missing": (_remove(lambda s: s.folder / "policy.toml"), "no policy published"),
    "sig missing": (_remove(lambda s: s.folder / "policy.toml.sig"), "unsigned: no policy.toml.sig"),
    "sig empty": (lambda s: s.put(body(3), b""), "unsigned: the .sig is empty"),
    "unsigned new file": (lambda s: s.put(body(3), None), "unsigned"),
    "corrupt toml": (lambda s: s.publish(body(3)[:-9] + b"[[[\n"), "not valid TOML"),
    "not utf-8": (lambda s: s.publish(b"\xff\xfe" + body(3)), "not UTF-8"),
    "invalid policy": (lambda s: s.publish(body(3).replace(b'"day"', b'"year"')), "budgets[0] (name 'daily').period"),
    "unknown key": (lambda s: s.publish(body(3), OTHER_PEM), "signed by an unknown key"),
    "half-written (new toml, old sig)": (lambda s: s.put(body(3), (s.folder / "policy.toml.sig").read_bytes()),
                                         "bad signature"),
    "truncated toml": (lambda s: s.put(body(3)[:40], sign(body(3), KEY_PEM)), "bad signature"),
    "garbage sig": (lambda s: s.put(body(3), b"\x00\x01garbage"), "bad signature"),
    "older version": (lambda s: s.publish(body(1)), "older than version 2 in force: rollback refused"),
    "same version, other bytes": (lambda s: s.publish(body(2, "# edited\n")), "needs a higher version"),
    "policy is a folder": (lambda s: ((s.folder / "policy.toml").unlink(), (s.folder / "policy.toml").mkdir()),
                           "cannot read the policy"),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_share_fault_keeps_the_last_good_policy_and_leaves_one_event(agent: Agent, fault: str) -> None:
    sync = agent.sync()
    agent.share.publish(body(2))
    assert sync.sync_once().result == "applied"
    in_force = sync.current
    break_share, reason = FAULTS[fault]
    break_share(agent.share)

    outcome = sync.sync_once()
    assert outcome.result == "rejected" and reason in outcome.reason
    assert (outcome.version, sync.current) == (2, in_force)
    [event] = agent.events_of("policy_rejected")
    assert (event.user_id, event.department) == (None, None)  # for admins
    assert reason in event.body["reason"] and event.body["kept_version"] == 2
    status = sync.status()
    assert status.last_result == "rejected" and reason in (status.last_failure_reason or "")
    assert status.version == 2

    assert sync.sync_once().result == "rejected"  # a minute later: still broken, no second event
    assert len(agent.events_of("policy_rejected")) == 1
    assert agent.store.count() == 1

    agent.share.root.mkdir(exist_ok=True)
    shutil.rmtree(agent.share.folder, ignore_errors=True)
    agent.share.publish(body(3))  # the admin fixes it
    assert sync.sync_once().result == "applied" and sync.current is not None and sync.current.version == 3


def _share_readers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "policy-share-read")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_share_read_that_blocks_times_out_and_never_piles_up_threads(agent: Agent) -> None:
    sync = agent.sync(timeout_s=0.3)
    agent.share.publish(body(2))
    sync.sync_once()
    fifo = agent.share.folder / "policy.toml"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading blocks, like a read on a hung mount
    readers_before = _share_readers()
    try:
        started = time.monotonic()
        outcome = sync.sync_once()
        assert time.monotonic() - started < 2
        assert outcome.result == "rejected" and "did not answer within 0.3 s" in outcome.reason
        assert sync.current is not None and sync.current.version == 2
        again = sync.sync_once()  # the first read is still stuck: no second thread
        assert "has not answered an earlier read" in again.reason
        assert _share_readers() - readers_before <= 1
        assert len(agent.events_of("policy_rejected")) == 2
    finally:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # let the stuck reader go
        os.close(fd)


def test_a_slow_reader_is_cut_off_by_the_timeout(agent: Agent) -> None:
    agent.share.publish(body(2))

    def slow(path: Path, limit: int) -> bytes:
        time.sleep(1.0)
        return read_limited(path, limit)

    sync = agent.sync(timeout_s=0.2, read_file=slow)
    outcome = sync.sync_once()
    assert outcome.result == "rejected" and "did not answer" in outcome.reason and sync.current is None
    [event] = agent.events_of("policy_rejected")
    assert event.body["sha256"] is None  # nothing read: deduplicated per day


def test_a_read_caught_between_the_two_renames_of_a_publish_is_read_again(agent: Agent) -> None:
    agent.share.publish(body(1))
    old_sig = (agent.share.folder / "policy.toml.sig").read_bytes()
    agent.share.publish(body(2))
    calls: list[str] = []

    def mid_publish(path: Path, limit: int) -> bytes:
        calls.append(path.name)
        if path.name.endswith(".sig") and calls.count(path.name) == 1:
            return old_sig  # the .toml was renamed, the .sig not yet
        return read_limited(path, limit)

    sync = agent.sync(read_file=mid_publish)
    assert sync.sync_once().result == "applied"
    assert calls == ["policy.toml", "policy.toml.sig"] * 2
    assert agent.events_of("policy_rejected") == []


def test_no_share_configured(agent: Agent) -> None:
    sync = PolicySync(agent.store, None, [PUBLIC_KEY], agent.events)
    outcome = sync.sync_once()
    assert outcome.result == "no_share" and sync.current is None
    assert agent.events_of("policy_rejected") == []


def test_no_public_keys_configured_rejects_every_policy(agent: Agent) -> None:
    agent.share.publish(body(1))
    sync = PolicySync(agent.store, agent.share.root, [], agent.events, settle_s=0)
    outcome = sync.sync_once()
    assert outcome.result == "rejected" and "no public keys configured" in outcome.reason


def test_a_tampered_last_good_row_is_not_put_back_in_force(agent: Agent) -> None:
    agent.share.publish(body(1))
    agent.sync().sync_once()
    with agent.db.transaction() as conn:
        conn.execute("UPDATE policies SET body = replace(body, 'block', 'downgrade')")
    restarted = agent.sync()
    assert restarted.load_last_good() is None and restarted.current is None
    assert "hash does not match" in (restarted.status().last_failure_reason or "")


def test_readers_see_whole_policies_while_syncs_apply(agent: Agent) -> None:
    sync = agent.sync()
    stop = threading.Event()
    seen: set[tuple[int, int]] = set()

    def read() -> None:
        while not stop.is_set():
            policy = sync.current
            if policy is not None:
                seen.add((policy.version, policy.budgets[0].amount_micro_usd))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 21):
            agent.share.publish(body(version))
            assert sync.sync_once().result == "applied"
    finally:
        stop.set()
        reader.join()
    assert seen and all(micros == version * 1_000_000 for version, micros in seen)


def test_read_published_and_publish_refuse_what_agents_would_refuse(agent: Agent, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(KEY_PEM)
    source = tmp_path / "policy.toml"
    source.write_bytes(body(5))
    signed = sign_file(source, key)
    publish(signed, agent.share.root)
    published = read_published(agent.share.root, [PUBLIC_KEY], 2.0)
    assert (published.policy.version, published.body) == (5, body(5))
    assert not [p for p in agent.share.folder.iterdir() if p.name.startswith(".")]  # no temp files left
    publish(signed, agent.share.root)  # the same file again is fine
    with pytest.raises(PolicyError, match="the share holds version 5"):
        publish(Signed(signed.policy.model_copy(update={"version": 4}), body(4), sign(body(4), KEY_PEM)),
                agent.share.root)  # fmt: skip
    with pytest.raises(PolicyError, match="not a folder"):
        publish(signed, tmp_path / "unmounted")
