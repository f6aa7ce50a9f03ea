"""Budgets and rate limits end to end: a signed policy on a folder standing for the share, a real
agent that syncs it, a scripted cloud upstream on loopback, and the ledger as the judge."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import pytest

from agent.benchmarks.upstream import Behaviour, ScriptedUpstream
from agent.pricing.tokens import count_message_tokens
from tests.support.governed import ANSWER_MICRO_USD, MODEL, OTHER, QUESTION, Governed, policy_text


def test_concurrent_requests_never_spend_past_a_hard_budget(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    upstream.default = Behaviour(delay_s=0.05)  # calls overlap
    g = governed(policy_text(1, f"{20 * ANSWER_MICRO_USD / 1_000_000:.6f}"))  # about 20 answers

    async def fire() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {g.agent.token}"}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=g.agent.base_url, headers=headers, timeout=60, limits=limits) as c:
            body = {"model": MODEL, "messages": QUESTION, "max_tokens": 7}
            return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(200))))

    responses = asyncio.run(fire())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    rows = g.agent.rows()
    spent = sum(r.cost_micro_usd or 0 for r in rows)
    assert spent <= 20 * ANSWER_MICRO_USD
    assert len(ok) == len(rows) == len(upstream.received) >= 10
    assert all(r.status_code == 402 for r in refused) and len(refused) == 200 - len(ok)
    for r in refused:
        error = r.json()["error"]
        assert error["type"] == "budget_exceeded" and error["code"] == "block"
        assert error["budget"]["name"] == "user-daily" and "resets at" in error["message"]
    with g.agent.http() as http:
        [budget] = http.get("/api/v1/budgets").json()["budgets"]
    assert budget["spent_micro_usd"] == spent and budget["reserved_micro_usd"] == 0


def fire_concurrently(g: Governed, n: int, max_tokens: int) -> list[httpx.Response]:
    async def fire() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {g.agent.token}"}
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=g.agent.base_url, headers=headers, timeout=120, limits=limits) as c:
            body = {"model": MODEL, "messages": QUESTION, "max_tokens": max_tokens}
            return list(await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(n))))

    return asyncio.run(fire())


def test_requests_the_budget_can_pay_for_wait_for_the_holds_in_flight_instead_of_being_refused(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    # About 20 answers of 1,460 micro-USD in $0.03; each holds a worst case of 200 answer tokens
    # (6,000+), so only four fit in flight at once: the others must wait, not be refused.
    upstream.default = Behaviour(delay_s=0.05, completion_tokens=45)
    answer = 11 * 10 + 45 * 30
    amount = 30_000
    g = governed(policy_text(1, "0.03"))
    responses = fire_concurrently(g, 200, max_tokens=200)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    rows = g.agent.rows()
    spent = sum(r.cost_micro_usd or 0 for r in rows)
    print(f"\n200 concurrent vs $0.03: {len(ok)} answered, {len(refused)} refused, "
          f"spent {spent} of {amount} micro-USD ({100 * spent / amount:.1f}%)")  # fmt: skip
    assert spent <= amount  # 0 overrun
    assert spent >= 0.9 * amount
    assert len(ok) >= amount // answer - 1 and len(ok) == len(rows)
    assert all(r.status_code == 402 for r in refused) and len(refused) == 200 - len(ok)
    causes = {r.json()["error"]["budget"]["cause"] for r in refused}
    assert causes == {"spent"}  # nothing was refused because of holds: those waited
    capped = [r for r in rows if "answer capped" in r.reason]
    assert all(r.output_tokens < 200 for r in capped)
    with g.agent.http() as http:
        [budget] = http.get("/api/v1/budgets").json()["budgets"]
    assert budget["spent_micro_usd"] == spent and budget["reserved_micro_usd"] == 0


def test_a_refusal_caused_by_holds_in_flight_says_so(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    upstream.default = Behaviour(delay_s=3.0)
    g = governed(policy_text(1, "0.004"), budgets={"hold_wait_s": 0.5})  # room for one worst case

    async def race() -> tuple[httpx.Response, httpx.Response]:
        headers = {"Authorization": f"Bearer {g.agent.token}"}
        async with httpx.AsyncClient(base_url=g.agent.base_url, headers=headers, timeout=30) as c:
            body = {"model": MODEL, "messages": QUESTION, "max_tokens": 100}
            first = asyncio.create_task(c.post("/v1/chat/completions", json=body))
            await asyncio.sleep(1.0)
            second = await c.post("/v1/chat/completions", json=body)
            return await first, second

    first, second = asyncio.run(race())
    assert first.status_code == 200 and second.status_code == 402
    error = second.json()["error"]
    assert error["budget"]["cause"] == "in_flight" and error["budget"]["in_flight"] == 1
    assert "in flight" in error["message"] and "did not settle within 0.5 s" in error["message"]


def test_input_the_provider_counts_above_the_estimate_overruns_by_at_most_one_answer(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    # Another tokenizer, tool schemas or images: 1,000 input tokens billed for a short question.
    upstream.default = Behaviour(delay_s=0.05, prompt_tokens=1000)
    answer = 1000 * 10 + 7 * 30
    amount = 200_000  # about 19 answers
    g = governed(policy_text(1, "0.2"))
    with g.agent.http() as http:
        before = http.get("/api/v1/events").json()["last_id"]
    responses = fire_concurrently(g, 200, max_tokens=7)
    rows = g.agent.rows()
    spent = sum(r.cost_micro_usd or 0 for r in rows)
    ok = [r for r in responses if r.status_code == 200]
    print(f"\n200 concurrent, 1000 input tokens billed: {len(ok)} answered, spent {spent} of {amount} "
          f"micro-USD, overrun {max(spent - amount, 0)} (one answer: {answer})")  # fmt: skip
    assert spent - amount <= answer
    assert spent >= amount - 2 * answer  # and the budget was still used
    assert all(r.input_tokens_expected and r.input_tokens == 1000 for r in rows)
    with g.agent.http() as http:
        events = http.get("/api/v1/events", params={"since": before}).json()["events"]
    overruns = [e for e in events if e["kind"] == "budget_overrun"]
    if spent > amount:
        [event] = overruns
        assert event["body"]["overrun_usd"] == f"{(spent - amount) / 1_000_000:.6f}"
    else:
        assert overruns == []


def test_an_aborted_stream_is_settled_at_what_it_generated(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    upstream.default = Behaviour(text=" ".join(f"word{i}" for i in range(200)), word_delay_s=0.02)
    g = governed(policy_text(1, "1"))
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 400, "stream": True}
    headers = {"Authorization": f"Bearer {g.agent.token}"}
    with httpx.Client(base_url=g.agent.base_url, headers=headers, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for n, _ in enumerate(response.iter_lines()):
                if n == 12:
                    break  # the client leaves mid-stream
    deadline = time.monotonic() + 10
    while not g.agent.rows():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [row] = g.agent.rows()
    assert row.status == "aborted" and 0 < row.output_tokens < 200
    assert row.cost_micro_usd == row.input_tokens * 10 + row.output_tokens * 30
    with g.agent.http() as http:
        [budget] = http.get("/api/v1/budgets").json()["budgets"]
    assert (budget["spent_micro_usd"], budget["reserved_micro_usd"]) == (row.cost_micro_usd, 0)


def test_downgrade_answers_from_the_local_tier_and_says_so(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "0.000001", action="downgrade"))
    with g.agent.http() as http:
        response = g.ask(http)
    assert response.status_code == 200
    assert response.headers["x-aifinops-route"] == "local"
    [row] = g.agent.rows()
    assert row.model == "local" and "budget 'user-daily' exhausted -> local tier" in row.reason


def test_local_answers_are_never_blocked_by_a_money_budget(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "0"))
    with g.agent.http() as http:
        refused = g.ask(http)
        local = g.ask(http, model="local")
    assert refused.status_code == 402
    assert local.status_code == 200 and local.headers["x-aifinops-route"] == "local"


def test_rate_limits_answer_429_with_retry_after(governed: Callable[..., Governed]) -> None:
    limits = '\n[[rate_limits]]\nscope = "user"\nmatch = "*"\nrequests_per_minute = 2\n'
    g = governed(policy_text(1, "1", extra=limits))
    with g.agent.http() as http:
        first, second, third = (g.ask(http, model="local", max_tokens=2) for _ in range(3))
    assert (first.status_code, second.status_code) == (200, 200)
    assert third.status_code == 429
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert third.json()["error"]["type"] == "rate_limit_error"
    assert len(g.agent.rows()) == 2  # a refused request leaves no row


def test_alerts_and_the_refusal_reach_the_events_once(governed: Callable[..., Governed]) -> None:
    # Room for 3 answers plus not quite a 4th worst case; alerts at 50% and 80%.
    amount = 3 * ANSWER_MICRO_USD + 200
    g = governed(policy_text(1, f"{amount / 1_000_000:.6f}").replace(b"alerts = [50, 100]", b"alerts = [50, 80]"))
    with g.agent.http() as http:
        before = http.get("/api/v1/events").json()["last_id"]
        for _ in range(3):  # 28%, 55% (crosses 50), 83% (crosses 80)
            assert g.ask(http).status_code == 200
        assert g.ask(http).status_code == 402  # the 4th's worst case does not fit
        assert g.ask(http).status_code == 402
        events = http.get("/api/v1/events", params={"since": before}).json()["events"]
        seen = [(e["kind"], e["body"].get("threshold_percent")) for e in events if e["kind"].startswith("budget")]
        assert seen == [("budget_alert", 50), ("budget_alert", 80), ("budget_exhausted", None)]
        assert all(e["user_id"] is not None for e in events if e["kind"].startswith("budget"))
        waited = http.get("/api/v1/events", params={"since": events[-1]["id"], "wait": 0.5}).json()
    assert waited["events"] == [] and waited["last_id"] == events[-1]["id"]  # nothing twice in a period


def test_a_newly_published_policy_is_enforced_without_a_restart(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "1"))
    with g.agent.http() as http:
        assert g.ask(http).status_code == 200
    g.publish(policy_text(2, "0"))
    g.wait_for_version(2)
    with g.agent.http() as http:
        assert g.ask(http).status_code == 402


def test_worst_case_is_held_while_a_call_is_in_flight(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    upstream.default = Behaviour(delay_s=1.0)
    g = governed(policy_text(1, "1"))

    async def during() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {g.agent.token}"}
        async with httpx.AsyncClient(base_url=g.agent.base_url, headers=headers, timeout=30) as c:
            call = asyncio.create_task(
                c.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 100})
            )
            await asyncio.sleep(0.5)
            report: dict[str, Any] = (await c.get("/api/v1/budgets")).json()
            await call
            return report

    report = asyncio.run(during())
    [budget] = report["budgets"]
    prompt = count_message_tokens(m["content"] for m in QUESTION)
    assert budget["reserved_micro_usd"] >= prompt * 10 + 100 * 30  # at least prompt + max_tokens
    assert budget["spent_micro_usd"] == 0


DEPARTMENT = """
[departments.general]
tiers = {{ cheap = "{other}" }}
cache_scope = "department"

