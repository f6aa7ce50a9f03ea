"""How one post of an alert went (``Answer``), and the web channels' post: JSON over HTTP(S).

A web receiver's status maps onto the outbox's rules: 2xx took it; 408, 429 (its Retry-After
read) and 5xx, like a timeout or a refused connection, are tried again; any other 4xx is final
(the receiver says the post itself is wrong: retrying would be a storm).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

from agent.retry import retry_after_s

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Answer:
    """What a receiver did with one post: took it, refused it for good, or should be tried again
    (after ``retry_after_s`` when it said so); ``error`` says why, for the ledger and the admin."""

    outcome: Literal["delivered", "refused", "retry"]
    error: str = ""
    retry_after_s: float | None = None

    @classmethod
    def delivered(cls, note: str = "") -> Answer:
        return cls("delivered", note)

    @classmethod
    def refused(cls, error: str) -> Answer:
        return cls("refused", error)

    @classmethod
    def retry(cls, error: str, retry_after_s: float | None = None) -> Answer:
        return cls("retry", error, retry_after_s)

    @classmethod
    def from_status(cls, status: int, error: str = "", retry_after_s: float | None = None) -> Answer:
        if 200 <= status < 300:
            return cls.delivered()
        if permanent(status):
            return cls.refused(error or f"HTTP {status}")
        return cls.retry(error or f"HTTP {status}", retry_after_s)


def permanent(status: int) -> bool:
    """A refusal that retrying will not change."""
    return 400 <= status < 500 and status not in (408, 429)


def post_json(url: str, body: dict[str, Any], idempotency_key: str, *, timeout_s: float = TIMEOUT_S) -> Answer:
    request = urllib.request.Request(  # noqa: S310 - the policy allows only http(s) URLs
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return Answer.from_status(int(response.status))
    except urllib.error.HTTPError as e:
        return Answer.from_status(e.code, f"HTTP {e.code} {e.reason}", retry_after_s(e.headers.get("Retry-After")))
    except (OSError, ValueError) as e:  # refused, reset, timed out, unresolvable
        return Answer.retry(type(e).__name__ + (f": {e}" if str(e) else ""))
