"""The body each kind of channel takes for one alert event.

- ``webhook``: the event as JSON, ``{"id", "kind", **body}``;
- ``slack``: an incoming webhook's ``text`` (the notification's fallback) and Block Kit ``blocks``
  (a ``section`` in mrkdwn, a ``context`` naming the event);
- ``teams``: a Teams Workflows webhook's message with one Adaptive Card attachment
  (``application/vnd.microsoft.card.adaptive``, card version 1.4);
- ``discord``: a Discord webhook's ``content`` (at most 2,000 characters) with mentions off;
- ``email``: a subject and a plain-text body (``email_text``).

Every body carries the event id (``aifinops event N``), as the post's Idempotency-Key does.
"""

from __future__ import annotations

from typing import Any

TITLES = {
    "budget_alert": "Budget alert",
    "budget_exhausted": "Budget exhausted",
    "budget_overrun": "Budget overrun",
    "budget_forecast": "Budget forecast",
    "spend_anomaly": "Spend anomaly",
    "alert_test": "Test alert",
}


def summary(kind: str, body: dict[str, Any]) -> str:
    """One line a person reads: what happened, to which budget or subject."""
    if kind == "spend_anomaly" or "reason" in body:
        return str(body.get("reason", ""))
    if kind == "alert_test":
        return str(body.get("message", "a test alert from aifinops"))
    if kind == "budget_forecast":
        return (f"Budget {body.get('budget')} ({body.get('scope')} {body.get('subject')}) is projected to spend "
                f"{body.get('forecast_usd')} of {body.get('amount_usd')} USD this {body.get('period')}, "
                f"passing it about {body.get('breach_at')}")  # fmt: skip
    if str(kind).startswith("budget_"):
        at = f" ({body['threshold_percent']}%)" if body.get("threshold_percent") is not None else ""
        return (f"Budget {body.get('budget')} ({body.get('scope')} {body.get('subject')}) has spent "
                f"{body.get('spent_usd')} of {body.get('amount_usd')} USD this {body.get('period')}{at}")  # fmt: skip
    return ", ".join(f"{k}: {v}" for k, v in sorted(body.items()))


def render(channel_kind: str, event_id: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    title = TITLES.get(kind, kind)
    text = summary(kind, body)
    footer = f"aifinops event {event_id} ({kind})"
    if channel_kind == "slack":
        return {
            "text": f"{title}: {text}",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{text}"}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]},
            ],
        }
    if channel_kind == "teams":
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True},
                {"type": "TextBlock", "text": text, "wrap": True},
                {"type": "TextBlock", "text": footer, "isSubtle": True, "size": "Small", "wrap": True},
            ],
        }
        attachment = {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        return {"type": "message", "attachments": [attachment]}
    if channel_kind == "discord":
        return {"content": f"**{title}**: {text}\n-# {footer}"[:2000], "allowed_mentions": {"parse": []}}
    return {"id": event_id, "kind": kind, **body}


def email_text(event_id: int, kind: str, body: dict[str, Any], origin: str = "") -> tuple[str, str]:
    """An email's subject and plain-text body: the summary, then every field of the event."""
    title = TITLES.get(kind, kind)
    text = summary(kind, body)
    subject = f"[aifinops] {title}: {text}"
    if len(subject) > 160:
        subject = subject[:157] + "..."
    fields = "\n".join(f"  {k}: {v}" for k, v in sorted(body.items()) if k != "reason")
    sender = f" from host {origin}" if origin else ""
    return subject, f"{title}\n\n{text}\n\n{fields}\n\n-- \naifinops event {event_id} ({kind}){sender}\n"
