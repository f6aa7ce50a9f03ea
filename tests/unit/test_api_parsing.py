"""What the HTTP layer makes of its input: Host headers, ?since=, and chat request bodies."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from agent.api.chat_completions import chat_call as _chat_call
from agent.api.middleware import HostCheckMiddleware, host_name
from agent.errors import InvalidRequest
from agent.timespans import parse_since

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
HI = [{"role": "user", "content": "hi"}]

# -- Host header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8765", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
        ("LocalHost:80", "localhost"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("evil.com:80", "evil.com"),
        ("localhost.evil.com", "localhost.evil.com"),
        ("", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def call_middleware(host: bytes | None, allowed: tuple[str, ...] = ()) -> tuple[bool, list[Message]]:
    reached: list[bool] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(True)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [] if host is None else [(b"host", host)]
    scope: dict[str, Any] = {"type": "http", "headers": headers}
    asyncio.run(HostCheckMiddleware(app, allowed)(scope, receive, send))
    return bool(reached), sent


@pytest.mark.parametrize("host", [b"127.0.0.1:8765", b"localhost", b"[::1]:8765", b"LOCALHOST:1"])
def test_loopback_hosts_pass(host: bytes) -> None:
    reached, sent = call_middleware(host)
    assert reached and sent == []


@pytest.mark.parametrize("host", [b"evil.com", b"evil.com:8765", b"localhost.evil.com", b"127.0.0.2", None])
def test_other_hosts_get_a_400_and_never_reach_the_app(host: bytes | None) -> None:
    reached, sent = call_middleware(host)
    assert not reached
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "host_not_allowed")


def test_configured_hosts_pass_case_insensitively() -> None:
    assert call_middleware(b"Box.LAN:8765", allowed=("box.lan",))[0]
    assert not call_middleware(b"other.lan:8765", allowed=("box.lan",))[0]


# -- ?since= -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("7d", timedelta(days=7)),
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("2w", timedelta(weeks=2)),
        ("0d", timedelta(0)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_since_relative(text: str, delta: timedelta) -> None:
    assert parse_since(text, NOW) == NOW - delta


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T10:30:00", datetime(2024, 5, 1, 10, 30, tzinfo=UTC)),
        ("2024-05-01T10:30:00+00:00", datetime(2024, 5, 1, 10, 30, tzinfo=UTC)),
        ("2024-05-01T10:30:00Z", datetime(2024, 5, 1, 10, 30, tzinfo=UTC)),
    ],
)
def test_since_iso(text: str, expected: datetime) -> None:
    parsed = parse_since(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_since_defaults_to_the_current_time() -> None:
    before = datetime.now(UTC)
    parsed = parse_since("1h")
    assert before - timedelta(hours=1) <= parsed <= datetime.now(UTC) - timedelta(hours=1)


@pytest.mark.parametrize("text", ["", "7", "d", "7y", "-7d", "7 d", "1.5h", "yesterday", "2024-13-01", "1234567d"])
def test_since_garbage_is_an_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest, match="since"):
        parse_since(text, NOW)


def test_since_with_an_offset_is_converted_to_utc() -> None:
    parsed = parse_since("2024-01-01T02:00:00+02:00", NOW)
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.isoformat(timespec="microseconds") == "2024-01-01T00:00:00.000000+00:00"


@pytest.mark.parametrize("text", ["999999d", "999999w"])
def test_since_too_far_back_is_an_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_since(text, NOW)


@given(st.integers(min_value=0, max_value=99_999), st.sampled_from("mhdw"))
def test_since_relative_amounts(amount: int, unit: str) -> None:
    delta = {
        "m": timedelta(minutes=amount),
        "h": timedelta(hours=amount),
        "d": timedelta(days=amount),
        "w": timedelta(weeks=amount),
    }[unit]
    assert parse_since(f"{amount}{unit}", NOW) == NOW - delta


@given(st.text())
def test_since_on_random_text_is_a_datetime_or_an_invalid_request(text: str) -> None:
    try:
        parsed = parse_since(text, NOW)
    except InvalidRequest:
        return
    assert isinstance(parsed, datetime)
    assert parsed.tzinfo is not None


@given(st.datetimes(timezones=st.just(timezone(timedelta(hours=0)))))
def test_since_round_trips_utc_iso_times(moment: datetime) -> None:
    assert parse_since(moment.isoformat(), NOW) == moment


# -- chat request bodies -------------------------------------------------------------------


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "local", "messages": HI, **fields}


def test_a_minimal_body() -> None:
    call = _chat_call(body(), {})
    assert call.requested_model == "local"
    assert [(m.role, m.content) for m in call.messages] == [("user", "hi")]
    assert (call.feature, call.stream, call.include_usage) == ("", False, False)
    assert call.params.stop == () and call.params.passthrough == ()


def test_the_feature_header_beats_metadata() -> None:
    assert (
        _chat_call(body(metadata={"feature": "from-body"}), {"x-aifinops-feature": "from-header"}).feature
        == "from-header"
    )
    assert _chat_call(body(metadata={"feature": "from-body"}), {}).feature == "from-body"
    assert _chat_call(body(metadata={"other": "x"}), {}).feature == ""


@pytest.mark.parametrize("feature", ["has space", "-leading", "x" * 65, "semi;colon", "ü"])
def test_an_invalid_feature_is_refused(feature: str) -> None:
    with pytest.raises(InvalidRequest, match="feature"):
        _chat_call(body(), {"x-aifinops-feature": feature})
    with pytest.raises(InvalidRequest, match="feature"):
        _chat_call(body(metadata={"feature": feature}), {})


def test_a_feature_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        _chat_call(body(metadata={"feature": "chat\n"}), {})


def test_an_unknown_parameter_is_refused_by_name() -> None:
    with pytest.raises(InvalidRequest, match="audio") as err:
        _chat_call(body(audio={"voice": "x"}, presence_penalty=0.5), {})
    assert err.value.code == "unsupported_parameter"
    assert "presence_penalty" not in err.value.message


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
        ({"tool_choice": "required"}, "tool_choice 'required' needs tools"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, "not in tools"),
        ({"response_format": {"type": "json_schema"}}, "json_schema is required"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"top_logprobs": 3}, "top_logprobs needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 17}, "n:"),
    ],
)
def test_bad_tools_formats_and_choices_are_refused_with_where(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(where)):
        _chat_call(body(**fields), {})


def test_a_tool_round_trip_keeps_calls_and_results() -> None:
    call = _chat_call(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
        },
        {},
    )  # fmt: skip
    assistant, tool = call.messages[1], call.messages[2]
    assert assistant.tool_calls[0].name == "w" and assistant.content == ""
    assert assistant.as_openai()["content"] is None
    assert tool.role == "tool" and tool.tool_call_id == "c1" and tool.content == "sunny"
    assert call.params.tools == [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "x"},  # no tool_call_id
        {"role": "user", "content": "x", "tool_call_id": "c1"},
        {"role": "user", "content": None},
        {"role": "user", "content": "x", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": ""}}]},
    ],
)
def test_malformed_tool_turns_are_refused(message: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        _chat_call({"model": "m", "messages": [message]}, {})


def test_passthrough_parameters_are_kept_sorted() -> None:
    call = _chat_call(body(response_format={"type": "json_object"}, presence_penalty=0.5), {})
    assert call.params.passthrough == (
        ("presence_penalty", 0.5),
        ("response_format", {"type": "json_object"}),
    )


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (body(messages=[]), "messages"),
        ({"messages": HI}, "model"),
        (body(model=""), "model"),
        (body(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (
            body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
            "messages",
        ),
        (body(temperature=9), "temperature"),
        (body(max_tokens=0), "max_tokens"),
        (body(n=0), "n"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (body(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    ],
)
def test_invalid_bodies_name_the_field(payload: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _chat_call(payload, {})
    assert err.value.message.startswith(where)
    assert err.value.code == "invalid_value"


@pytest.mark.parametrize("payload", [[HI], "hello", None, 7])
def test_a_body_that_is_not_an_object_is_refused(payload: Any) -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        _chat_call(payload, {})


def test_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    call = _chat_call(
        body(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": parts},
            ]
        ),
        {},
    )
    assert [(m.role, m.content) for m in call.messages] == [
        ("system", "Be brief."),
        ("user", "Hello, world"),
    ]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("END", ("END",)), (["a", "b"], ("a", "b")), (None, ()), ([], ())],
)
def test_stop_becomes_a_tuple(stop: Any, expected: tuple[str, ...]) -> None:
    assert _chat_call(body(stop=stop), {}).params.stop == expected


def test_sampling_parameters_are_carried() -> None:
    call = _chat_call(
        body(
            max_tokens=10,
            max_completion_tokens=20,
            temperature=0.5,
            top_p=0.9,
            seed=42,
            stream=True,
            stream_options={"include_usage": True},
        ),
        {},
    )
    params = call.params
    assert params.max_tokens == 20  # max_completion_tokens wins over the legacy max_tokens
    assert (params.temperature, params.top_p, params.seed) == (0.5, 0.9, 42)
    assert (call.stream, call.include_usage) == (True, True)
    assert _chat_call(body(max_tokens=10), {}).params.max_tokens == 10


def test_a_message_name_is_kept() -> None:
    call = _chat_call(body(messages=[{"role": "user", "content": "x", "name": "alice"}]), {})
    assert call.messages[0].name == "alice"
