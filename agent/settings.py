"""Settings: built-in defaults <- TOML file <- AIFINOPS_* environment <- command line.

Nothing is read at import time; ``load_settings()`` does the work and returns a frozen value.
Any key can come from the environment as ``AIFINOPS_<SECTION>__<KEY>`` (values are parsed as
TOML values when they parse, else taken as strings); ``AIFINOPS_HOME`` moves every path.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError
from agent.files import write_atomic
from agent.paths import Paths

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    shutdown_grace_s: float = Field(10.0, ge=0)
    default_model: str = "local"
    log_level: str = "INFO"
    # Workstations: on first run, create a user for the OS account and a 0600 token file.
    provision_os_user: bool = True
    # Required for any bind beyond loopback (edge boxes serving a LAN).
    tls_certfile: str = ""
    tls_keyfile: str = ""

    @model_validator(mode="after")
    def _lan_needs_tls(self) -> AgentSection:
        if not is_loopback(self.host) and not (self.tls_certfile and self.tls_keyfile):
            raise ValueError(
                f"binding {self.host!r} exposes the agent beyond this machine: "
                "set agent.tls_certfile and agent.tls_keyfile (or bind 127.0.0.1)"
            )
        return self

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in origins:
            raise ValueError('a wildcard CORS origin ("*") is refused on an API that spends money')
        return origins

    @field_validator("log_level")
    @classmethod
    def _level(cls, level: str) -> str:
        level = level.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return level


class ModelsSection(_Section):
    dir: str = ""


class CacheSection(_Section):
    enabled: bool = True
    # Who shares answers: "user" (default), "department" or "organisation".
    scope: Literal["user", "department", "organisation"] = "user"
    # The share of semantic hits that must be right: the verifier's calibration turns it into the
    # score a stored question needs to answer a new one. Higher: fewer hits, fewer wrong ones.
    # 0.90 is what the shipped verifier keeps at about 0.4 recall on unseen Quora pairs; above
    # about 0.93 it cannot be sure, and 0.95 leaves a few percent of the hits.
    min_precision: float = Field(0.90, gt=0, lt=1)
    # The cross-encoder that reads both questions before a stored answer is served. Off: the
    # similarity (threshold, 0.88 unless set) and the guard alone decide.
    verifier: bool = True
    # Cosine similarity from which a stored question is a candidate. Unset: the verifier's own
    # floor (the one its calibration was measured with). Rarely worth setting.
    threshold: float | None = Field(None, gt=0, le=1)
    # Rule check: numbers, dates, negation, names and units of both questions must agree.
    guard: bool = True
    ttl_s: int = Field(7 * 86400, ge=1)
    max_entries: int = Field(100_000, ge=1)
    # Conversations longer than this many user turns, or hotter than this temperature, skip it.
    max_turns: int = Field(3, ge=1)
    max_temperature: float = Field(1.0, ge=0, le=2)
    embedding_model: str = "minilm-l6-v2-int8"
    embedding_tokenizer: str = "minilm-l6-v2-tokenizer"


class TiersSection(_Section):
    """Which configured model answers for each tier; "" means the tier is absent."""

    local: str = "local"  # a [[local_models]] name
    cheap: str = ""  # a model of a [[cloud]] endpoint
    strong: str = ""


class RoutingSection(_Section):
    # Model "auto" is routed by difficulty; false: "auto" means agent.default_model.
    enabled: bool = True
    # Trained difficulty model (aifinops router train). Empty: the bundled default.
    artifact: str = ""
    # P(the cheaper tier's answer is good enough) below this sends the request up a tier.
    threshold: float = Field(0.5, ge=0, le=1)
    # The local tier answers prompts up to this many tokens, with no code, math or steps,
    # scoring at least local_threshold (the small local model needs easier questions).
    local_max_prompt_tokens: int = Field(400, ge=0)
    local_threshold: float = Field(0.75, ge=0, le=1)
    # From this share of a budget used, the router prefers the next cheaper tier.
    budget_downgrade_at: float = Field(0.8, gt=0, le=1)
    # Cascade: the local model answers first; below this confidence (geometric mean of the
    # answer's token probabilities, 0..1) the request escalates to cascade_to.
    cascade: bool = False
    cascade_to: Literal["cheap", "strong"] = "cheap"
    cascade_threshold: float = Field(0.5, ge=0, le=1)


class OptimizerSection(_Section):
    # Lossless steps: whitespace and markup normalisation, repeated blocks, old turns.
    enabled: bool = True
    # Older turns beyond this many tokens are dropped (the system prompt and latest turns stay).
    max_history_tokens: int = Field(3000, ge=64)
    # Lossy: drop the least informative tokens of long prompts (by local-model surprisal).
    lossy: bool = False
    lossy_min_tokens: int = Field(600, ge=32)
    lossy_keep_ratio: float = Field(0.6, gt=0, le=1)
    scoring_model: str = "smollm2-135m-instruct"


class ShareSection(_Section):
    path: str = ""
    # Admin public keys ("ed25519:<base64>", from `aifinops policy keygen`); a policy on the
    # share applies only when one of them signed it.
    public_keys: tuple[str, ...] = ()
    sync_interval_s: float = Field(60.0, ge=5)
    read_timeout_s: float = Field(5.0, gt=0)


class BudgetsSection(_Section):
    # A request kept out only by the holds of calls in flight waits this long for them to settle.
    hold_wait_s: float = Field(15.0, ge=0, le=600)


class FleetSection(_Section):
    # Publish this agent's finished ledger rows to <share>/fleet/<host-id>/ (needs share.path).
    publish: bool = True
    publish_interval_s: float = Field(60.0, ge=5)
    # What leaves the box besides ids, counts and money: user names as they are, or hashed.
    user_names: Literal["plain", "hashed"] = "plain"
    # The router's reason for each request ("classifier: hard (0.91)"); never prompt or answer text.
    publish_reasons: bool = False
    # Department and organisation budgets count the whole fleet: each agent spends within an
    # allotment it claims on the share (<share>/fleet/_leases/), so the fleet cannot overspend.
    budgets: bool = True
    # Each claim takes at least this percent of the budget (fewer claims; an idle agent gives
    # back what it did not spend after allotment_idle_s).
    allotment_percent: int = Field(5, ge=1, le=100)
    allotment_idle_s: float = Field(120.0, ge=5)
    # How often idle allotments are given back and this agent's spend recorded on the share.
    budget_refresh_s: float = Field(30.0, ge=5)


class PriceOverride(_Section):
    input_usd_per_mtok: Decimal = Field(ge=0)
    output_usd_per_mtok: Decimal = Field(ge=0)
    # Input the provider reads from / writes to its prompt cache; absent: the input rate.
    cache_read_usd_per_mtok: Decimal | None = Field(None, ge=0)
    cache_write_usd_per_mtok: Decimal | None = Field(None, ge=0)


class PricingSection(_Section):
    local_usd_per_hour: Decimal = Field(Decimal("0.10"), ge=0)
    overrides: dict[str, PriceOverride] = {}


class GpuSection(_Section):
    """GPU tracking (NVIDIA, through NVML) and what GPU time costs."""

    enabled: bool = True
    # USD per GPU hour by model name, matched in the NVML name case-insensitively at word
    # boundaries ("H200" prices "NVIDIA H200"); "default" prices any other GPU. A GPU without
    # a price has an unknown cost, never $0. Busy, idle and unknown time cost the same.
    usd_per_hour: dict[str, Decimal] = {}
    # Energy on top, USD per kWh of measured power draw. None: energy is not priced.
    usd_per_kwh: Decimal | None = Field(None, ge=0)
    # Utilisation (%) under which the GPU counts as idle.
    idle_threshold_pct: float = Field(5.0, ge=0, le=100)
    sample_interval_s: float = Field(2.0, ge=0.5)
    # A sample stands for at most this long; beyond it is a gap (unknown time).
    max_gap_s: float = Field(30.0, gt=0)
    # GPU class catalogue for right-sizing (TOML). Empty: the bundled one.
    catalogue: str = ""
    # The cost centre idle GPU time is charged to ("idle:<box_department>").
    box_department: str = Field("box", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
    # Replay a recorded trace (docs/GPU_TRACE.md) instead of NVML, as if live: demos and tests.
    trace: str = ""

    @field_validator("usd_per_hour")
    @classmethod
    def _prices(cls, prices: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, price in prices.items():
            if not name.strip():
                raise ValueError("a GPU price needs a model name")
            if not price.is_finite() or price < 0:
                raise ValueError(f"{name}: USD per hour must be >= 0, got {price}")
        return prices


class LocalModelConfig(_Section):
    name: str = Field("local", pattern=_NAME)
    model: str = "smollm2-135m-instruct"
    n_ctx: int = Field(2048, ge=128, le=131072)
    n_threads: int = Field(0, ge=0, le=512)
    load_at_start: bool = False
    max_tokens: int = Field(512, ge=1)
    # Unload after this many seconds unused (frees its RAM / GPU memory); 0: keep it loaded.
    idle_unload_s: float = Field(900, ge=0)

    def threads(self) -> int:
        return self.n_threads or max(1, (os.cpu_count() or 2) - 1)


_AZURE_DEPLOYMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CloudEndpoint(_Section):
    name: str = Field(pattern=_NAME)
    # "openai": any OpenAI-compatible API; "azure": Azure OpenAI (deployments, api-key header).
    kind: Literal["openai", "azure"] = "openai"
    base_url: str = Field(pattern=r"^https?://")
    models: tuple[str, ...] = Field(min_length=1)
    # genai-prices provider; kind "azure" defaults to "azure" (whose table falls back to OpenAI's).
    provider_id: str = ""
    api_key_env: str = ""
    # Azure only: the REST API version (required), and model name -> deployment name where the
    # deployment is not named after the model.
    api_version: str = Field("", pattern=r"^[A-Za-z0-9._-]*$")
    deployments: dict[str, str] = {}
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    retry_base_s: float = Field(0.5, ge=0)
    retry_max_wait_s: float = Field(30.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _azure_price_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "azure" and not data.get("provider_id"):
            return {**data, "provider_id": "azure"}
        return data

    @model_validator(mode="after")
    def _azure_settings(self) -> CloudEndpoint:
        if self.kind != "azure":
            if self.api_version or self.deployments:
                raise ValueError(f'endpoint {self.name!r}: api_version and deployments apply to kind = "azure" only')
            return self
        if not self.api_version:
            raise ValueError(
                f'endpoint {self.name!r} has kind = "azure": set api_version (e.g. "2024-10-21"), '
                "the Azure OpenAI REST API version its deployments accept"
            )
        if self.base_url.rstrip("/").endswith("/openai"):
            raise ValueError(
                f"endpoint {self.name!r}: base_url is the Azure resource's URL "
                "(https://RESOURCE.openai.azure.com), without /openai"
            )
        if unknown := sorted(set(self.deployments) - set(self.models)):
            raise ValueError(f"endpoint {self.name!r}: deployments names models it does not serve: {unknown}")
        for model in self.models:
            if not _AZURE_DEPLOYMENT.match(self.deployment(model)):
                raise ValueError(
                    f"endpoint {self.name!r}: {self.deployment(model)!r} is not an Azure deployment name; "
                    f'map the model to its deployment: deployments = {{"{model}" = "DEPLOYMENT"}}'
                )
        return self

    def deployment(self, model: str) -> str:
        """Azure: the deployment that serves `model` (by default, the one named after it)."""
        return self.deployments.get(model, model)


class MetricsSection(_Section):
    """Prometheus metrics at GET /metrics (an admin token is required, like any spend report)."""

    enabled: bool = True
    # A per-user label on the spend counter: one series per user. Off by default so a large
    # fleet's cardinality stays bounded (department, feature and model only).
    user_label: bool = False


class TelemetrySection(_Section):
    """OpenTelemetry: GenAI spans and metrics exported over OTLP/HTTP; off while the endpoint is empty."""

    otlp_endpoint: str = Field("", pattern=r"^(https?://.+)?$")  # e.g. http://127.0.0.1:4318
    headers: dict[str, str] = {}  # sent with every export (a collector's auth header)
    service_name: str = Field("aifinops-agent", min_length=1)
    # Prompt and answer text on the spans (gen_ai.input.messages / gen_ai.output.messages).
    capture_content: bool = False
    export_timeout_s: float = Field(5.0, gt=0, le=60)
    metrics_interval_s: float = Field(60.0, ge=1)
    max_queue: int = Field(2048, ge=16)  # spans waiting for export; beyond it new spans are dropped


class LoggingSection(_Section):
    """The agent's log file (agent.log in the log folder); the level is agent.log_level."""

    format: Literal["text", "json"] = "text"  # json: one JSON object per line
    max_bytes: int = Field(5_000_000, ge=10_000)  # rotate at this size
    backups: int = Field(3, ge=0, le=100)  # rotated files kept