[departments.general.price_overrides."{model}"]
input_usd_per_mtok = "1"
output_usd_per_mtok = "2"
"""


def test_a_departments_negotiated_price_is_what_its_requests_cost(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "1", extra=DEPARTMENT.format(other=OTHER, model=MODEL)))
    with g.agent.http() as http:
        assert g.ask(http).status_code == 200
    [row] = g.agent.rows()
    assert row.department == "general"  # the provisioned OS user, placed by the policy's default
    assert (row.cost_micro_usd, row.price_source) == (11 * 1 + 7 * 2, "policy")


def test_a_departments_tiers_decide_which_model_auto_reaches(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    g = governed(
        policy_text(1, "1", extra=DEPARTMENT.format(other=OTHER, model=MODEL)),
        tiers={"local": "local", "cheap": MODEL, "strong": ""},
    )
    essay = "Write a detailed essay explaining how compilers optimise loops, with code examples."
    with g.agent.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 7,
                                                           "messages": [{"role": "user", "content": essay}]})  # fmt: skip
    assert response.status_code == 200
    assert [r["model"] for r in upstream.received] == [OTHER]  # the department's cheap tier
    [row] = g.agent.rows()
    assert (row.tier, row.model) == ("cheap", OTHER)


def test_a_departments_cache_scope_lets_colleagues_share_answers(
    governed: Callable[..., Governed], upstream: ScriptedUpstream
) -> None:
    g = governed(policy_text(1, "1", extra=DEPARTMENT.format(other=OTHER, model=MODEL)), cache={"enabled": True})
    colleague = g.agent.add_user("colleague", "general")
    with g.agent.http() as mine, g.agent.http(colleague) as theirs:
        assert g.ask(mine).status_code == 200
        shared = g.ask(theirs)
    assert shared.status_code == 200 and shared.headers["x-aifinops-cache"] == "hit"
    assert len(upstream.received) == 1


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status: ClassVar[int] = 200
    down_until: ClassVar[float] = 0.0  # time.monotonic() before which it answers 503
    answers: ClassVar[list[tuple[int, int, str]]] = []  # (event id, status, Idempotency-Key)

    delay_s: ClassVar[float] = 0.0  # a slow receiver
    started: ClassVar[int] = 0  # posts begun (answered or not)

    def do_POST(self) -> None:
        type(self).started += 1
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        time.sleep(type(self).delay_s)
        status = 503 if time.monotonic() < type(self).down_until else type(self).status
        type(self).answers.append((body.get("id", -1), status, self.headers.get("Idempotency-Key", "")))
        if status < 300:
            type(self).received.append(body)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [200, 500])
def test_alerts_are_posted_to_the_webhook_and_a_failing_one_blocks_nothing(
    status: int, governed: Callable[..., Governed]
) -> None:
    _Hook.received, _Hook.status, _Hook.answers, _Hook.down_until, _Hook.delay_s = [], status, [], 0.0, 0.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        amount = f"{3 * ANSWER_MICRO_USD / 1_000_000:.6f}"
        body = policy_text(1, amount).replace(b'default_department = "general"\n',
                                              f'default_department = "general"\nwebhook_url = "{url}"\n'.encode())  # fmt: skip
        g = governed(body)
        with g.agent.http() as client:
            assert g.ask(client).status_code == 200
            assert g.ask(client).status_code == 200  # crosses 50%: an alert, posted off the request path
        deadline = time.monotonic() + 10
        while not _Hook.answers:
            assert time.monotonic() < deadline, "the webhook got nothing"
            time.sleep(0.05)
        event_id, answered, key = _Hook.answers[0]
        assert answered == status and key.startswith("aifinops-") and key.endswith(f"-event-{event_id}")
        if status == 200:
            [posted] = _Hook.received
            assert posted["budget"] == "user-daily" and posted["threshold_percent"] == 50 and posted["id"] == event_id
    finally:
        server.shutdown()
        server.server_close()


def _webhook_policy(url: str, amount_micro_usd: int) -> bytes:
    body = policy_text(1, f"{amount_micro_usd / 1_000_000:.6f}")
    return body.replace(b'default_department = "general"\n',
                        f'default_department = "general"\nwebhook_url = "{url}"\n'.encode())  # fmt: skip


def _deliveries(g: Governed) -> list[dict[str, Any]]:
    rows = g.agent.thread.services.db.query("SELECT event_id, state, attempts, last_error FROM deliveries ORDER BY id")
    return [dict(r) for r in rows]


def test_alerts_wait_in_the_outbox_while_the_receiver_is_down_and_arrive_once(
    governed: Callable[..., Governed],
) -> None:
    _Hook.received, _Hook.status, _Hook.answers, _Hook.delay_s = [], 200, [], 0.0
    _Hook.down_until = time.monotonic() + 4  # a chat service's blip: 503 for its first seconds
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        g = governed(_webhook_policy(f"http://127.0.0.1:{server.server_address[1]}/hook", 3 * ANSWER_MICRO_USD))
        with g.agent.http() as client:
            for _ in range(4):  # past 50%, then past 100%
                g.ask(client)
            alerts = {e["id"] for e in client.get("/api/v1/events").json()["events"] if e["kind"].startswith("budget_")}
        assert len(alerts) >= 2
        deadline = time.monotonic() + 40
        while {body["id"] for body in _Hook.received} != alerts:
            assert time.monotonic() < deadline, (_Hook.answers, _deliveries(g))
            time.sleep(0.1)
        time.sleep(1)  # nothing more comes
        delivered = [event_id for event_id, status, _ in _Hook.answers if status == 200]
        assert sorted(delivered) == sorted(alerts)  # each alert once, none twice
        assert any(status == 503 for _, status, _ in _Hook.answers)  # it was tried while down
        assert all(key.endswith(f"-event-{event_id}") for event_id, _, key in _Hook.answers)
        assert {(d["event_id"], d["state"]) for d in _deliveries(g)} == {(a, "delivered") for a in alerts}
        # An admin tries the channel as a new admin would: one test alert, delivered, said so.
        env = {**os.environ, "AIFINOPS_PORT": str(g.agent.thread.port)}
        tried = subprocess.run([sys.executable, "-m", "agent", "alerts", "test"], env=env, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
        assert tried.returncode == 0, tried.stdout + tried.stderr
        assert "webhook: delivered (test alert #" in tried.stdout
        assert _Hook.received[-1]["kind"] == "alert_test" and "test alert" in _Hook.received[-1]["message"]
        with g.agent.http() as client:  # the events say so too
            shown = {e["id"]: e["deliveries"] for e in client.get("/api/v1/events").json()["events"]}
        assert all([(d["channel"], d["state"], d["next_at"]) for d in shown[a]] == [("webhook", "delivered", None)]
                   for a in alerts)  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()


def test_a_slow_receiver_holds_up_no_request_and_still_gets_its_alert(governed: Callable[..., Governed]) -> None:
    _Hook.received, _Hook.status, _Hook.answers, _Hook.down_until, _Hook.delay_s = [], 200, [], 0.0, 4.0
    _Hook.started = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        g = governed(_webhook_policy(f"http://127.0.0.1:{server.server_address[1]}/slow", 30 * ANSWER_MICRO_USD))
        with g.agent.http() as client:
            for _ in range(16):  # past 50%: an alert, whose receiver takes 4 s over the post
                assert g.ask(client).status_code == 200
            deadline = time.monotonic() + 10
            while not _Hook.started:
                assert time.monotonic() < deadline, _deliveries(g)
                time.sleep(0.05)
            for _ in range(5):  # while the receiver sits on the post, requests are answered
                assert g.ask(client).status_code == 200
            assert not _Hook.answers  # the post was still unanswered: nothing waited for it
        deadline = time.monotonic() + 20
        while [d["state"] for d in _deliveries(g)] != ["delivered"]:  # within the agent's 5 s timeout
            assert time.monotonic() < deadline, _deliveries(g)
            time.sleep(0.1)
        assert [body["threshold_percent"] for body in _Hook.received] == [50]
    finally:
        server.shutdown()
        server.server_close()


def test_alerts_reach_a_slack_channel_and_a_channel_without_its_secret_is_reported(
    governed: Callable[..., Governed], monkeypatch: pytest.MonkeyPatch
) -> None:
    _Hook.received, _Hook.status, _Hook.answers, _Hook.down_until, _Hook.delay_s = [], 200, [], 0.0, 0.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AIFINOPS_TEST_SLACK_URL", f"http://127.0.0.1:{server.server_address[1]}/slack")
        monkeypatch.delenv("AIFINOPS_TEST_DISCORD_URL", raising=False)
        channels = ('[[alerts.channels]]\nname = "team-slack"\nkind = "slack"\nurl_env = "AIFINOPS_TEST_SLACK_URL"\n'
                    '[[alerts.channels]]\nname = "team-discord"\nkind = "discord"\n'
                    'url_env = "AIFINOPS_TEST_DISCORD_URL"\n')  # fmt: skip
        amount = f"{3 * ANSWER_MICRO_USD / 1_000_000:.6f}"
        g = governed(policy_text(1, amount, extra=channels))
        with g.agent.http() as client:
            assert g.ask(client).status_code == 200
            assert g.ask(client).status_code == 200  # past 50%: one alert, for both channels
        deadline = time.monotonic() + 15
        while sorted(d["state"] for d in _deliveries(g)) != ["delivered", "failed"]:
            assert time.monotonic() < deadline, _deliveries(g)
            time.sleep(0.1)
        [slack] = _Hook.received
        assert "user-daily" in slack["text"] and slack["blocks"][0]["text"]["type"] == "mrkdwn"
        [failed] = [d for d in _deliveries(g) if d["state"] == "failed"]
        assert failed["last_error"] == "the environment variable AIFINOPS_TEST_DISCORD_URL is not set on this box"
        assert failed["attempts"] == 0  # nothing was posted anywhere for it
    finally:
        server.shutdown()
        server.server_close()


def test_a_test_alert_needs_an_admin_and_a_channel(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "100"))  # no webhook_url
    bob = g.agent.add_user("bob", "eng")
    with g.agent.http() as admin, g.agent.http(bob) as other:
        refused = other.post("/api/v1/alerts/test")
        assert refused.status_code == 403
        nowhere = admin.post("/api/v1/alerts/test")
        assert nowhere.status_code == 400 and nowhere.json()["error"]["code"] == "no_alert_channel"
        assert "webhook_url" in nowhere.json()["error"]["message"]


def test_a_receiver_that_refuses_an_alert_gets_it_once_and_the_refusal_is_kept(
    governed: Callable[..., Governed],
) -> None:
    _Hook.received, _Hook.status, _Hook.answers, _Hook.down_until, _Hook.delay_s = [], 404, [], 0.0, 0.0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        g = governed(_webhook_policy(f"http://127.0.0.1:{server.server_address[1]}/gone", 3 * ANSWER_MICRO_USD))
        with g.agent.http() as client:
            assert g.ask(client).status_code == 200
            assert g.ask(client).status_code == 200  # past 50%: one alert
        deadline = time.monotonic() + 10
        while not _deliveries(g) or _deliveries(g)[0]["state"] == "pending":
            assert time.monotonic() < deadline, _deliveries(g)
            time.sleep(0.1)
        time.sleep(3)  # a retry would come within 2-4 s
        [delivery] = _deliveries(g)
        assert (delivery["state"], delivery["attempts"]) == ("failed", 1) and "404" in delivery["last_error"]
        assert [status for _, status, _ in _Hook.answers] == [404]  # one post, no retry storm
        with g.agent.http() as client:
            [alert] = [e for e in client.get("/api/v1/events").json()["events"] if e["kind"].startswith("budget_")]
        [shown] = alert["deliveries"]
        assert (shown["state"], shown["attempts"]) == ("failed", 1) and "404" in shown["last_error"]
        env = {**os.environ, "AIFINOPS_PORT": str(g.agent.thread.port)}
        listed = subprocess.run([sys.executable, "-m", "agent", "alerts", "list"], env=env, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert f"#{alert['id']} {alert['kind']}" in listed.stdout and "webhook: failed" in listed.stdout
        assert "HTTP 404" in listed.stdout
        doctor = subprocess.run([sys.executable, "-m", "agent", "doctor"], env={**env, "COLUMNS": "300"},
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "1 alert(s) not delivered; the last to the webhook channel" in " ".join(doctor.stdout.split())
        tried = subprocess.run([sys.executable, "-m", "agent", "alerts", "test"], env=env, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
        assert tried.returncode == 1 and "webhook: failed: HTTP 404" in tried.stdout
    finally:
        server.shutdown()
        server.server_close()


def test_aifinops_budgets_shows_the_callers_budgets(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "2.5"))
    env = {**os.environ, "AIFINOPS_PORT": str(g.agent.thread.port), "COLUMNS": "200"}
    shown = subprocess.run(
        [sys.executable, "-m", "agent", "budgets", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["policy_version"] == 1
    [budget] = report["budgets"]
    assert (budget["name"], budget["amount_usd"], budget["remaining_usd"]) == ("user-daily", "2.500000", "2.500000")
    table = subprocess.run(
        [sys.executable, "-m", "agent", "budgets"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "user-daily" in table.stdout and "policy version 1" in table.stdout


def test_a_budget_shows_its_forecast_and_breach_time_once_there_is_history(
    governed: Callable[..., Governed],
) -> None:
    monthly = policy_text(1, "100").replace(b'period = "day"', b'period = "month"').replace(
        b'amount_usd = "100"', b'amount_usd = "5"'
    )
    g = governed(monthly)
    with g.agent.http() as http:
        report = http.get("/api/v1/budgets").json()
        [fresh] = report["budgets"]
        assert fresh["forecast_usd"] is None and "history" in fresh["forecast_note"]
        assert g.ask(http).status_code == 200
    me = g.agent.rows()[-1]
    # Three weeks of history before today: 50 cents a day, at noon UTC.
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    for day in range(1, 22):
        when = (today - timedelta(days=day)).isoformat(timespec="microseconds")
        g.agent.thread.services.requests.record(replace(me, id=f"history-{day}", ts=when, cost_micro_usd=500_000))
    with g.agent.http() as http:
        [budget] = http.get("/api/v1/budgets").json()["budgets"]
    assert budget["forecast_note"] == ""
    low, mid, high = (Decimal(budget[k]) for k in ("forecast_low_usd", "forecast_usd", "forecast_high_usd"))
    assert Decimal(budget["spent_usd"]) <= low <= mid <= high
    # Half a dollar a day, most of a month to go: the $5 budget breaks before the period resets.
    breach = datetime.fromisoformat(budget["breach_at"])
    assert datetime.now(UTC) - timedelta(minutes=1) <= breach <= datetime.fromisoformat(budget["resets_at"])
    env = {**os.environ, "AIFINOPS_PORT": str(g.agent.thread.port), "COLUMNS": "240"}
    table = subprocess.run([sys.executable, "-m", "agent", "budgets"], env=env, capture_output=True, text=True, timeout=60)
    # The table's forecast is made a moment later (a little more of today has passed): same dollars.
    assert budget["breach_at"][:10] in table.stdout and f"{budget['forecast_usd'][:4]}" in table.stdout
    # The scheduler's check raises budget_forecast once for this budget, user and month.
    enforcer = g.agent.thread.services.enforcer
    assert (enforcer.check_forecasts(), enforcer.check_forecasts()) == (1, 0)
    with g.agent.http() as http:
        events = [e for e in http.get("/api/v1/events").json()["events"] if e["kind"] == "budget_forecast"]
    [event] = events
    assert (event["body"]["budget"], event["body"]["subject"], event["user_id"]) == ("user-daily", me.user_name, me.user_id)
    assert Decimal(event["body"]["forecast_low_usd"]) >= Decimal(event["body"]["amount_usd"]) == Decimal("5")
    assert event["body"]["breach_at"][:10] == budget["breach_at"][:10]
    # The clock was set back: a row dated two days ahead. No forecast, a reason, and requests go on.
    ahead = (datetime.now(UTC) + timedelta(days=2)).isoformat(timespec="microseconds")
    g.agent.thread.services.requests.record(replace(me, id="from-the-future", ts=ahead, cost_micro_usd=1))
    with g.agent.http() as http:
        [jumped] = http.get("/api/v1/budgets").json()["budgets"]
        assert jumped["forecast_usd"] is None and "clock was set back" in jumped["forecast_note"]
        assert g.ask(http).status_code == 200


def test_a_loop_far_above_the_users_usual_rate_raises_one_spend_anomaly(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "100"))
    with g.agent.http() as http:
        assert g.ask(http).status_code == 200
    me = g.agent.rows()[-1]
    # Four weeks before this week: one request an hour, every hour.
    now = datetime.now(UTC)
    week = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    for h in range(4 * 7 * 24):
        when = (week - timedelta(hours=h + 1)).isoformat(timespec="microseconds")
        g.agent.thread.services.requests.record(replace(me, id=f"usual-{h}", ts=when, cost_micro_usd=ANSWER_MICRO_USD))
    runaway = g.agent.thread.services.runaway
    assert runaway is not None and runaway.refresh() >= 1
    with g.agent.http() as http:
        before = http.get("/api/v1/events").json()["last_id"]
        for _ in range(15):  # a script in a loop: fifteen calls in a few seconds, against one an hour
            assert g.ask(http).status_code == 200
        deadline, found = time.monotonic() + 15, []
        while len(found) < 3 and time.monotonic() < deadline:
            events = http.get("/api/v1/events", params={"since": before}).json()["events"]
            found = [e for e in events if e["kind"] == "spend_anomaly"]
            time.sleep(0.2)
    # The user, and (here the user is all of them) the department and the model ran away too.
    by_subject = {e["body"]["subject"]: e for e in found}
    assert len(by_subject) == len(found) == 3, found  # one each, not one per request
    anomaly = by_subject.pop(f"user:{me.user_name}")
    assert set(by_subject) == {f"department:{me.department}", f"model:{MODEL}"}
    for other in by_subject.values():  # they name whoever drove them: for admins only
        assert (other["user_id"], other["department"], other["body"]["top_user"]) == (None, None, me.user_name)
    body = anomaly["body"]
    assert (body["user"], body["subject"], anomaly["user_id"]) == (me.user_name, f"user:{me.user_name}", me.user_id)
    assert body["baseline_per_hour"] == 1.0 and body["top_model"] == MODEL and body["requests_last_10_min"] >= 6
    assert f"{me.user_name} made {body['requests_last_10_min']} requests in 10 minutes" in body["reason"]
    assert "the usual 1.0 an hour" in body["reason"]


def test_a_loop_at_10x_is_caught_within_5_simulated_minutes_and_throttled(governed: Callable[..., Governed]) -> None:
    """The issue's case on the agent's own clock: a user who makes a request a minute, every
    minute for four weeks, starts a script at ten a minute. The watch runs on a simulated clock
    that moves 6 s per request, so the alarm's time is the loop's, not the test machine's."""
    g = governed(policy_text(1, "100", extra='[anomaly]\naction = "throttle"\nthrottle_multiple = 0.1'))
    bob_token = g.agent.add_user("bob", "eng")
    with g.agent.http() as http:
        assert g.ask(http).status_code == 200
    me = g.agent.rows()[-1]
    services = g.agent.thread.services
    start = datetime.now(UTC)
    week = (start - timedelta(days=start.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    services.requests.record_many(
        replace(me, id=f"usual-{m}", ts=(week - timedelta(minutes=m + 1)).isoformat(timespec="microseconds"))
        for m in range(4 * 7 * 24 * 60)
    )
    runaway = services.runaway
    assert runaway is not None and runaway.refresh() >= 1
    simulated = [start]
    runaway.clock = lambda: simulated[0]
    found: list[dict[str, Any]] = []
    with g.agent.http() as http:
        before = http.get("/api/v1/events").json()["last_id"]
        while not found and simulated[0] - start <= timedelta(minutes=10):
            simulated[0] += timedelta(seconds=6)  # ten requests a simulated minute
            assert g.ask(http).status_code == 200
            deadline = time.monotonic() + 0.5  # the alarm is raised off the request path
            while not found and time.monotonic() < deadline:
                events = http.get("/api/v1/events", params={"since": before}).json()["events"]
                found = [e for e in events if e["kind"] == "spend_anomaly" and e["body"]["subject"].startswith("user:")]
                time.sleep(0.02)
        [anomaly] = found
        caught = datetime.fromisoformat(anomaly["body"]["at"])
        assert caught - start <= timedelta(minutes=5), caught - start
        assert anomaly["body"]["baseline_per_hour"] == 60.0
        # Throttled to a tenth of the usual: 6 more requests this simulated hour, then 429s.
        statuses = []
        for _ in range(12):
            simulated[0] += timedelta(seconds=6)
            statuses.append(g.ask(http).status_code)
        assert statuses.count(200) <= 6 and statuses[-1] == 429, statuses
        with g.agent.http(bob_token) as bob:  # another user, new here (his department's baseline): untouched
            for _ in range(5):
                simulated[0] += timedelta(seconds=6)
                assert g.ask(bob).status_code == 200
        [throttle] = http.get("/api/v1/anomalies").json()["throttled"]
        assert (throttle["user"], throttle["limit_per_hour"]) == (me.user_name, 6.0)


def test_with_throttle_a_runaway_user_gets_429s_until_an_admin_lifts_it(governed: Callable[..., Governed]) -> None:
    g = governed(policy_text(1, "100", extra='[anomaly]\naction = "throttle"\nthrottle_multiple = 3'))
    bob_token = g.agent.add_user("bob", "eng")
    with g.agent.http() as http:
        assert g.ask(http).status_code == 200
    me = g.agent.rows()[-1]
    now = datetime.now(UTC)
    week = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    for h in range(4 * 7 * 24):  # one request an hour for four weeks
        when = (week - timedelta(hours=h + 1)).isoformat(timespec="microseconds")
        g.agent.thread.services.requests.record(replace(me, id=f"usual-{h}", ts=when, cost_micro_usd=ANSWER_MICRO_USD))
    runaway = g.agent.thread.services.runaway
    assert runaway is not None and runaway.refresh() >= 1
    with g.agent.http() as http:
        statuses = []
        deadline = time.monotonic() + 20
        while 429 not in statuses and time.monotonic() < deadline:  # the loop, until the throttle bites
            statuses.append(g.ask(http).status_code)
        refused = g.ask(http)
        # One an hour usually, three times that allowed: once the loop was caught, three more went through.
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "spend_anomaly"
        assert "throttled to 3 an hour" in refused.json()["error"]["message"] and "Retry-After" in refused.headers
        with g.agent.http(bob_token) as bob:  # someone else is untouched
            assert g.ask(bob).status_code == 200
            assert bob.get("/api/v1/anomalies").status_code == 403  # and cannot see or lift throttles
            assert bob.delete(f"/api/v1/anomalies/{me.user_name}").status_code == 403
        [throttle] = http.get("/api/v1/anomalies").json()["throttled"]
        assert (throttle["user"], throttle["limit_per_hour"]) == (me.user_name, 3.0)
    env = {**os.environ, "AIFINOPS_PORT": str(g.agent.thread.port)}
    cleared = subprocess.run([sys.executable, "-m", "agent", "anomalies", "clear", me.user_name], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cleared.returncode == 0, cleared.stderr
    with g.agent.http() as http:
        assert g.ask(http).status_code == 200
        assert http.get("/api/v1/anomalies").json()["throttled"] == []
        assert http.delete(f"/api/v1/anomalies/{me.user_name}").status_code == 404
