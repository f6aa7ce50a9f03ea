"""Alert channels in the policy, and the body each kind of channel takes, checked against the
shapes the services document (recorded examples below)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.alerts.formats import email_text, render
from agent.errors import PolicyError
from agent.policy.model import parse_policy

HEAD = b'version = 1\norganisation = "T"\ntimezone = "UTC"\ndefault_department = "general"\n'

# Slack, "Sending messages using incoming webhooks": text plus Block Kit blocks.
SLACK_EXAMPLE = {
    "text": "Danny Torrence left a 1 star review for your property.",
    "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": "Danny Torrence left the following review."}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "Last updated: Jan 1, 2019"}]},
    ],
}
# Microsoft Teams Workflows, "Post to a channel when a webhook request is received": one Adaptive Card.
TEAMS_EXAMPLE = {
    "type": "message",
    "attachments": [
        {
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.2",
                "body": [{"type": "TextBlock", "text": "For Samples and Templates, see https://adaptivecards.io/samples"}],
            },
        }
    ],
}
# Discord, "Execute Webhook": content (at most 2000 characters), allowed_mentions.
DISCORD_EXAMPLE = {"content": "Hello, World!", "allowed_mentions": {"parse": []}}

ALERT = {"budget": "eng-monthly", "scope": "department", "subject": "eng", "threshold_percent": 80,
         "spent_usd": "80.000000", "amount_usd": "100.000000", "period": "month"}  # fmt: skip


def shape(value: Any) -> Any:
    """Keys and types, not values: what a receiver's parser depends on."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_slack_teams_and_discord_bodies_have_the_documented_shapes() -> None:
    slack = render("slack", 7, "budget_alert", ALERT)
    assert set(slack) == set(SLACK_EXAMPLE)
    assert [shape(b) for b in slack["blocks"]] == [shape(b) for b in SLACK_EXAMPLE["blocks"]]
    assert "eng-monthly" in slack["text"] and "aifinops event 7" in slack["blocks"][1]["elements"][0]["text"]
    teams = render("teams", 7, "budget_alert", ALERT)
    card, example = teams["attachments"][0], TEAMS_EXAMPLE["attachments"][0]
    assert teams["type"] == "message" and set(card) == set(example) and card["contentType"] == example["contentType"]
    assert {k: card["content"][k] for k in ("$schema", "type")} == {k: example["content"][k] for k in ("$schema", "type")}
    assert all(block["type"] == "TextBlock" for block in card["content"]["body"])
    discord = render("discord", 7, "budget_alert", ALERT)
    assert shape(discord) == shape(DISCORD_EXAMPLE) and len(discord["content"]) <= 2000
    assert "80.000000 of 100.000000 USD" in discord["content"]
    assert render("webhook", 7, "budget_alert", ALERT) == {"id": 7, "kind": "budget_alert", **ALERT}
    long = render("discord", 8, "spend_anomaly", {"reason": "x" * 5000})
    assert len(long["content"]) == 2000


