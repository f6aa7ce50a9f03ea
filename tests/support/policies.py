"""Policy texts the tests sign and publish."""

from __future__ import annotations


def department_budget(amount_usd: str, version: int = 1, webhook_url: str | None = None) -> bytes:
    """One monthly, blocking budget for the department "eng" (every new user's, by default)."""
    hook = f'webhook_url = "{webhook_url}"' if webhook_url else ""
    return f"""
version = {version}
organisation = "Test"
timezone = "UTC"
default_department = "eng"
{hook}

[[budgets]]
name = "eng-monthly"
scope = "department"
match = "eng"
period = "month"
amount_usd = "{amount_usd}"
action = "block"
""".encode()
