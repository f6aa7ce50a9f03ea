"""The policy file: the shipped example, each field's validation, and a parser that only ever
raises PolicyError."""

from __future__ import annotations

from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError, PolicyError
from agent.policy.model import Policy, parse_policy

EXAMPLE = resources.files("agent.policy").joinpath("example_policy.toml").read_bytes()

HEAD = 'version = 3\norganisation = "Acme"\ntimezone = "America/New_York"\ndefault_department = "general"\n'


def policy(extra: str = "", head: str = HEAD) -> Policy:
    return parse_policy((head + extra).encode("utf-8"))


def refused(extra: str = "", head: str = HEAD) -> str:
    with pytest.raises(PolicyError) as caught:
        policy(extra, head)
    assert caught.value.error_type == "invalid_policy"
    return caught.value.message


def budget(**fields: Any) -> str:
    values = {"name": '"b"', "scope": '"user"', "period": '"day"', "amount_usd": '"1"', "action": '"block"'}
    values.update({k: v for k, v in fields.items() if v is not None})
    return "[[budgets]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v != "-")


def test_the_shipped_example_parses_and_answers_the_enforcement_questions() -> None:
    p = parse_policy(EXAMPLE)
    assert (p.version, p.organisation, p.timezone) == (1, "Example Corp", "Europe/Berlin")
    assert p.webhook_url == "https://hooks.example.com/aifinops"
    names = {rule.name: subject for rule, subject in p.budgets_for("alice", "engineering", "support-bot")}
    assert names == {"per-user-daily": "alice", "support-bot-weekly": "support-bot", "company-monthly": "*"}
    sales = {rule.name: subject for rule, subject in p.budgets_for("bob", "sales", "")}
    assert sales == {"per-user-daily": "bob", "sales-monthly": "sales", "company-monthly": "*"}
    assert [s for _, s in p.rate_limits_for("bob", "sales")] == ["bob", "sales"]
    assert p.model_allowed("engineering", "claude-3-haiku") and not p.model_allowed("sales", "gpt-4o")
    assert p.model_allowed("no-such-department", "anything")
    assert p.gpu.usd_per_hour["l40s-edge"] == Decimal("1.20")
    eng = p.departments["engineering"]
    assert eng.tiers is not None and eng.tiers.strong == "gpt-4o"
    assert p.price_override("engineering", "gpt-4o") is not None
    assert p.cache_scope("engineering") == "department"
    assert p.budgets[0].amount_micro_usd == 5_000_000


def test_policy_error_is_a_config_error() -> None:
    assert issubclass(PolicyError, ConfigError)


def test_department_of_prefers_the_policy_then_the_known_department_then_the_default() -> None:
    p = policy('[users]\nalice = "eng"\n')
    assert p.department_of("alice", "sales") == "eng"
    assert p.department_of("bob", "sales") == "sales"
    assert p.department_of("carol", "") == "general"
    assert p.department_of("dave", "default") == "general"  # auto-provisioned: unassigned


def test_money_is_decimal_as_written_never_binary_float() -> None:
    p = policy(budget(amount_usd="0.1") + budget(name='"c"', amount_usd="7"))
    assert p.budgets[0].amount_usd == Decimal("0.1")
    assert p.budgets[0].amount_micro_usd == 100_000
    assert p.budgets[1].amount_micro_usd == 7_000_000
    assert policy(budget(amount_usd='"12.345678"')).budgets[0].amount_micro_usd == 12_345_678


@pytest.mark.parametrize(
    ("amount", "needle"),
    [('"-1"', "greater than or equal"), ('"nan"', "finite"), ('"Infinity"', "finite"), ('"abc"', "decimal"),
     ("true", "boolean"), ('"1e40"', "less than or equal"), ("[1]", "decimal")],
)  # fmt: skip
def test_bad_amounts_are_refused_naming_the_budget(amount: str, needle: str) -> None:
    message = refused(budget(name='"team"', amount_usd=amount))
    assert "budgets[0] (name 'team').amount_usd" in message and needle in message