def test_channels_are_read_from_the_policy_with_their_filters() -> None:
    policy = parse_policy(HEAD + b'webhook_url = "https://hooks.example.com/a"\n'
                          b'[[alerts.channels]]\nname = "finance-slack"\nkind = "slack"\nurl_env = "AIFINOPS_SLACK_URL"\n'
                          b'events = ["budget_forecast"]\n'
                          b'[[alerts.channels]]\nname = "ops-teams"\nkind = "teams"\nurl = "https://example.com/w"\n')  # fmt: skip
    assert policy.alert_channels("budget_alert") == ("webhook", "ops-teams")
    assert policy.alert_channels("budget_forecast") == ("webhook", "finance-slack", "ops-teams")
    assert policy.every_alert_channel() == ("webhook", "finance-slack", "ops-teams")
    slack = policy.alert_channel("finance-slack")
    assert slack is not None and (slack.kind, slack.url, slack.url_env) == ("slack", None, "AIFINOPS_SLACK_URL")


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        (b'name = "x"\nkind = "pager"\nurl = "https://e.com"\n', "kind"),
        (b'name = "x"\nkind = "slack"\n', "exactly one of url, url_env and url_secret"),
        (b'name = "x"\nkind = "slack"\nurl = "https://e.com"\nurl_env = "X"\n', "exactly one of url, url_env"),
        (b'name = "x"\nkind = "slack"\nurl_secret = "vault:x"\n', "url_secret"),
        (b'name = "x"\nkind = "slack"\nurl_secret = "env:X"\nto = ["a@b.com"]\n', "belong to email channels"),
        (b'name = "x"\nkind = "slack"\nurl = "https://e.com"\nscopes = ["galaxy"]\n', "scopes"),
        (b'name = "x"\nkind = "email"\nsmtp_host = "smtp.e.com"\nto = ["a@e.com"]\n', "needs smtp_host and sender"),
        (b'name = "x"\nkind = "email"\nsmtp_host = "smtp.e.com"\nsender = "a@e.com"\n', "needs recipients"),
        (b'name = "x"\nkind = "email"\nsmtp_host = "smtp.e.com"\nsender = "a@e.com"\nto = ["not an address"]\n', "to"),
        (b'name = "x"\nkind = "email"\nsmtp_host = "h"\nsender = "a@e.com"\nto = ["b@e.com"]\nurl = "https://e.com"\n',
         "it has no url"),
        (b'name = "x"\nkind = "email"\nsmtp_host = "h"\nsender = "a@e.com"\nto = ["b@e.com"]\nusername = "u"\n',
         "username and password_secret go together"),
        (b'name = "x"\nkind = "email"\nsmtp_host = "h"\nsender = "a@e.com"\nto = ["b@e.com"]\nusername = "u"\n'
         b'password_secret = "env:P"\nsecurity = "none"\n', "never sent without TLS"),
        (b'name = "x"\nkind = "slack"\nurl = "ftp://e.com"\n', "http:// or https://"),
        (b'name = "x"\nkind = "slack"\nurl_env = "not a name"\n', "url_env"),
        (b'name = "webhook"\nkind = "slack"\nurl = "https://e.com"\n', "unique"),
    ],
)
def test_a_bad_channel_refuses_the_policy_and_says_why(channel: bytes, message: str) -> None:
    extra = b'webhook_url = "https://hooks.example.com/a"\n' if b'"webhook"' in channel else b""
    with pytest.raises(PolicyError) as refused:
        parse_policy(HEAD + extra + b"[[alerts.channels]]\n" + channel)
    assert message in str(refused.value)


def test_scopes_filter_and_email_recipients_follow_the_department() -> None:
    policy = parse_policy(HEAD + b'[alerts]\nretry_for_h = 2.5\n'
                          b'[[alerts.channels]]\nname = "org-slack"\nkind = "slack"\nurl_secret = "keyring:org-slack"\n'
                          b'scopes = ["department", "organisation"]\n'
                          b'[[alerts.channels]]\nname = "mail"\nkind = "email"\nsmtp_host = "smtp.example.com"\n'
                          b'sender = "aifinops@example.com"\nto = ["finops@example.com"]\nusername = "aifinops"\n'
                          b'password_secret = "env:AIFINOPS_SMTP_PASSWORD"\n'
                          b'[alerts.channels.department_to]\nresearch = ["lead@example.com", "finops@example.com"]\n'
                          b'[[alerts.channels]]\nname = "research-only"\nkind = "email"\nsmtp_host = "smtp.example.com"\n'
                          b'security = "tls"\nsender = "aifinops@example.com"\n'
                          b'department_to = { research = ["lead@example.com"] }\n')  # fmt: skip
    assert policy.alerts.retry_for_h == 2.5
    assert policy.alert_channels("budget_alert", "user", "sales") == ("mail",)
    assert policy.alert_channels("budget_alert", "department", "research") == ("org-slack", "mail", "research-only")
    assert policy.alert_channels("budget_forecast", "organisation") == ("org-slack", "mail")
    mail, only = policy.alert_channel("mail"), policy.alert_channel("research-only")
    assert mail is not None and only is not None
    assert mail.recipients("research") == ("finops@example.com", "lead@example.com")  # each address once
    assert mail.recipients(None) == ("finops@example.com",) and only.recipients("sales") == ()
    assert (mail.port, only.port) == (587, 465)
    assert only.every_recipient() == ("lead@example.com",)
    slack = policy.alert_channel("org-slack")
    assert slack is not None and slack.url_reference == "keyring:org-slack"


@pytest.mark.parametrize("hours", [b"0", b"-1", b"721", b"nan"])
def test_retry_for_h_is_bounded(hours: bytes) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(HEAD + b"[alerts]\nretry_for_h = " + hours + b"\n")
    assert "retry_for_h" in str(refused.value)


def test_an_email_names_the_alert_and_carries_every_field() -> None:
    subject, text = email_text(7, "budget_alert", ALERT, "host-a")
    assert subject.startswith("[aifinops] Budget alert: Budget eng-monthly (department eng) has spent 80.000000")
    assert "threshold_percent: 80" in text and text.endswith("aifinops event 7 (budget_alert) from host host-a\n")
    long_subject, _ = email_text(8, "spend_anomaly", {"reason": "y" * 500})
    assert len(long_subject) == 160 and long_subject.endswith("...")
