"""Who may spend and who may read spend: tokens, revocation, per-user and department spend."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import RunningAgent

HELLO = [{"role": "user", "content": "Hello!"}]


def test_no_token_and_bad_token_get_401_and_no_row(agent: RunningAgent) -> None:
    for token in ("", "afo_not-a-real-token"):
        client = openai.OpenAI(base_url=f"{agent.base_url}/v1", api_key=token or "x", max_retries=0)
        if not token:
            client = client.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as err:
            client.chat.completions.create(model="local", messages=HELLO, max_tokens=4)
        assert err.value.status_code == 401
        assert err.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert agent.rows() == []


def test_revoked_token_stops_working_at_once(agent: RunningAgent) -> None:
    token = agent.add_user("alice", "sales")
    assert agent.client(token).chat.completions.create(model="local", messages=HELLO, max_tokens=4).id
    assert agent.thread.services.identity.revoke("alice")
    with pytest.raises(openai.AuthenticationError):
        agent.client(token).chat.completions.create(model="local", messages=HELLO, max_tokens=4)
    assert [r.user_name for r in agent.rows()] == ["alice"]


def test_spend_by_user_and_department_and_who_sees_what(agent: RunningAgent) -> None:
    alice = agent.add_user("alice", "sales")
    bob = agent.add_user("bob", "engineering")
    carol = agent.add_user("carol", "sales")
    for token, n in ((alice, 2), (bob, 1), (carol, 1)):
        for _ in range(n):
            agent.client(token).chat.completions.create(model="local", messages=HELLO, max_tokens=4)
    rows = agent.rows()
    cost = {name: sum(r.cost_micro_usd or 0 for r in rows if r.user_name == name) for name in ("alice", "bob", "carol")}

    with agent.http(alice) as http:
        own = http.get("/api/v1/spend", params={"by": "user", "since": "1d"}).json()
    assert own["scope"] == "own"
    assert [(r["key"], r["requests"], r["cost_micro_usd"]) for r in own["rows"]] == [("alice", 2, cost["alice"])]

    with agent.http() as http:  # the OS user: admin of this fresh ledger
        everyone = http.get("/api/v1/spend", params={"by": "user"}).json()
        departments = http.get("/api/v1/spend", params={"by": "department"}).json()
    assert everyone["scope"] == "all"
    assert {r["key"]: r["requests"] for r in everyone["rows"]} == {"alice": 2, "bob": 1, "carol": 1}
    by_department = {r["key"]: r["cost_micro_usd"] for r in departments["rows"]}
    assert by_department == {"sales": cost["alice"] + cost["carol"], "engineering": cost["bob"]}
    assert everyone["total_cost_micro_usd"] == sum(cost.values())


def test_a_user_cannot_read_another_users_request(agent: RunningAgent) -> None:
    alice = agent.add_user("alice", "sales")
    bob = agent.add_user("bob", "sales")
    answer = agent.client(alice).chat.completions.create(model="local", messages=HELLO, max_tokens=4)
    with agent.http(alice) as http:
        assert http.get(f"/api/v1/requests/{answer.id}").json()["user"] == "alice"
    with agent.http(bob) as http:
        theirs = http.get(f"/api/v1/requests/{answer.id}")
        missing = http.get("/api/v1/requests/chatcmpl-doesnotexist")
    # Another user's row answers exactly like a missing one.
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()


def test_the_user_field_never_changes_who_is_charged(agent: RunningAgent) -> None:
    alice = agent.add_user("alice", "sales")
    agent.add_user("bob", "finance")
    agent.client(alice).chat.completions.create(model="local", messages=HELLO, max_tokens=4, user="bob")
    [row] = agent.rows()
    assert (row.user_name, row.department) == ("alice", "sales")


def test_me_reports_the_caller(agent: RunningAgent) -> None:
    alice = agent.add_user("alice", "sales")
    with agent.http(alice) as http:
        assert http.get("/api/v1/me").json() == {
            "user": "alice",
            "department": "sales",
            "admin": False,
            "cloud_paused": False,
        }