def test_alerts_default_sorted_unique_and_bounded() -> None:
    assert policy(budget()).budgets[0].alerts == (50, 80, 100)
    assert policy(budget(alerts="[100, 50, 50]")).budgets[0].alerts == (50, 100)
    assert policy(budget(alerts="[]")).budgets[0].alerts == ()
    assert "alerts[0]" in refused(budget(alerts="[0]"))
    assert "alerts[1]" in refused(budget(alerts="[5, 1001]"))
    assert "alerts[0]" in refused(budget(alerts='["50"]'))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"scope": '"team"'}, "scope"),
        ({"period": '"year"'}, "period"),
        ({"action": '"warn"'}, "action"),
        ({"scope": '"organisation"', "match": '"acme"'}, 'match = "*"'),
        ({"match": '"no spaces"'}, "match"),
        ({"name": "-"}, "name"),
        ({"color": '"red"'}, "Extra inputs"),
    ],
)
def test_budget_fields_are_validated(fields: dict[str, str], needle: str) -> None:
    assert needle in refused(budget(**fields))


def test_budget_names_are_unique() -> None:
    assert "repeated: b" in refused(budget() + budget())


def test_organisation_budget_matching_star_and_feature_budgets_skip_untagged_requests() -> None:
    p = policy(budget(scope='"organisation"', match='"*"') + budget(name='"f"', scope='"feature"', match='"*"'))
    assert [(r.name, s) for r, s in p.budgets_for("u", "d", "")] == [("b", "*")]
    assert [(r.name, s) for r, s in p.budgets_for("u", "d", "bot")] == [("b", "*"), ("f", "bot")]


def test_rate_limits_need_a_limit_of_at_least_one() -> None:
    ok = policy('[[rate_limits]]\nscope = "department"\nmatch = "sales"\ntokens_per_minute = 1000\n')
    assert ok.rate_limits[0].requests_per_minute is None
    assert ok.rate_limits_for("u", "eng") == []
    assert "needs requests_per_minute" in refused('[[rate_limits]]\nscope = "user"\n')
    assert "requests_per_minute" in refused('[[rate_limits]]\nscope = "user"\nrequests_per_minute = 0\n')
    assert "scope" in refused('[[rate_limits]]\nscope = "feature"\nrequests_per_minute = 5\n')
    assert "requests_per_minute" in refused('[[rate_limits]]\nscope = "user"\nrequests_per_minute = 1.5\n')


@pytest.mark.parametrize(
    ("head", "needle"),
    [
        (HEAD.replace("version = 3", "version = 0"), "version"),
        (HEAD.replace("version = 3", 'version = "3"'), "version"),
        (HEAD.replace("version = 3", "version = true"), "version"),
        (HEAD.replace("America/New_York", "Mars/Olympus"), "IANA"),
        (HEAD.replace("America/New_York", "America"), "IANA"),
        (HEAD.replace("America/New_York", "../../etc/passwd"), "IANA"),
        (HEAD.replace('organisation = "Acme"\n', ""), "organisation: Field required"),
        (HEAD.replace('"general"', '"has space"'), "default_department"),
        (HEAD + 'webhook_url = "ftp://x.example"\n', "webhook_url"),
        (HEAD + 'webhook_url = "https://"\n', "webhook_url"),
        (HEAD + "surprise = 1\n", "surprise"),
    ],
)
def test_top_level_fields_are_validated(head: str, needle: str) -> None:
    assert needle in refused(head=head)


def test_department_fields_are_validated() -> None:
    p = policy(
        '[departments.eng]\nallowed_models = ["gpt-4o*"]\ncache_scope = "organisation"\n'
        'tiers = { cheap = "gpt-4o-mini" }\n'
        '[departments.eng.price_overrides."gpt-4o"]\ninput_usd_per_mtok = 2.5\noutput_usd_per_mtok = "10"\n'
    )
    eng = p.departments["eng"]
    assert eng.price_overrides["gpt-4o"].input_usd_per_mtok == Decimal("2.5")
    assert eng.tiers is not None and (eng.tiers.local, eng.tiers.cheap) == (None, "gpt-4o-mini")
    assert p.model_allowed("eng", "gpt-4o-mini") and not p.model_allowed("eng", "local")
    assert "cache_scope" in refused('[departments.eng]\ncache_scope = "world"\n')
    assert "tiers.huge" in refused('[departments.eng]\ntiers = { huge = "x" }\n')
    assert "output_usd_per_mtok" in refused('[departments.eng.price_overrides.m]\ninput_usd_per_mtok = "1"\n')
    assert "users.bob" in refused("[users]\nbob = 7\n")
    assert "gpu.usd_per_hour.box" in refused('[gpu.usd_per_hour]\nbox = "-2"\n')


