"""The alert outbox end to end: a real agent process, a signed policy on the share, a scripted cloud
upstream and a real receiver on loopback that answers 503 for its first 30 seconds. The agent is
killed with SIGKILL while its alerts are pending, started again, and every alert arrives once.

Also, against the outbox itself: the policy's retry_for_h, and one alert for the fleet claimed on
the share."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx

from agent.alerts.outbox import CLAIM_WAIT_S, Outbox
from agent.alerts.transport import post_json
from agent.benchmarks.upstream import ScriptedUpstream
from agent.fleet.claims import FleetClaims
from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.policy.model import parse_policy
from agent.policy.publish import Signed, publish
from agent.policy.signing import generate_keypair, sign
from tests.support.receiver import Receiver

OUTAGE_S = 30.0
MODEL = "scripted-model"
ANSWER_MICRO_USD = 11 * 10 + 7 * 30  # the scripted usage at the override's prices
THRESHOLDS = (10, 20, 30, 40, 50)  # ten answers of a twenty-answer budget: five alerts


class _Receiver(http.server.BaseHTTPRequestHandler):
    up_at: ClassVar[float] = 0.0  # time.monotonic() from which it answers 200
    answers: ClassVar[list[tuple[str, int, str]]] = []  # (Idempotency-Key, status, the body's kind)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 200 if time.monotonic() >= type(self).up_at else 503
        type(self).answers.append((self.headers.get("Idempotency-Key", ""), status, str(body.get("kind"))))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def _policy(url: str) -> bytes:
    return f"""
version = 1
organisation = "Test"
timezone = "UTC"
default_department = "general"
webhook_url = "{url}"

[[budgets]]
name = "user-daily"
scope = "user"
match = "*"
period = "day"
amount_usd = "{20 * ANSWER_MICRO_USD / 1_000_000:.6f}"
action = "block"
alerts = {list(THRESHOLDS)}
""".encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _start(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agent", "agent", "run", "--port", str(port)],
                                env={**os.environ, "AIFINOPS_HOME": str(home)}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _policy_in_force(base: str, token: str) -> bool:
    try:
        budgets = httpx.get(f"{base}/api/v1/budgets", headers={"Authorization": f"Bearer {token}"}, timeout=2)
    except httpx.TransportError:
        return False
    return budgets.status_code == 200 and budgets.json()["policy_version"] == 1


def test_alerts_pending_while_the_receiver_is_down_survive_a_kill_9_and_arrive_once_each(
    tmp_path: Path, chat_model_path: Path
) -> None:
    _Receiver.up_at, _Receiver.answers = time.monotonic() + OUTAGE_S, []  # 503 for the first 30 s
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    upstream = ScriptedUpstream().start()
    home, port, log = tmp_path / "home", _free_port(), tmp_path / "agent.log"
    share = tmp_path / "share"
    share.mkdir()
    key, public = generate_keypair()
    body = _policy(f"http://127.0.0.1:{receiver.server_address[1]}/hook")
    publish(Signed(parse_policy(body), body, sign(body, key)), share)
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(f"""
[cache]
enabled = false

[pricing.overrides."{MODEL}"]
input_usd_per_mtok = "10"
output_usd_per_mtok = "30"

[[cloud]]
name = "scripted"
base_url = "{upstream.base_url}"
models = ["{MODEL}"]
max_retries = 0

