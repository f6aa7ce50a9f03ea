"""The server-sent events reader `aifinops chat` and the tray share."""

from __future__ import annotations

import json

import pytest

from agent.api.sse import ServerEvent, StreamError, chat_chunks, read_chat, server_events


def lines(text: str) -> list[str]:
    return text.splitlines()  # as httpx's iter_lines: no line ends; \r\n, \n and \r all end a line


def test_events_end_at_a_blank_line_and_join_their_data_lines() -> None:
    stream = "data: one\n\n: a keep-alive comment\n\nevent: done\ndata: two\ndata:three\nid: 7\n\ndata: cut off"
    assert list(server_events(lines(stream))) == [
        ServerEvent("message", "one"),
        ServerEvent("done", "two\nthree"),  # one space after the colon is dropped, no more
    ]


def test_any_line_end_will_do() -> None:
    assert list(server_events(lines("data: a\r\n\r\ndata: b\r\rdata:  c\n\n"))) == [
        ServerEvent("message", "a"),
        ServerEvent("message", "b"),
        ServerEvent("message", " c"),
    ]


def chunk(text: str | None = None, **extra: object) -> str:
    choices = [{"index": 0, "delta": {"content": text}}] if text is not None else []
    return f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"


INFO = {
    "request_id": "r1",
    "route": "local",
    "model": "smollm2",
    "cost_usd": "0.0000",
    "cost_micro_usd": 0,
    "price_source": "local",
    "tokens_estimated": False,
    "cache": "miss",
}


def test_a_chat_stream_gives_its_text_in_order_then_its_cost() -> None:
    stream = chunk("Hel") + chunk("") + chunk("lo") + chunk(None, x_aifinops=INFO) + "data: [DONE]\n\n" + chunk("late")
    texts: list[str] = []
    info = read_chat(lines(stream), texts.append)
    assert texts == ["Hel", "lo"]  # an empty delta is no text; nothing after [DONE] is read
    assert info is not None and (info.route, info.cost_usd) == ("local", "0.0000")


def test_a_stream_without_cost_says_none() -> None:
    assert read_chat(lines(chunk("hi") + "data: [DONE]\n\n"), lambda _text: None) is None


def test_an_error_event_mid_stream_is_a_502_with_the_agents_words() -> None:
    error = {"error": {"message": "the upstream hung up", "type": "upstream_error", "code": None}}
    texts: list[str] = []
    with pytest.raises(StreamError) as caught:
        read_chat(lines(chunk("par") + f"data: {json.dumps(error)}\n\n"), texts.append)
    assert texts == ["par"]
    failed = caught.value
    assert (failed.status, failed.type, failed.message) == (502, "upstream_error", "the upstream hung up")
    assert failed.body == error


@pytest.mark.parametrize("data", ["not json", "[1, 2]"])
def test_a_chunk_that_is_not_one_is_an_error_not_a_crash(data: str) -> None:
    with pytest.raises(StreamError) as caught:
        list(chat_chunks([f"data: {data}", ""]))
    assert (caught.value.status, caught.value.type) == (502, "bad_stream")


def test_an_error_body_that_is_not_ours_still_says_the_status() -> None:
    error = StreamError(503, "<html>Service Unavailable</html>", retry_after="5")
    assert (error.type, error.message, error.retry_after) == ("http_error", "the agent answered HTTP 503", "5")