def test_toml_errors_name_the_line() -> None:
    message = refused('[users]\nalice = "eng"\nbob = \n')
    assert "not valid TOML" in message and "line 7" in message
    with pytest.raises(PolicyError, match="not UTF-8 text \\(line 2\\)"):
        parse_policy(b"version = 1\norganisation = '\xff'\n")


def test_deep_nesting_and_huge_files_are_policy_errors() -> None:
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy(b"x = " + b"[" * 100_000)
    with pytest.raises(PolicyError, match="limit"):
        parse_policy(b"#" * 2_000_000)


def _only_policy_errors(data: bytes) -> None:
    try:
        parse_policy(data)
    except PolicyError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_but_policy_error(data: bytes) -> None:
    _only_policy_errors(data)


_TOML_BITS = st.sampled_from(
    ["version", "=", " ", "\n", "[", "]", "[[budgets]]", "[users]", "[departments.x]", '"', "'", "{", "}", ",",
     "1", "-1", "0.5", "1e999", "true", "scope", "amount_usd", "alerts", "timezone", '"UTC"', '"*"', "#", "\\",
     "\x00", "é", "[gpu.usd_per_hour]", "inf", "nan", "1979-05-27T07:32:00Z", '"""', "match"]
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TOML_BITS, max_size=60).map("".join))
def test_random_toml_ish_text_never_raises_anything_but_policy_error(text: str) -> None:
    _only_policy_errors(HEAD.encode() + text.encode("utf-8"))
    _only_policy_errors(text.encode("utf-8"))


_TOML_VALUES = st.sampled_from(
    ["1", "0", "-5", "1.5", "true", '"x"', '"*"', '""', "[]", '[1, "a"]', "{}", "{ a = 1 }", '"UTC"', "1e400",
     "2024-01-01", '"0.5"', '["gpt-4o"]', "[[1]]", '{ local = 1 }']
)  # fmt: skip
_TOP = ["version", "organisation", "timezone", "default_department", "webhook_url", "users", "departments",
        "budgets", "rate_limits", "gpu"]  # fmt: skip
_BUDGET = ["name", "scope", "match", "period", "amount_usd", "action", "alerts"]


@settings(max_examples=300)
@given(
    st.dictionaries(st.sampled_from(_TOP), _TOML_VALUES, max_size=len(_TOP)),
    st.dictionaries(st.sampled_from(_BUDGET), _TOML_VALUES, max_size=len(_BUDGET)),
)
def test_wrong_types_in_every_field_never_raise_anything_but_policy_error(
    top: dict[str, str], rule: dict[str, str]
) -> None:
    text = "".join(f"{k} = {v}\n" for k, v in top.items())
    text += "[[budgets]]\n" + "".join(f"{k} = {v}\n" for k, v in rule.items())
    _only_policy_errors(text.encode("utf-8"))
    _only_policy_errors((HEAD + "[[budgets]]\n" + "".join(f"{k} = {v}\n" for k, v in rule.items())).encode())


def test_every_truncation_of_the_example_is_a_policy_or_a_policy_error() -> None:
    parsed = 0
    for end in range(len(EXAMPLE) + 1):
        try:
            parse_policy(EXAMPLE[:end])
            parsed += 1
        except PolicyError:
            pass
    assert parsed >= 1  # at least the whole file


def test_the_admin_guide_shows_the_shipped_example_verbatim() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "ADMIN.md").read_text(encoding="utf-8")
    assert EXAMPLE.decode("utf-8") in guide