class LocalEngine(_Section):
    """An OpenAI-compatible inference server on this box or the local network (llama.cpp's
    llama-server, vLLM, Ollama) whose models serve like the in-process ones: the local tier,
    priced by the time the engine spends on each request, not by tokens."""

    name: str = Field(pattern=_NAME)
    base_url: str = Field(pattern=r"^https?://")  # its OpenAI API root, e.g. http://127.0.0.1:8080/v1
    models: tuple[str, ...] = Field(min_length=1)  # the names clients use (and the engine knows)
    api_key_env: str = ""  # llama-server --api-key, vLLM --api-key: the variable holding it
    # What an hour of the engine costs (its share of the box or GPU). Empty: pricing.local_usd_per_hour.
    usd_per_hour: Decimal | None = Field(None, ge=0)
    # Requests the engine serves at once (llama-server --parallel, vLLM max_num_seqs): while N
    # run together each is charged 1/N of the hour rate for its time.
    parallel: int = Field(1, ge=1, le=4096)
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(1, ge=0, le=10)

    def endpoint(self) -> CloudEndpoint:
        """The wire settings of the engine, spoken like any OpenAI-compatible endpoint."""
        return CloudEndpoint(
            name=self.name,
            base_url=self.base_url,
            models=self.models,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
        )


