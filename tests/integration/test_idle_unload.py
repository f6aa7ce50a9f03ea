"""Always-on control: a local model nobody uses is unloaded, and the next request reloads it and
the ledger says what that request waited."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import RunningAgent


def ask_local(agent: RunningAgent) -> None:
    agent.client().chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
    )


def test_an_idle_model_is_unloaded_and_the_next_request_pays_the_reload(
    start_agent: Callable[..., RunningAgent],
) -> None:
    agent = start_agent(local_models=[{"name": "local", "idle_unload_s": 1}], cache={"enabled": False})
    [provider] = agent.thread.services.registry.local()
    ask_local(agent)
    assert provider.is_loaded
    deadline = time.monotonic() + 20
    with agent.http() as http:
        while True:
            events = http.get("/api/v1/events").json()["events"]
            unloads = [e for e in events if e["kind"] == "model_unloaded"]
            if unloads:
                break
            assert time.monotonic() < deadline, "the idle model was never unloaded"
            time.sleep(0.2)
    [unload] = unloads
    assert unload["body"]["model"] == "local" and unload["body"]["idle_s"] >= 1
    assert unload["body"]["memory_freed_mib"] is None or unload["body"]["memory_freed_mib"] >= 0
    assert not provider.is_loaded
    ask_local(agent)
    first, second = agent.rows()
    assert first.model_load_ms is not None and first.model_load_ms > 0  # the first use loads it
    assert second.model_load_ms is not None and second.model_load_ms > 0  # and so does the one after the unload


def test_a_model_in_use_stays_loaded(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent(local_models=[{"name": "local", "idle_unload_s": 0}], cache={"enabled": False})
    [provider] = agent.thread.services.registry.local()
    ask_local(agent)
    ask_local(agent)
    first, second = agent.rows()
    assert first.model_load_ms is not None and second.model_load_ms is None  # loaded once, then reused
    assert provider.is_loaded
    assert provider.unload_if_idle(3600) is None  # used moments ago: not idle
