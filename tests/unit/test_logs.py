"""Keys and tokens never reach a log handler, whoever logged them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.logs import SecretFilter, mask_secrets, setup_logging

SECRET_CHARS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
    min_size=6,
    max_size=60,
)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("key sk-abc123456789 used", "abc123456789"),
        ("key sk-proj-AbC_123-xyz.987 used", "proj-AbC_123-xyz.987"),
        ("Authorization: Bearer afo_xxxxxxxxxxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxx"),
        ("authorization: bearer someopaquetoken123", "someopaquetoken123"),
        ("token afo_Zr3-kq_8mmQpLw0", "Zr3-kq_8mmQpLw0"),
        ("url?api_key=abcdef123456&x=1", "abcdef123456"),
        ("api-key: abcdef123456", "abcdef123456"),
        ('{"apiKey": "abcdef123456"}', "abcdef123456"),
        ("API_KEY='hunter2hunter2'", "hunter2hunter2"),
    ],
)
def test_mask_secrets_hides_keys_and_tokens(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


def test_mask_secrets_keeps_the_rest_of_the_line() -> None:
    assert mask_secrets("calling openai with sk-abc123456789 for alice") == ("calling openai with sk-*** for alice")
    assert mask_secrets("Bearer afo_abcdefgh") == "Bearer ***"


@pytest.mark.parametrize(
    "text",
    ["", "user alice spent 0.000123 USD", "model gpt-4o-mini via openai", "sk-abc"],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_secrets(text) == text


@given(
    st.sampled_from(["sk-", "afo_", "Bearer ", "api_key=", "api-key: "]),
    SECRET_CHARS,
    st.text(max_size=20),
)
def test_any_secret_after_a_marker_is_masked(prefix: str, secret: str, before: str) -> None:
    masked = mask_secrets(f"{before} {prefix}{secret}")
    assert secret not in masked.split(prefix, 1)[-1]


def make_record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("agent.test", logging.INFO, __file__, 1, msg, args, None)


def test_secret_filter_masks_the_formatted_message() -> None:
    record = make_record("calling %s with key %s", "openai", "sk-abc123456789")
    assert SecretFilter().filter(record) is True
    assert record.getMessage() == "calling openai with key sk-***"
    assert "abc123456789" not in str(record.msg) + str(record.args)


def test_a_traceback_another_handler_formatted_first_is_masked_too() -> None:
    try:
        raise RuntimeError("upstream refused key sk-abc123456789")
    except RuntimeError:
        record = logging.LogRecord("agent.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    logging.Formatter().format(record)  # a handler without the filter (pytest's capture) sets exc_text
    assert record.exc_text is not None and "abc123456789" in record.exc_text
    assert SecretFilter().filter(record) is True
    assert "abc123456789" not in (record.exc_text or "") and "sk-***" in (record.exc_text or "")


def test_secret_filter_leaves_clean_records_untouched() -> None:
    record = make_record("spent %d micro-USD", 42)
    assert SecretFilter().filter(record) is True
    assert (record.msg, record.args) == ("spent %d micro-USD", (42,))


def test_setup_logging_masks_what_reaches_the_file(tmp_path: Path) -> None:
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    try:
        setup_logging(tmp_path / "logs", "INFO")
        logging.getLogger("agent.test").warning("upstream said no to Bearer %s", "afo_topsecret123")
        for handler in root.handlers:
            handler.flush()
        text = (tmp_path / "logs" / "agent.log").read_text(encoding="utf-8")
    finally:
        for handler in root.handlers[:]:
            if handler not in before_handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(before_level)
    assert "upstream said no to Bearer ***" in text
    assert "topsecret123" not in text