[share]
path = "{share}"
public_keys = ["{public}"]
sync_interval_s = 5
""")
    base = f"http://127.0.0.1:{port}"
    ledger = home / "data" / "ledger.db"
    agent = _start(home, port, log)
    try:
        _wait_for(lambda: (home / "config" / "token").exists(), 60, "the agent did not start")
        token = (home / "config" / "token").read_text().strip()
        _wait_for(lambda: _policy_in_force(base, token), 60, "the policy did not come into force")
        question = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 7}
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            for _ in range(10):
                assert client.post("/v1/chat/completions", json=question).status_code == 200
        # Each of the five alerts tried at least once while the receiver answers 503.
        _wait_for(lambda: len({k for k, _, _ in _Receiver.answers}) == len(THRESHOLDS), 20, str(_Receiver.answers))
        assert time.monotonic() < _Receiver.up_at, "the test must kill the agent while the receiver is still down"
        agent.kill()  # SIGKILL: no shutdown, no flush
        agent.wait(timeout=30)
        db = Database.open(ledger)
        try:
            pending = db.query("SELECT count(*) AS n FROM deliveries WHERE state = 'pending'")[0]["n"]
        finally:
            db.close()
        assert pending == len(THRESHOLDS)

        agent = _start(home, port, log)  # the same home and ledger, as a service manager restarts it
        delivered = lambda: {k for k, status, _ in _Receiver.answers if status == 200}  # noqa: E731
        _wait_for(lambda: len(delivered()) == len(THRESHOLDS), OUTAGE_S + 90, str(_Receiver.answers))
        time.sleep(3)  # a second delivery of any of them would come now
    finally:
        agent.kill()
        agent.wait(timeout=30)
        receiver.shutdown()
        receiver.server_close()
        upstream.stop()
    taken = [(k, kind) for k, status, kind in _Receiver.answers if status == 200]
    assert len(taken) == len(THRESHOLDS) == len({k for k, _ in taken})  # each alert exactly once
    assert {kind for _, kind in taken} == {"budget_alert"}
    assert all(k.startswith("aifinops-") for k, _ in taken)
    assert sum(status == 503 for _, status, _ in _Receiver.answers) >= len(THRESHOLDS)
    db = Database.open(ledger)
    try:
        rows = db.query("SELECT state, attempts FROM deliveries")
        assert db.query("PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    finally:
        db.close()
    assert [r["state"] for r in rows] == ["delivered"] * len(THRESHOLDS) and all(r["attempts"] >= 2 for r in rows)


def _ledger(path: Path) -> tuple[Database, EventLog]:
    db = Database.open(path)
    return db, EventLog(db)


def test_an_undelivered_alert_is_retried_for_the_policys_retry_for_h_then_failed(tmp_path: Path) -> None:
    with Receiver(status=503) as down:
        policy = parse_policy(b'version = 1\norganisation = "T"\ntimezone = "UTC"\ndefault_department = "g"\n'
                              b'webhook_url = "' + down.url.encode() + b'/hook"\n[alerts]\nretry_for_h = 0.5\n')  # fmt: skip
        db, events = _ledger(tmp_path / "ledger.db")
        try:
            events.add("budget_alert", {"budget": "b"}, deliver=("webhook",))
            clock = [datetime.now(UTC)]
            outbox = Outbox(db, lambda: policy, now=lambda: clock[0])
            for minutes in (1, 5, 10, 20):  # within the half hour: tried again each time it is due
                clock[0] = datetime.now(UTC) + timedelta(minutes=minutes)
                assert outbox.deliver_due() == 1
                assert db.query("SELECT state FROM deliveries")[0]["state"] == "pending"
            clock[0] = datetime.now(UTC) + timedelta(minutes=29, seconds=59)
            outbox.deliver_due()  # its next wait would pass the half hour: given up
            [row] = db.query("SELECT state, attempts, last_error FROM deliveries")
        finally:
            db.close()
    assert (row["state"], row["last_error"]) == ("failed", "HTTP 503 Service Unavailable")
    assert row["attempts"] == len(down.posts) >= 5


def test_a_fleet_alert_is_posted_once_by_the_host_that_claims_it_on_the_share(tmp_path: Path) -> None:
    share = tmp_path / "share"
    key = "budget_alert:eng-monthly:department:eng:2026-12:80"
    with Receiver() as hook:
        policy = parse_policy(b'version = 1\norganisation = "T"\ntimezone = "UTC"\ndefault_department = "g"\n'
                              b'[[alerts.channels]]\nname = "a"\nkind = "webhook"\nurl = "' + hook.url.encode() +
                              b'/a"\n[[alerts.channels]]\nname = "b"\nkind = "webhook"\nurl = "' +
                              hook.url.encode() + b'/b"\n')  # fmt: skip
        hosts = {name: _ledger(tmp_path / f"{name}.db") for name in ("host-a", "host-b")}
        try:
            # Both hosts saw the department's spend cross 80% and recorded the alert, for both channels.
            for _, events in hosts.values():
                events.add("budget_alert", {"budget": "eng-monthly"}, deliver=("a", "b"), claim=key)
            outboxes = {name: Outbox(db, lambda: policy, origin=name, claims=FleetClaims(share, name.ljust(32, "0")))
                        for name, (db, _) in hosts.items()}  # fmt: skip
            assert outboxes["host-a"].deliver_due() == 2
            assert outboxes["host-b"].deliver_due() == 2
            # host-a restarts with its alert pending again (killed between the post and its note):
            # the marker is its own, so it posts it again, with the same Idempotency-Key.
            db_a = hosts["host-a"][0]
            with db_a.transaction() as conn:
                conn.execute("UPDATE deliveries SET state = 'pending' WHERE channel = 'a'")
            again = Outbox(db_a, lambda: policy, origin="host-a", claims=FleetClaims(share, "host-a".ljust(32, "0")))
            assert again.deliver_due() == 1
            states = {name: [(r["channel"], r["state"], r["last_error"]) for r in db.query(
                "SELECT channel, state, last_error FROM deliveries ORDER BY channel")] for name, (db, _) in hosts.items()}  # fmt: skip
        finally:
            for db, _ in hosts.values():
                db.close()
    assert [(p.path, p.body["id"]) for p in hook.posts] == [("/a", 1), ("/b", 1), ("/a", 1)]
    assert len({p.headers["Idempotency-Key"] for p in hook.posts}) == 1  # the fleet's key, on every post
    assert states["host-a"] == [("a", "delivered", ""), ("b", "delivered", "")]
    assert [s[:2] for s in states["host-b"]] == [("a", "skipped"), ("b", "skipped")]
    assert all("posted for the fleet by host" in s[2] and "(its event 1)" in s[2] for s in states["host-b"])
    [marker] = (share / "fleet" / "_alerts").rglob("*.json")
    assert json.loads(marker.read_text())["host"] == "host-a".ljust(32, "0")


def test_a_fleet_alert_waits_for_an_unreachable_share_then_is_posted_anyway(tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "fleet").mkdir(parents=True)
    (share / "fleet" / "_alerts").write_text("not a folder: every claim fails as on a share that is gone")
    with Receiver() as hook:
        policy = parse_policy(b'version = 1\norganisation = "T"\ntimezone = "UTC"\ndefault_department = "g"\n'
                              b'webhook_url = "' + hook.url.encode() + b'/hook"\n')  # fmt: skip
        db, events = _ledger(tmp_path / "ledger.db")
        try:
            events.add("budget_alert", {"budget": "b"}, deliver=("webhook",), claim="budget_alert:b:organisation:*")
            clock = [datetime.now(UTC) + timedelta(seconds=10)]
            outbox = Outbox(db, lambda: policy, now=lambda: clock[0], claims=FleetClaims(share, "a" * 32))
            assert outbox.deliver_due() == 1
            [waiting] = db.query("SELECT state, last_error FROM deliveries")
            assert not hook.posts and waiting["state"] == "pending"
            assert "waiting for the share to claim this fleet alert" in waiting["last_error"]
            clock[0] = datetime.now(UTC) + timedelta(seconds=CLAIM_WAIT_S + 60)
            assert outbox.deliver_due() == 1  # late twice beats never: posted from this host
            [row] = db.query("SELECT state FROM deliveries")
        finally:
            db.close()
    assert row["state"] == "delivered" and len(hook.posts) == 1
    assert hook.posts[0].headers["Idempotency-Key"].startswith("aifinops-fleet-")


def test_a_hanging_receiver_costs_one_timeout_and_holds_up_no_other_channel(tmp_path: Path) -> None:
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # accepts connections (the kernel does), never answers
    try:
        with Receiver() as healthy:
            policy = parse_policy(b'version = 1\norganisation = "T"\ntimezone = "UTC"\ndefault_department = "g"\n'
                                  b'[[alerts.channels]]\nname = "hangs"\nkind = "webhook"\nurl = "http://127.0.0.1:'
                                  + str(hanging.getsockname()[1]).encode() + b'/"\n'
                                  b'[[alerts.channels]]\nname = "ok"\nkind = "slack"\nurl = "'
                                  + healthy.url.encode() + b'/slack"\n')  # fmt: skip
            db, events = _ledger(tmp_path / "ledger.db")
            try:
                for n in range(10):
                    events.add("budget_alert", {"budget": f"b{n}"}, deliver=("hangs", "ok"))
                outbox = Outbox(db, lambda: policy, post=functools.partial(post_json, timeout_s=0.5))
                assert outbox.deliver_due() == 11  # one post to the hanging channel, ten to the other
                rows = db.query("SELECT channel, state, attempts, next_at, last_error FROM deliveries ORDER BY id")
            finally:
                db.close()
    finally:
        hanging.close()
    assert len(healthy.posts) == 10
    assert [(r["state"], r["attempts"]) for r in rows if r["channel"] == "ok"] == [("delivered", 1)] * 10
    waiting = [r for r in rows if r["channel"] == "hangs"]
    assert [(r["state"], r["attempts"]) for r in waiting] == [("pending", 1)] + [("pending", 0)] * 9
    assert "timed out" in waiting[0]["last_error"]
    assert len({r["next_at"] for r in waiting}) == 1  # the channel's next try, for all of its alerts
