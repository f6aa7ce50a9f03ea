"""The policy file: what admins publish on the share, as frozen, validated values.

``parse_policy`` turns the bytes of a TOML file into a ``Policy`` or raises ``PolicyError``
naming the offending line or key; no other exception escapes it, whatever the input. The
enforcement side asks the policy questions through its methods (``budgets_for``,
``rate_limits_for``, ``model_allowed``, ``department_of``) rather than reading raw tables.
"""

from __future__ import annotations

import fnmatch
import tomllib
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import PolicyError
from agent.money import usd_to_micros

MAX_POLICY_BYTES = 1_048_576
# A department a workstation's auto-provisioned user gets: "not assigned by anyone yet".
UNASSIGNED_DEPARTMENT = "default"
ANY = "*"

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}$"
_MAX_USD = Decimal("1e12")

Name = Annotated[StrictStr, Field(pattern=_NAME_PATTERN)]
Match = Annotated[StrictStr, Field(pattern=rf"{_NAME_PATTERN}|^\*$")]
Scope = Literal["user", "department", "organisation"]


def _to_decimal(value: Any) -> Any:
    """TOML gives floats for 0.1: read them as written ("0.1"), never as binary fractions."""
    if isinstance(value, bool):
        raise ValueError("expected a decimal number or a decimal string, not a boolean")
    if isinstance(value, float | int):
        value = str(value)
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a finite number")
        return number
    raise ValueError("expected a decimal number or a decimal string")


Usd = Annotated[Decimal, BeforeValidator(_to_decimal), Field(ge=0, le=_MAX_USD)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tiers(_Model):
    """Which model answers for each routing tier in a department (absent: the agent's config)."""

    local: Name | None = None
    cheap: Name | None = None
    strong: Name | None = None


class PriceOverride(_Model):
    input_usd_per_mtok: Usd
    output_usd_per_mtok: Usd
    # Input the provider reads from / writes to its prompt cache; absent: the input rate.
    cache_read_usd_per_mtok: Usd | None = None
    cache_write_usd_per_mtok: Usd | None = None


class Department(_Model):
    # Model names or shell-style patterns ("gpt-4o*"); empty: every model.
    allowed_models: tuple[Annotated[StrictStr, Field(min_length=1, max_length=128)], ...] = ()
    tiers: Tiers | None = None
    price_overrides: dict[Name, PriceOverride] = {}
    cache_scope: Scope | None = None


class BudgetRule(_Model):
    name: Name
    scope: Literal["user", "department", "feature", "organisation"]
    # A user, department or feature name; "*" counts each one separately.
    match: Match = ANY
    period: Literal["day", "week", "month"]
    amount_usd: Usd
    action: Literal["block", "downgrade"]
    # Percent of the amount at which an alert is raised once per period.
    alerts: tuple[Annotated[StrictInt, Field(ge=1, le=1000)], ...] = (50, 80, 100)

    @property
    def amount_micro_usd(self) -> int:
        return usd_to_micros(self.amount_usd)

    @field_validator("alerts")
    @classmethod
    def _sorted_unique(cls, alerts: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(alerts)))

    @model_validator(mode="after")
    def _organisation_is_one(self) -> BudgetRule:
        if self.scope == "organisation" and self.match != ANY:
            raise ValueError('an organisation budget has match = "*" (there is one organisation)')
        return self


class RateLimit(_Model):
    scope: Literal["user", "department"]
    match: Match = ANY
    requests_per_minute: StrictInt | None = Field(None, ge=1)
    tokens_per_minute: StrictInt | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _limits_something(self) -> RateLimit:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("a rate limit needs requests_per_minute, tokens_per_minute or both")
        return self


class Gpu(_Model):
    # Box class (e.g. "rtx4090-workstation") -> what one hour of the box costs, busy or idle.
    usd_per_hour: dict[Name, Usd] = {}


class Anomaly(_Model):
    # What a runaway alarm does: "alert" (a spend_anomaly event) or "throttle" (the event, and the
    # user is held to throttle_multiple times their usual rate until an admin clears it).
    action: Literal["alert", "throttle"] = "alert"
    throttle_multiple: float = Field(3.0, gt=0, le=100)


