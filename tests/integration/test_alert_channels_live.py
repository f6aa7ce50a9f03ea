"""Alert channels against real receivers: email over SMTP with STARTTLS to a local aiosmtpd server
(its certificate from a test CA the agent is told to trust, its password from the OS keyring,
stored with `aifinops alerts set-secret`), a Slack URL from the keyring, and the scope filter."""

from __future__ import annotations

import email
import email.policy
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.governed import ANSWER_MICRO_USD, Governed, policy_text
from tests.support.receiver import Receiver
from tests.support.tls import make_certs

SMTP_USER, SMTP_PASSWORD = "aifinops", "s3cret-smtp"


@dataclass
class Mailbox:
    """What the SMTP server took: each message with whether it came inside TLS and after a login."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("gone@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({
            "tls": session.ssl is not None,
            "login": session.authenticated,
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
        })  # fmt: skip
        return "250 2.0.0 accepted"


def _login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def keyring_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A real keyring backend (keyrings.alt's file keyring, in this test's folder) for this process
    and for the CLI's; a box with Windows Credential Manager or a Secret Service uses that instead."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    previous = keyring.get_keyring()
    keyring.set_keyring(PlaintextKeyring())
    yield env
    keyring.set_keyring(previous)


def set_secret(name: str, value: str) -> None:
    stored = subprocess.run([sys.executable, "-m", "agent", "alerts", "set-secret", name, "--stdin"], input=value,
                            env=dict(os.environ), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    assert f"keyring:{name}" in stored.stdout and value not in stored.stdout


@pytest.fixture
def smtp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Mailbox, int]]:
    certs = make_certs(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca_file))  # the agent trusts the test CA, and only it
    box, port = Mailbox(), _free_port()
    server = Controller(box, hostname="127.0.0.1", port=port, tls_context=certs.server_context(),
                        require_starttls=True, authenticator=_login, auth_require_tls=True)  # fmt: skip
    server.start()
    yield box, port
    server.stop()


def _deliveries(g: Governed) -> list[dict[str, Any]]:
    rows = g.agent.thread.services.db.query(
        "SELECT d.event_id, d.channel, d.state, d.attempts, d.last_error, e.kind FROM deliveries d "
        "JOIN events e ON e.id = d.event_id ORDER BY d.id"
    )
    return [dict(r) for r in rows]


def _settled(g: Governed, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _deliveries(g)
        if len(rows) >= count and all(r["state"] != "pending" for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)


def test_email_alerts_go_over_starttls_to_the_admins_and_the_department(
    governed: Callable[..., Governed], smtp: tuple[Mailbox, int], keyring_home: dict[str, str], tmp_path: Path
) -> None:
    box, port = smtp
    set_secret("smtp-password", SMTP_PASSWORD)
    channels = f"""
[[alerts.channels]]
name = "mail"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
username = "{SMTP_USER}"
password_secret = "keyring:smtp-password"
sender = "aifinops@example.com"
to = ["finops@example.com"]
department_to = {{ general = ["lead@example.com"], sales = ["sales-lead@example.com"] }}

[[alerts.channels]]
name = "bounced"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
username = "{SMTP_USER}"
password_secret = "keyring:smtp-password"
sender = "aifinops@example.com"
to = ["gone@example.com"]

[[alerts.channels]]
name = "org-only"
kind = "webhook"
url = "http://127.0.0.1:9/never"
scopes = ["organisation"]
"""
    body = policy_text(1, f"{3 * ANSWER_MICRO_USD / 1_000_000:.6f}", extra=channels)
    g = governed(body)
    with g.agent.http() as client:
        assert g.ask(client).status_code == 200
        assert g.ask(client).status_code == 200  # past 50% of the user's budget: one budget_alert
    rows = _settled(g, 2)
    # The user budget's alert goes to both email channels, not to the organisation-only webhook.
    assert sorted((r["channel"], r["state"]) for r in rows) == [("bounced", "failed"), ("mail", "delivered")]
    bounced = next(r for r in rows if r["channel"] == "bounced")
    assert bounced["attempts"] == 1 and "SMTP 550" in bounced["last_error"]  # final at once: no retry storm
    [mail] = box.messages
    assert mail["tls"] and mail["login"] and mail["from"] == "aifinops@example.com"
    # The admins' address, and the department's (the user is in "general"), not the sales lead.
    assert sorted(mail["to"]) == ["finops@example.com", "lead@example.com"]
    message = mail["message"]
    assert message["Subject"].startswith("[aifinops] Budget alert: Budget user-daily (user ")
    assert message["Message-ID"].startswith("<aifinops-") and message["Auto-Submitted"] == "auto-generated"
    assert "threshold_percent: 50" in message.get_content()
    assert SMTP_PASSWORD not in message.as_string()

    # `aifinops alerts test`, as an admin tries it: each channel and how it went.
    env = {**os.environ, "AIFINOPS_PORT": str(g.agent.thread.port)}
    tried = subprocess.run([sys.executable, "-m", "agent", "alerts", "test"], env=env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert tried.returncode == 1, tried.stdout + tried.stderr  # one channel failed
    assert "mail: delivered (test alert #" in tried.stdout
    assert "bounced: failed: SMTP 550" in tried.stdout and "org-only: " in tried.stdout
    test_mail = box.messages[-1]
    assert test_mail["message"]["Subject"].startswith("[aifinops] Test alert")
    # A test alert reaches every address of the channel: the admins and each department's.
    assert sorted(test_mail["to"]) == ["finops@example.com", "lead@example.com", "sales-lead@example.com"]
    # Secrets never reach the ledger or the log.
    ledger = g.agent.thread.services.settings.paths.ledger_file.read_bytes()
    assert SMTP_PASSWORD.encode() not in ledger
    logs = b"".join(p.read_bytes() for p in g.agent.thread.services.settings.paths.log_dir.rglob("*") if p.is_file())
    assert SMTP_PASSWORD.encode() not in logs


def test_a_slack_url_from_the_os_keyring_and_a_missing_one_reported(
    governed: Callable[..., Governed], keyring_home: dict[str, str]
) -> None:
    with Receiver() as slack:
        set_secret("slack-url", f"{slack.url}/services/T000/B000/XXXX")
        channels = """
[[alerts.channels]]
name = "slack"
kind = "slack"
url_secret = "keyring:slack-url"

[[alerts.channels]]
name = "teams"
kind = "teams"
url_secret = "keyring:teams-url"
"""
        g = governed(policy_text(1, "100", extra=channels))
        with g.agent.http() as admin:
            sent = admin.post("/api/v1/alerts/test")
        assert sent.status_code == 200, sent.text
        states = {d["channel"]: (d["state"], d["last_error"]) for d in sent.json()["deliveries"]}
        assert states["slack"] == ("delivered", "")
        assert states["teams"][0] == "failed" and "keyring" in states["teams"][1] and "teams-url" in states["teams"][1]
        [post] = slack.posts
        assert post.path == "/services/T000/B000/XXXX" and "blocks" in post.body
        assert post.headers["Idempotency-Key"].endswith(f"-event-{sent.json()['id']}")
        # The URL is not in the ledger.
        assert slack.url.encode() not in g.agent.thread.services.settings.paths.ledger_file.read_bytes()
