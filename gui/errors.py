"""What the agent said went wrong, and how to say it to a person."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(eq=False)  # not frozen: Python sets __traceback__ on exceptions
class AgentError(Exception):
    """An OpenAI-style error from the agent, or the agent not answering at all (status 0)."""

    status: int
    type: str
    message: str
    code: str = ""
    budget: dict[str, str] = field(default_factory=dict)
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"

    @classmethod
    def unreachable(cls, detail: str) -> AgentError:
        return cls(0, "unreachable", detail)

    @classmethod
    def from_body(cls, status: int, body: Any, retry_after: str | None = None) -> AgentError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(status, "http_error", f"the agent answered HTTP {status}")
        budget = error.get("budget")
        return cls(
            status=status,
            type=str(error.get("type") or "error"),
            message=str(error.get("message") or ""),
            code=str(error.get("code") or ""),
            budget={str(k): str(v) for k, v in budget.items()} if isinstance(budget, dict) else {},
            retry_after_s=int(retry_after) if retry_after and retry_after.isdigit() else None,
        )


def plain_words(error: AgentError) -> str:
    """One or two sentences a user can act on; never a stack trace."""
    if error.status == 0:
        return "The aifinops agent is not answering. It is being restarted; try again in a moment."
    if error.type == "budget_exceeded" or error.status == 402:
        name = error.budget.get("name", "")
        reset = error.budget.get("resets_at", "")
        which = f"Your budget '{name}'" if name else "Your budget"
        until = f" until {_short_time(reset)}" if reset else ""
        return f"{which} is used up{until}. Ask your admin for more, or pick the local model."
    if error.status == 429:
        wait = f"{error.retry_after_s} s" if error.retry_after_s is not None else "a moment"
        return f"You are sending requests faster than your limit allows. Try again in {wait}."
    if error.code == "cloud_paused":
        return "Cloud models are paused. Untick 'Pause cloud' in the tray menu, or pick 'auto' or the local model."
    if error.status == 403:
        return f"This is not allowed by your company's policy ({error.message}). Pick 'auto' or the local model."
    if error.status == 401:
        return "The agent did not accept your token. Run 'aifinops doctor' to check your set-up."
    if error.code == "context_length_exceeded":
        return "The conversation is too long for the local model. Start a new conversation."
    if error.status == 413:
        return "This message is too large. Shorten it or start a new conversation."
    if error.status == 400:
        return f"The agent refused this request: {error.message}"
    if error.status == 504:
        return "The cloud model took too long to answer. Try again, or pick the local model."
    if error.status >= 500:
        return "The cloud model is not available right now. Try again later, or pick the local model."
    return f"The agent answered with an error: {error.message or error.type}"


def _short_time(iso: str) -> str:
    """'2026-06-01T00:00:00+00:00' -> '2026-06-01 00:00 UTC' (left alone when it is not ISO)."""
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return when.strftime("%Y-%m-%d %H:%M %Z").strip()