def _check_http_url(url: str, what: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError(f"{what} must be an http:// or https:// URL")
    return url


# A secret named by reference, resolved on each box (agent.alerts.secrets): "env:NAME" (an
# environment variable), "keyring:NAME" (the OS keyring, service "aifinops") or "file:PATH" (an
# absolute path to a file only the agent's account can read).
_REFERENCE_PATTERN = (
    r"^(env:[A-Za-z_][A-Za-z0-9_]{0,127}|keyring:[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"
    r"|file:(/|[A-Za-z]:[\\/]|\\\\)[^\x00-\x1f]{1,500})$"
)
SecretRef = Annotated[StrictStr, Field(pattern=_REFERENCE_PATTERN)]
Address = Annotated[StrictStr, Field(pattern=r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,253}$")]
AlertScope = Literal["user", "department", "feature", "model", "organisation"]
_WEB_KINDS = ("webhook", "slack", "teams", "discord")
_SMTP_FIELDS = ("smtp_host", "sender", "username", "password_secret")


class AlertChannel(_Model):
    """Where alerts go (agent.alerts): a webhook, Slack, Teams or Discord incoming webhook, or email."""

    name: Name
    kind: Literal["webhook", "slack", "teams", "discord", "email"]
    # A web channel's URL is a secret and the share is readable by every employee: prefer a
    # reference, resolved on each box: url_secret = "env:NAME" or "keyring:NAME"; url_env = "NAME"
    # is short for url_secret = "env:NAME".
    url: StrictStr | None = None
    url_env: Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    url_secret: SecretRef | None = None
    events: tuple[Name, ...] = ()  # the event kinds it gets; empty: every alert
    scopes: tuple[AlertScope, ...] = ()  # what the alert is about; empty: any (a test alert: always)
    # email: SMTP through the standard library; STARTTLS unless security says otherwise.
    smtp_host: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}$")] | None = None
    smtp_port: StrictInt | None = Field(None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
    password_secret: SecretRef | None = None
    sender: Address | None = None
    to: tuple[Address, ...] = ()  # every alert the filters let through (e.g. the admins)
    department_to: dict[Name, tuple[Address, ...]] = {}  # alerts about a department: its people too

    @field_validator("url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        return None if url is None else _check_http_url(url, "url")

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> AlertChannel:
        urls = [f for f in ("url", "url_env", "url_secret") if getattr(self, f) is not None]
        if self.kind in _WEB_KINDS:
            if len(urls) != 1:
                raise ValueError(f"alert channel {self.name!r} needs exactly one of url, url_env and url_secret")
            extra = [f for f in _SMTP_FIELDS if getattr(self, f) is not None] + (["to"] if self.to else [])
            extra += ["department_to"] if self.department_to else []
            extra += ["smtp_port"] if self.smtp_port is not None else []
            if extra:
                raise ValueError(f"alert channel {self.name!r} is a {self.kind} channel: {', '.join(extra)} "
                                 "belong to email channels")  # fmt: skip
            return self
        if urls:
            raise ValueError(f"alert channel {self.name!r} is an email channel: it has no {urls[0]}")
        if self.smtp_host is None or self.sender is None:
            raise ValueError(f"email channel {self.name!r} needs smtp_host and sender")
        if not self.to and not any(self.department_to.values()):
            raise ValueError(f"email channel {self.name!r} needs recipients: to, department_to or both")
        if (self.username is None) != (self.password_secret is None):
            raise ValueError(f"email channel {self.name!r}: username and password_secret go together")
        if self.security == "none" and self.username is not None:
            raise ValueError(f"email channel {self.name!r}: a password is never sent without TLS "
                             '(security = "starttls" or "tls")')  # fmt: skip
        return self

    @property
    def url_reference(self) -> str | None:
        """Where the URL comes from: None (inline ``url``), or a secret reference."""
        return self.url_secret or (f"env:{self.url_env}" if self.url_env else None)

    @property
    def port(self) -> int:
        return self.smtp_port or {"starttls": 587, "tls": 465, "none": 25}[self.security]

    def recipients(self, department: str | None) -> tuple[str, ...]:
        """An email channel's addresses for an alert about ``department`` (None: about none)."""
        extra = self.department_to.get(department, ()) if department else ()
        return tuple(dict.fromkeys((*self.to, *extra)))

    def every_recipient(self) -> tuple[str, ...]:
        """All of an email channel's addresses (a test alert goes to each)."""
        return tuple(dict.fromkeys((*self.to, *(a for addresses in self.department_to.values() for a in addresses))))

    def wants(self, kind: str, scope: str | None = None, department: str | None = None) -> bool:
        """Whether an alert of ``kind``, about a ``scope`` (and a ``department``) goes here."""
        if self.events and kind not in self.events:
            return False
        if self.scopes and scope is not None and scope not in self.scopes:
            return False
        return self.kind != "email" or bool(self.recipients(department))


class Alerts(_Model):
    channels: tuple[AlertChannel, ...] = ()
    # How long an undelivered alert is retried (a receiver answering 5xx, 408, 429 or nothing).
    retry_for_h: float = Field(24.0, gt=0, le=720, allow_inf_nan=False)


class Policy(_Model):
    version: StrictInt = Field(ge=1)
    organisation: StrictStr = Field(min_length=1, max_length=200)
    timezone: StrictStr
    default_department: Name
    webhook_url: StrictStr | None = None
    users: dict[Name, Name] = {}
    departments: dict[Name, Department] = {}
    budgets: tuple[BudgetRule, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    gpu: Gpu = Gpu()
    anomaly: Anomaly = Anomaly()
    alerts: Alerts = Alerts()

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{name[:64]!r} is not an IANA time zone (e.g. 'Europe/Berlin', 'UTC')") from None
        return name

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return None if url is None else _check_http_url(url, "webhook_url")

    @model_validator(mode="after")
    def _unique_channel_names(self) -> Policy:
        names = [c.name for c in self.alerts.channels] + (["webhook"] if self.webhook_url else [])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"alert channel names must be unique (webhook_url is the channel 'webhook'); "
                             f"repeated: {', '.join(duplicates)}")  # fmt: skip
        return self

    def alert_channels(self, kind: str, scope: str | None = None, department: str | None = None) -> tuple[str, ...]:
        """The names of the channels an alert of ``kind`` goes to, about a ``scope`` (user,
        department, feature, model, organisation) of ``department`` when it concerns one."""
        legacy = ("webhook",) if self.webhook_url else ()
        return legacy + tuple(c.name for c in self.alerts.channels if c.wants(kind, scope, department))

    def every_alert_channel(self) -> tuple[str, ...]:
        return (("webhook",) if self.webhook_url else ()) + tuple(c.name for c in self.alerts.channels)

    def alert_channel(self, name: str) -> AlertChannel | None:
        if name == "webhook" and self.webhook_url:
            return AlertChannel(name="webhook", kind="webhook", url=self.webhook_url)
        return next((c for c in self.alerts.channels if c.name == name), None)

    @model_validator(mode="after")
    def _unique_budget_names(self) -> Policy:
        names = [b.name for b in self.budgets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"budget names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def department_of(self, user_name: str, fallback: str) -> str:
        """The policy's [users] entry; else ``fallback`` (the department the agent knows);
        else, when that is empty or the unassigned "default", the policy's default_department."""
        if user_name in self.users:
            return self.users[user_name]
        if fallback and fallback != UNASSIGNED_DEPARTMENT:
            return fallback
        return self.default_department

    def budgets_for(self, user: str, department: str, feature: str) -> list[tuple[BudgetRule, str]]:
        """Every budget a request counts against, each with the subject it is counted for."""
        subjects = {"user": user, "department": department, "feature": feature, "organisation": ANY}
        out: list[tuple[BudgetRule, str]] = []
        for rule in self.budgets:
            subject = subjects[rule.scope]
            if not subject:
                continue  # e.g. a request with no feature tag
            if rule.match in (ANY, subject):
                out.append((rule, subject))
        return out

    def rate_limits_for(self, user: str, department: str) -> list[tuple[RateLimit, str]]:
        subjects = {"user": user, "department": department}
        return [(rule, subjects[rule.scope]) for rule in self.rate_limits if rule.match in (ANY, subjects[rule.scope])]

    def model_allowed(self, department: str, model: str) -> bool:
        dept = self.departments.get(department)
        if dept is None or not dept.allowed_models:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in dept.allowed_models)

    def price_override(self, department: str, model: str) -> PriceOverride | None:
        dept = self.departments.get(department)
        return dept.price_overrides.get(model) if dept else None

    def cache_scope(self, department: str) -> Scope | None:
        dept = self.departments.get(department)
        return dept.cache_scope if dept else None

    def tiers_for(self, department: str) -> Tiers | None:
        dept = self.departments.get(department)
        return dept.tiers if dept else None


def parse_policy(data: bytes) -> Policy:
    """Bytes of a policy file -> Policy. Raises PolicyError (and nothing else) on any input."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy is {len(data)} bytes; the limit is {MAX_POLICY_BYTES}", code="too_large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PolicyError(f"policy is not UTF-8 text (line {line})", code="not_toml") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"policy is not valid TOML: {e}", code="not_toml") from None
    except RecursionError:
        raise PolicyError("policy is not valid TOML: nested too deeply", code="not_toml") from None
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        raise PolicyError(f"invalid policy: {_describe(e, raw)}", code="invalid") from None
    except RecursionError:
        raise PolicyError("invalid policy: nested too deeply", code="invalid") from None


def _describe(error: ValidationError, raw: dict[str, Any]) -> str:
    problems = []
    for err in error.errors(include_url=False)[:5]:
        problems.append(f"{_key_path(err['loc'], raw)}: {err['msg']}")
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def _key_path(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """('budgets', 1, 'amount_usd') -> 'budgets[1] (name "team").amount_usd'."""
    path = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                path += f" (name {node['name'][:64]!r})"
        else:
            path += f".{part}" if path else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return path or "(top level)"
