"""One ``setup_logging()`` per process: stderr plus a rotating file in the log folder.

A filter masks anything that looks like a key or a bearer token, whatever logged it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

_SECRET = re.compile(
    r"(?P<prefix>Bearer\s+|sk-|afo_|api[_-]?key[\"'=:\s]+)(?P<secret>[A-Za-z0-9_\-\.]{6,})",
    re.IGNORECASE,
)


_PLAIN = logging.Formatter()


def mask_secrets(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group('prefix')}***", text)


class SecretFilter(logging.Filter):
    """Rewrites the formatted message so keys and tokens never reach a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text as it is
            record.exc_text = mask_secrets(_PLAIN.formatException(record.exc_info))
        elif record.exc_text:  # another handler formatted the traceback first, unmasked: mask that
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, and exc when any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class OncePerInterval(logging.Filter):
    """Lets through one record per (logger, level) of the given loggers every ``interval_s``: a
    collector that stays down is said, not repeated at every export."""

    def __init__(self, prefixes: tuple[str, ...], interval_s: float = 600.0) -> None:
        super().__init__()
        self._prefixes, self._interval_s = prefixes, interval_s
        self._last: dict[tuple[str, int], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.levelno)
        last = self._last.get(key)
        if last is not None and record.created - last < self._interval_s:
            return False
        self._last[key] = record.created
        return True


# Libraries whose INFO lines are routine chatter: shown only when the agent logs at DEBUG.
_CHATTY = ("httpx", "httpcore", "openai", "uvicorn.access")


def setup_logging(
    log_dir: Path,
    level: str = "INFO",
    *,
    filename: str = "agent.log",
    fmt: Literal["text", "json"] = "text",
    max_bytes: int = 5_000_000,
    backups: int = 3,
) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(level)
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    file_handler = logging.handlers.RotatingFileHandler(
        log_dir / filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    stream_handler = logging.StreamHandler()
    # An unreachable collector: said once per 10 minutes, not at every export.
    once = OncePerInterval(("opentelemetry", "agent.observability.tracing"))
    for handler in (file_handler, stream_handler):
        handler.setFormatter(formatter)
        handler.addFilter(SecretFilter())
        handler.addFilter(once)
        root.addHandler(handler)
    debug = root.getEffectiveLevel() <= logging.DEBUG
    for noisy in _CHATTY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    # A job run late on a busy box ("Run time of job ... was missed") is not news; its failure is.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if debug else logging.ERROR)
