"""Settings: defaults <- TOML file <- AIFINOPS_* environment <- overrides, and what goes wrong."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.errors import ConfigError
from agent.paths import Paths
from agent.settings import (
    AgentSection,
    BudgetsSection,
    CacheSection,
    FleetSection,
    GpuSection,
    LocalModelConfig,
    LoggingSection,
    MetricsSection,
    ModelsSection,
    OptimizerSection,
    PricingSection,
    RoutingSection,
    Settings,
    ShareSection,
    TelemetrySection,
    TiersSection,
    _parse_env_value,
    default_config_text,
    load_settings,
    write_default_config,
)


def write_config(home: Path, text: str) -> Path:
    file = Paths.resolve(home).config_file
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text, encoding="utf-8")
    return file


def test_defaults_when_there_is_no_file_and_no_environment(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, environ={})
    assert settings.agent.host == "127.0.0.1"
    assert settings.agent.port == 8765
    assert settings.agent.cors_origins == ()
    assert settings.pricing.local_usd_per_hour == Decimal("0.10")
    assert [m.name for m in settings.local_models] == ["local"]
    assert settings.cloud == ()
    assert settings.config_file == tmp_path.resolve() / "config" / "config.toml"


def test_each_layer_beats_the_one_below_key_by_key(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[agent]\nport = 9000\nhost = "127.0.0.2"\ndefault_model = "from-file"\nlog_level = "debug"\n',
    )
    file_only = load_settings(home=tmp_path, environ={})
    assert (file_only.agent.port, file_only.agent.host) == (9000, "127.0.0.2")
    assert file_only.agent.log_level == "DEBUG"

    environ = {"AIFINOPS_AGENT__PORT": "9100", "AIFINOPS_AGENT__DEFAULT_MODEL": "from-env"}
    with_env = load_settings(home=tmp_path, environ=environ)
    assert with_env.agent.port == 9100
    assert with_env.agent.default_model == "from-env"
    assert with_env.agent.host == "127.0.0.2"  # the file's other keys in [agent] survive

    with_overrides = load_settings(home=tmp_path, environ=environ, overrides={"agent": {"port": 9200}})
    assert with_overrides.agent.port == 9200
    assert with_overrides.agent.default_model == "from-env"
    assert with_overrides.agent.host == "127.0.0.2"
    assert with_overrides.agent.log_level == "DEBUG"


def test_host_and_port_aliases(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, environ={"AIFINOPS_HOST": "localhost", "AIFINOPS_PORT": "0"})
    assert settings.agent.host == "localhost"
    assert settings.agent.port == 0


def test_env_values_parse_as_toml_and_fall_back_to_strings(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        environ={
            "AIFINOPS_AGENT__ALLOWED_HOSTS": '["box.lan", "edge.local"]',
            "AIFINOPS_AGENT__PROVISION_OS_USER": "false",
            "AIFINOPS_SHARE__PATH": "/mnt/share",  # not TOML: taken as a string
            "AIFINOPS_PRICING__LOCAL_USD_PER_HOUR": "0.25",
            "AIFINOPS_UNRELATED": "ignored",  # no __: not a setting
        },
    )
    assert settings.agent.allowed_hosts == ("box.lan", "edge.local")
    assert settings.agent.provision_os_user is False
    assert settings.share_dir == Path("/mnt/share")
    assert settings.pricing.local_usd_per_hour == Decimal("0.25")


def test_aifinops_home_moves_every_path(tmp_path: Path) -> None:
    home = tmp_path / "elsewhere"
    write_config(home, "[agent]\nport = 9321\n")
    settings = load_settings(environ={"AIFINOPS_HOME": str(home)})
    root = home.resolve()
    paths = settings.paths
    for folder in (paths.config_dir, paths.data_dir, paths.log_dir, paths.cache_dir):
        assert folder.is_relative_to(root)
    assert len({paths.config_dir, paths.data_dir, paths.log_dir, paths.cache_dir}) == 4
    assert paths.ledger_file.is_relative_to(root)
    assert paths.token_file.is_relative_to(root)
    assert settings.models_dir.is_relative_to(root)
    assert settings.config_file == paths.config_file
    assert settings.agent.port == 9321  # and the config file there is the one read


def test_models_dir_setting_replaces_the_default_folder(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, environ={"AIFINOPS_MODELS__DIR": str(tmp_path / "m")})
    assert settings.models_dir == tmp_path / "m"


def test_aifinops_config_points_at_another_file(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[agent]\nport = 9555\n", encoding="utf-8")
    settings = load_settings(home=tmp_path, environ={"AIFINOPS_CONFIG": str(other)})
    assert settings.agent.port == 9555
    assert settings.config_file == other


def test_a_named_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(home=tmp_path, config_file=tmp_path / "missing.toml", environ={})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    file = write_config(tmp_path, "[agent\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        load_settings(home=tmp_path, environ={})
    assert str(file) in err.value.message


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    file = Paths.resolve(tmp_path).config_file
    file.parent.mkdir(parents=True)
    file.write_bytes(b'[agent]\nhost = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(home=tmp_path, environ={})


@pytest.mark.parametrize(
    ("toml", "environ", "key"),
    [
        ("[agent]\nbogus = 1\n", {}, "agent.bogus"),
        ("[nonsense]\nx = 1\n", {}, "nonsense"),
        ('[agent]\nport = "abc"\n', {}, "agent.port"),
        ("[agent]\nport = 70000\n", {}, "agent.port"),
        ("", {"AIFINOPS_AGENT__PORT": "not-a-port"}, "agent.port"),
        ("", {"AIFINOPS_AGENT__NO_SUCH_KEY": "1"}, "agent.no_such_key"),
        ('[agent]\ncors_origins = ["*"]\n', {}, "agent.cors_origins"),
        ("", {"AIFINOPS_AGENT__CORS_ORIGINS": '["https://ok.example", "*"]'}, "agent.cors_origins"),
        ('[agent]\nlog_level = "LOUD"\n', {}, "agent.log_level"),
        ('[pricing]\nlocal_usd_per_hour = "-1"\n', {}, "pricing.local_usd_per_hour"),
        (
            '[[local_models]]\nname = "a"\n[[local_models]]\nname = "a"\n',
            {},
            "local_models",
        ),
        (
            '[[cloud]]\nname = "x"\nbase_url = "ftp://nope"\nmodels = ["m"]\n',
            {},
            "cloud.0.base_url",
        ),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str], key: str
) -> None:
    write_config(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_settings(home=tmp_path, environ=environ)
    assert key in err.value.message


def test_wildcard_cors_from_overrides_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.cors_origins"):
        load_settings(home=tmp_path, environ={}, overrides={"agent": {"cors_origins": ["*"]}})


def test_write_default_config_writes_once_and_keeps_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "config" / "config.toml"
    assert write_default_config(path) is True
    assert path.read_text(encoding="utf-8") == default_config_text()
    path.write_text("[agent]\nport = 9999\n", encoding="utf-8")
    assert write_default_config(path) is False
    assert path.read_text(encoding="utf-8") == "[agent]\nport = 9999\n"
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no .tmp left behind


def test_the_default_config_file_loads_and_equals_the_builtin_defaults(tmp_path: Path) -> None:
    path = Paths.resolve(tmp_path).config_file
    assert write_default_config(path)
    from_file = load_settings(home=tmp_path, environ={})
    assert from_file.config_file == path
    builtin = Settings(paths=Paths.resolve(tmp_path))
    assert from_file.model_dump() == builtin.model_dump()


def test_every_key_in_the_default_config_is_a_setting_and_every_setting_is_shown() -> None:
    data: dict[str, Any] = tomllib.loads(default_config_text())
    sections: dict[str, type[BaseModel]] = {
        "agent": AgentSection,
        "models": ModelsSection,
        "share": ShareSection,
        "pricing": PricingSection,
        "budgets": BudgetsSection,
        "fleet": FleetSection,
        "cache": CacheSection,
        "tiers": TiersSection,
        "routing": RoutingSection,
        "optimizer": OptimizerSection,
        "gpu": GpuSection,
        "metrics": MetricsSection,
        "telemetry": TelemetrySection,
        "logging": LoggingSection,
    }
    assert set(data) == {*sections, "local_models"}
    for name, model in sections.items():
        fields = set(model.model_fields)
        if name == "pricing":
            fields.discard("overrides")  # shown as a commented example
        if name == "gpu":
            fields.discard("usd_per_kwh")  # None by default: TOML has no null, shown commented
        if name == "cache":
            fields.discard("threshold")  # None by default: the verifier's floor, shown commented
        assert set(data[name]) == fields, name
    [local] = data["local_models"]
    assert set(local) == set(LocalModelConfig.model_fields)


def test_default_config_values_match_the_field_defaults() -> None:
    data: dict[str, Any] = tomllib.loads(default_config_text())
    for section, model in (
        ("agent", AgentSection),
        ("pricing", PricingSection),
        ("cache", CacheSection),
        ("tiers", TiersSection),
        ("routing", RoutingSection),
        ("optimizer", OptimizerSection),
        ("gpu", GpuSection),
    ):
        for key, value in data[section].items():
            assert model.model_validate({key: value}) == model(), f"{section}.{key}"
    assert LocalModelConfig.model_validate(data["local_models"][0]) == LocalModelConfig()


@pytest.fixture(scope="module")
def empty_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("empty-home")


@given(port=st.integers(min_value=0, max_value=65535))
def test_port_from_the_environment_round_trips(empty_home: Path, port: int) -> None:
    settings = load_settings(home=empty_home, environ={"AIFINOPS_AGENT__PORT": str(port)})
    assert settings.agent.port == port


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_env_parser_reads_integers(n: int) -> None:
    assert _parse_env_value(str(n)) == n


@given(st.booleans())
def test_env_parser_reads_booleans(flag: bool) -> None:
    assert _parse_env_value(str(flag).lower()) is flag


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\')))
def test_env_parser_reads_quoted_strings(text: str) -> None:
    assert _parse_env_value(f'"{text}"') == text


@given(st.text())
def test_env_parser_never_raises_and_falls_back_to_the_raw_text(raw: str) -> None:
    try:
        expected = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        expected = raw
    assert _parse_env_value(raw) == expected


@given(
    st.from_regex(r"\A/[a-z0-9_./-]{0,30}\Z"),
)
def test_env_parser_keeps_paths_as_strings(path: str) -> None:
    assert _parse_env_value(path) == path


def test_a_lan_bind_without_tls_is_refused() -> None:
    with pytest.raises(ConfigError, match="tls_certfile"):
        load_settings(overrides={"agent": {"host": "0.0.0.0"}}, environ={})
    settings = load_settings(
        overrides={"agent": {"host": "0.0.0.0", "tls_certfile": "/etc/c.pem", "tls_keyfile": "/etc/k.pem"}},
        environ={},
    )
    assert settings.agent.host == "0.0.0.0"


# -- [[cloud]] kinds -------------------------------------------------------------------------

AZURE: dict[str, Any] = {
    "name": "azure-east",
    "kind": "azure",
    "base_url": "https://res.openai.azure.com",
    "models": ["gpt-4o-mini", "gpt-4o"],
}


def test_a_cloud_endpoint_is_openai_compatible_by_default(tmp_path: Path) -> None:
    endpoint = {"name": "openai", "base_url": "https://api.openai.com/v1", "models": ["gpt-4o"]}
    [cloud] = load_settings(home=tmp_path, environ={}, overrides={"cloud": [endpoint]}).cloud
    assert (cloud.kind, cloud.provider_id, cloud.api_version, cloud.deployments) == ("openai", "", "", {})


def test_an_azure_endpoint_from_the_file_maps_models_to_deployments(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[[cloud]]\nname = "azure-east"\nkind = "azure"\nbase_url = "https://res.openai.azure.com/"\n'
        'api_version = "2025-01-01-preview"\nmodels = ["gpt-4o-mini", "gpt-4o"]\n'
        'deployments = {"gpt-4o-mini" = "mini-prod"}\napi_key_env = "AZURE_OPENAI_API_KEY"\n',
    )
    [cloud] = load_settings(home=tmp_path, environ={}).cloud
    assert (cloud.kind, cloud.api_version) == ("azure", "2025-01-01-preview")
    assert cloud.provider_id == "azure"  # genai-prices' azure table (it falls back to OpenAI's)
    assert (cloud.deployment("gpt-4o-mini"), cloud.deployment("gpt-4o")) == ("mini-prod", "gpt-4o")


def test_an_azure_endpoint_keeps_an_explicit_provider_id(tmp_path: Path) -> None:
    overrides = {"cloud": [{**AZURE, "api_version": "2024-10-21", "provider_id": "openai"}]}
    [cloud] = load_settings(home=tmp_path, environ={}, overrides=overrides).cloud
    assert cloud.provider_id == "openai"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({}, 'kind = "azure": set api_version'),
        ({"api_version": "2024-10-21&x=1"}, "cloud.0.api_version"),
        ({"api_version": "2024-10-21", "base_url": "https://res.openai.azure.com/openai/"}, "without /openai"),
        ({"api_version": "2024-10-21", "deployments": {"gpt-5": "five"}}, "models it does not serve: ['gpt-5']"),
        ({"api_version": "2024-10-21", "deployments": {"gpt-4o": "my deployment"}}, "not an Azure deployment name"),
        ({"api_version": "2024-10-21", "models": ["openai/gpt-4o"]}, "not an Azure deployment name"),
        ({"kind": "openai", "api_version": "2024-10-21"}, 'apply to kind = "azure" only'),
        ({"kind": "openai", "deployments": {"gpt-4o": "x"}}, 'apply to kind = "azure" only'),
        ({"kind": "bedrock"}, "cloud.0.kind"),
    ],
)
def test_azure_misconfigurations_are_config_errors(tmp_path: Path, extra: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(home=tmp_path, environ={}, overrides={"cloud": [{**AZURE, **extra}]})
    assert "cloud.0" in err.value.message
    assert problem in err.value.message
