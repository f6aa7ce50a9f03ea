"""Time spans as people type them on a command line or in a query string."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from agent.errors import InvalidRequest


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'7d', '24h', '30m', '2w' or an ISO date/time -> an aware UTC datetime."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"(\d{1,6})([mhdw])", text.strip())
    try:
        if match:
            amount, unit = int(match.group(1)), match.group(2)
            units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
            return now - timedelta(**{units[unit]: amount})
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError) as e:
        raise InvalidRequest(f"since: expected e.g. 7d, 24h or an ISO date, got {text!r}") from e
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
