"""The alert outbox across a kill -9: alerts pending when the agent's process is killed are
delivered after it, each once, to a real receiver on loopback."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from agent.alerts.outbox import Outbox
from agent.ledger.database import Database
from agent.policy.model import parse_policy


def _policy(url: str) -> bytes:
    return (f'version = 1\norganisation = "T"\ntimezone = "UTC"\ndefault_department = "general"\n'
            f'webhook_url = "{url}"\n').encode()  # fmt: skip


# The process that gets killed: three alerts into its ledger, its sender posting them.
_HOLDER = """
import sys, time
from pathlib import Path
from agent.alerts.outbox import Outbox
from agent.policy.model import parse_policy
from agent.ledger.database import Database
from agent.ledger.events import EventLog

db = Database.open(Path(sys.argv[1]))
policy = parse_policy(sys.argv[2].encode())
outbox = Outbox(db, lambda: policy)
events = EventLog(db)
events.on_delivery = outbox.wake
for i in range(3):
    events.add("budget_alert", {"budget": f"b{i}"}, deliver=("webhook",))
outbox.start()
print("ready", flush=True)
time.sleep(600)
"""


class _Receiver(http.server.BaseHTTPRequestHandler):
    up: ClassVar[bool] = False
    answers: ClassVar[list[tuple[int, int, str]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 200 if type(self).up else 503
        type(self).answers.append((body["id"], status, self.headers.get("Idempotency-Key", "")))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def test_alerts_pending_at_a_kill_9_are_delivered_after_it_once_each(tmp_path: Path) -> None:
    _Receiver.up, _Receiver.answers = False, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    ledger = tmp_path / "ledger.db"
    try:
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ledger), _policy(url).decode()],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 30
            while len({event_id for event_id, _, _ in _Receiver.answers}) < 3:  # each tried while the receiver is down
                assert time.monotonic() < deadline, _Receiver.answers
                time.sleep(0.05)
        finally:
            holder.kill()  # SIGKILL: no shutdown, no flush
            holder.wait(timeout=30)
            if holder.stdout is not None:
                holder.stdout.close()
        _Receiver.up = True
        db = Database.open(ledger)
        try:
            later = datetime.now(UTC) + timedelta(minutes=30)  # every retry is due
            policy = parse_policy(_policy(url))
            outbox = Outbox(db, lambda: policy, now=lambda: later)
            assert outbox.deliver_due() == 3
            assert outbox.deliver_due() == 0  # nothing left: each was taken once
            states = [(r["state"], r["attempts"] >= 2) for r in db.query("SELECT state, attempts FROM deliveries")]
        finally:
            db.close()
        assert states == [("delivered", True)] * 3
        delivered = sorted(event_id for event_id, status, _ in _Receiver.answers if status == 200)
        assert delivered == [1, 2, 3]
        assert all(key == f"aifinops-event-{event_id}" for event_id, _, key in _Receiver.answers)
    finally:
        server.shutdown()
        server.server_close()