class Settings(_Section):
    agent: AgentSection = AgentSection()
    models: ModelsSection = ModelsSection()
    share: ShareSection = ShareSection()
    cache: CacheSection = CacheSection()
    tiers: TiersSection = TiersSection()
    routing: RoutingSection = RoutingSection()
    optimizer: OptimizerSection = OptimizerSection()
    pricing: PricingSection = PricingSection()
    budgets: BudgetsSection = BudgetsSection()
    fleet: FleetSection = FleetSection()
    gpu: GpuSection = GpuSection()
    metrics: MetricsSection = MetricsSection()
    telemetry: TelemetrySection = TelemetrySection()
    logging: LoggingSection = LoggingSection()
    local_models: tuple[LocalModelConfig, ...] = (LocalModelConfig(),)
    cloud: tuple[CloudEndpoint, ...] = ()
    local_engines: tuple[LocalEngine, ...] = ()
    # Filled in by load_settings, not from the file.
    paths: Paths = Field(default_factory=Paths.resolve, exclude=True)
    config_file: Path | None = Field(default=None, exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @property
    def models_dir(self) -> Path:
        return Path(self.models.dir).expanduser() if self.models.dir else self.paths.default_models_dir

    @property
    def share_dir(self) -> Path | None:
        return Path(self.share.path).expanduser() if self.share.path else None

    @field_validator("local_models", "cloud", "local_engines")
    @classmethod
    def _unique_names(cls, items: tuple[Any, ...]) -> tuple[Any, ...]:
        names = [item.name for item in items]
        if len(names) != len(set(names)):
            raise ValueError(f"names must be unique, got {names}")
        return items


def default_config_text() -> str:
    return resources.files("agent").joinpath("default_config.toml").read_text(encoding="utf-8")


def write_default_config(path: Path) -> bool:
    """Write the commented default config if there is none. Returns True when written."""
    if path.exists():
        return False
    # The line ends text mode wrote (CRLF on Windows, where the user opens it in Notepad).
    write_atomic(path, default_config_text().replace("\n", os.linesep).encode("utf-8"))
    return True


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    aliases = {"AIFINOPS_HOST": ("agent", "host"), "AIFINOPS_PORT": ("agent", "port")}
    for key, raw in environ.items():
        if key in aliases:
            section, name = aliases[key]
        else:
            match = re.fullmatch(r"AIFINOPS_([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
            if not match:
                continue
            section, name = match.group(1).lower(), match.group(2).lower()
        out.setdefault(section, {})[name] = _parse_env_value(raw)
    return out


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    *,
    home: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build Settings from every layer. Raises ConfigError with the offending key."""
    environ = dict(os.environ if environ is None else environ)
    paths = Paths.resolve(home or environ.get("AIFINOPS_HOME") or None)
    file = Path(config_file or environ.get("AIFINOPS_CONFIG") or paths.config_file)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file}: not valid TOML: {e}") from e
        except OSError as e:
            raise ConfigError(f"{file}: cannot be read: {e}") from e
    elif config_file:
        raise ConfigError(f"{file}: no such config file")
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, overrides or {})
    try:
        return Settings.model_validate({**data, "paths": paths, "config_file": file})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid configuration ({file}): {problems}") from e
