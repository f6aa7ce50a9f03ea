"""`aifinops doctor`: what this machine has, and what to fix. Read-only; never raises."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.models.catalog import find_asset
from agent.models.store import ModelStore
from agent.settings import Settings

if TYPE_CHECKING:
    from agent.api.client import AgentClient

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    area: str
    level: Level
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class RunningAgent:
    """What the agent that answers says, asked with this user's token."""

    version: str  # "aifinops 0.1.0"
    user: str | None = None  # who the token is, when the agent accepts it
    policy_version: int | None = None  # the policy that agent applies (None: none yet)
    token_problem: str = ""  # why the agent did not answer for this token
    fleet_budgets: tuple[str, ...] = ()  # one line per fleet-wide budget of yours: allotment, fleet spend
    fleet_problem: str = ""  # why the share's budget leases cannot be used, and the rule meanwhile


def running_agent(client: AgentClient) -> RunningAgent | None:
    """Ask the agent that answers who we are to it and which policy it applies."""
    from agent.errors import AIFinOpsError

    info = client.info()
    if info is None:
        return None
    version = f"{info.name} {info.version}"
    try:
        me = client.me()
        report = client.budgets(False)
    except AIFinOpsError as e:
        return RunningAgent(version, token_problem=f"it does not answer for your token: {e.message}")
    lines, problem = [], ""
    for b in report.budgets:
        if b.fleet is None:
            continue
        problem = problem or b.fleet.problem
        spent, hosts = b.fleet.fleet_spent_usd, b.fleet.hosts
        fleet = "fleet spend not read yet" if spent is None else f"the fleet spent {spent} USD on {hosts} host(s)"
        lines.append(
            f"{b.name} ({b.subject}): this box may spend {b.fleet.allotted_usd} of {b.amount_usd} USD; {fleet}"
        )
    return RunningAgent(version, me.user, report.policy_version, fleet_budgets=tuple(lines), fleet_problem=problem)


def run_checks(settings: Settings, agent: RunningAgent | None) -> list[Check]:
    return [check for group in iter_checks(settings, lambda: agent) for check in group]


def iter_checks(settings: Settings, find_agent: Callable[[], RunningAgent | None]) -> Iterator[list[Check]]:
    """The checks, a group at a time, so that a terminal shows the first ones at once (the later
    ones load the runtimes and ask the agent)."""
    yield _paths(settings)
    yield _models(settings)
    yield _runtimes()
    yield _gpu()
    yield _share(settings)
    yield _cloud(settings)
    yield _local_engines(settings)
    yield _routing(settings)
    yield _cache_verifier(settings)
    agent = find_agent()
    yield _policy(settings, agent)
    yield _alerts(settings)
    yield _identity(settings)
    if agent is None:
        yield [Check("agent", "warn", "not reachable", "start it: aifinops agent run")]
    elif agent.token_problem:
        fix = f"ask an admin for a token (aifinops users token NAME) and put it in {settings.paths.token_file}"
        yield [Check("agent", "fail", f"running: {agent.version}, but {agent.token_problem}", fix)]
    else:
        yield [Check("agent", "ok", f"running: {agent.version}, answering you as {agent.user}"), *_fleet_budgets(agent)]


def _fleet_budgets(agent: RunningAgent) -> list[Check]:
    """Department and organisation budgets counted across the fleet, as the agent holds them."""
    out = [Check("budgets", "ok", line) for line in agent.fleet_budgets]
    if agent.fleet_problem:
        fix = "make <share>/fleet writable to the agent (docs/ADMIN.md, Fleet-wide budgets)"
        out.append(Check("budgets", "warn", agent.fleet_problem, fix))
    return out


def _paths(settings: Settings) -> list[Check]:
    p = settings.paths
    out = [
        Check(
            "paths",
            "ok",
            f"config {p.config_file}" + ("" if p.config_file.exists() else " (not written yet)"),
        ),
        Check("paths", "ok", f"data {p.data_dir}; logs {p.log_dir}; cache {p.cache_dir}"),
        Check("paths", "ok", f"models {settings.models_dir}"),
    ]
    ledger = p.ledger_file
    if ledger.exists():
        readable = os.access(ledger, os.R_OK | os.W_OK)
        out.append(
            Check(
                "ledger",
                "ok" if readable else "fail",
                f"{ledger}",
                "" if readable else "run as the user that owns the ledger",
            )
        )
    else:
        out.append(Check("ledger", "warn", f"{ledger} does not exist yet", "aifinops agent run creates it"))
    return out


def _models(settings: Settings) -> list[Check]:
    store = ModelStore(settings.models_dir, settings.share_dir)
    out = []
    for status in store.statuses():
        if status.verified:
            how = "in the bundle, sha256 verified at build time" if status.bundled else "sha256 verified"
            out.append(Check("model", "ok", f"{status.asset.name}: {status.path} ({how})"))
        else:
            what = "present but not verified" if status.present else "missing"
            out.append(
                Check(
                    "model",
                    "warn",
                    f"{status.asset.name}: {what}",
                    f"aifinops models pull {status.asset.name}",
                )
            )
    for local in settings.local_models:
        if find_asset(local.model) is None and not os.path.isfile(local.model):
            out.append(
                Check(
                    "model",
                    "fail",
                    f"local model {local.name!r}: {local.model} not found",
                    "set local_models.model to a catalogue name or a .gguf path",
                )
            )
    return out


def _runtimes() -> list[Check]:
    out = []
    if importlib.util.find_spec("llama_cpp"):
        import llama_cpp

        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        out.append(Check("llama.cpp", "ok", f"llama-cpp-python {llama_cpp.__version__}, GPU offload: {gpu}"))
    else:
        out.append(Check("llama.cpp", "fail", "llama-cpp-python is not installed", "make setup"))
    flavours = [d for d in ("onnxruntime", "onnxruntime-gpu") if _installed(d)]
    if len(flavours) > 1:
        out.append(
            Check(
                "onnxruntime",
                "fail",
                "both onnxruntime and onnxruntime-gpu are installed: they overwrite each other",
                "pip uninstall -y onnxruntime onnxruntime-gpu, then install one",
            )
        )
    elif flavours:
        import onnxruntime

        providers = ", ".join(onnxruntime.get_available_providers())
        out.append(Check("onnxruntime", "ok", f"{flavours[0]} {onnxruntime.__version__}: {providers}"))
    else:
        out.append(Check("onnxruntime", "warn", "not installed (embeddings need it)", "pip install 'aifinops[cpu]'"))
    return out


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _gpu() -> list[Check]:
    from native.nvml import probe

    status = probe()
    if not status.available:
        return [Check("gpu", "ok", f"no NVIDIA GPU: running without GPU tracking ({status.error})")]
    names = ", ".join(f"#{g.index} {g.name}" for g in status.gpus) or "no GPUs"
    return [Check("gpu", "ok", f"NVML driver {status.driver_version}: {names}")]


def _share(settings: Settings) -> list[Check]:
    share = settings.share_dir
    if share is None:
        return [Check("share", "ok", "no central share configured (local config only)")]
    if not share.is_dir():
        return [Check("share", "fail", f"{share} is not reachable", "mount the share or fix share.path")]
    if not os.access(share, os.R_OK):
        return [Check("share", "fail", f"{share} is not readable by this user")]
    return [Check("share", "ok", f"{share} is reachable")]


def _cloud(settings: Settings) -> list[Check]:
    from agent.providers.keys import key_source

    if not settings.cloud:
        return [Check("cloud", "ok", "no cloud endpoints configured (local models only)")]
    return [
        Check("cloud", "ok", f"{e.name}: {e.base_url} models {', '.join(e.models)}; key: {key_source(e)}")
        for e in settings.cloud
    ]


def _local_engines(settings: Settings) -> list[Check]:
    """Each [[local_engines]] entry answers its /models, and serves the models it is named for."""
    import httpx

    from agent.providers.keys import resolve_api_key

    out = []
    for engine in settings.local_engines:
        key = resolve_api_key(engine.endpoint())
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        where = f"{engine.name}: {engine.base_url}"
        try:
            answer = httpx.get(engine.base_url.rstrip("/") + "/models", headers=headers, timeout=3)
            answer.raise_for_status()
            served = {m.get("id") for m in answer.json().get("data", []) if isinstance(m, dict)}
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            fix = "start the engine, or fix local_engines.base_url (its OpenAI root, ending in /v1)"
            out.append(Check("engine", "fail", f"{where} does not answer GET /models ({type(e).__name__})", fix))
            continue
        missing = [m for m in engine.models if m not in served]
        if missing:
            # llama-server answers any name with its one model; vLLM and Ollama need the exact one.
            shown = ", ".join(sorted(str(m) for m in served)) or "none"
            fix = "name the engine's models in local_engines.models (or start the engine with them)"
            out.append(Check("engine", "warn", f"{where} does not list {', '.join(missing)} (it lists {shown})", fix))
        else:
            out.append(Check("engine", "ok", f"{where} serves {', '.join(engine.models)}"))
    return out


def _routing(settings: Settings) -> list[Check]:
    """The tiers "auto" routes between, and whether the trained difficulty model loads."""
    from agent.routing.artifact import build_router_model
    from agent.routing.router import TIERS

    if not settings.routing.enabled:
        return [Check("router", "ok", f"routing off: auto means {settings.agent.default_model}")]
    configured = {e.name: e for e in settings.cloud}
    known = {m.name for m in settings.local_models} | {m for e in configured.values() for m in e.models}
    known |= {m for e in settings.local_engines for m in e.models}
    tiers = {t: getattr(settings.tiers, t) for t in TIERS if getattr(settings.tiers, t)}
    unknown = [f"tiers.{t} = {m!r}" for t, m in tiers.items() if m not in known]
    if unknown:
        return [Check("router", "fail", f"{', '.join(unknown)}: no such model configured", "fix [tiers]")]
    model, problem = build_router_model(settings)
    shown = ", ".join(f"{t}: {m}" for t, m in tiers.items()) or "none"
    if model is None:
        fix = "retrain it (aifinops router train) or clear routing.artifact"
        return [Check("router", "warn", f"tiers {shown}; {problem}: routing by rules", fix)]
    cascade = f"; cascade to {settings.routing.cascade_to}" if settings.routing.cascade else ""
    return [Check("router", "ok", f"tiers {shown}; difficulty model loaded{cascade}")]


def _cache_verifier(settings: Settings) -> list[Check]:
    """Whether the cache's verifier is intact, and what cache.min_precision means with it."""
    import hashlib

    from agent.cache.verifier import VerifierArtifact
    from agent.errors import ModelError

    cache = settings.cache
    if not cache.enabled:
        return []
    if not cache.verifier:
        floor = cache.threshold if cache.threshold is not None else 0.88
        return [Check("cache", "warn", f"verifier off: similarity >= {floor} and the guard decide",
                      "set cache.verifier = true (fewer wrong answers served)")]  # fmt: skip
    try:
        artifact = VerifierArtifact.load()
        intact = hashlib.sha256(artifact.onnx_path.read_bytes()).hexdigest() == artifact.onnx_sha256
    except (ModelError, OSError) as e:
        return [Check("cache", "fail", f"the verifier cannot load ({e}): only exact matches are served", "reinstall")]
    if not intact:
        return [Check("cache", "fail", f"{artifact.onnx_path} is damaged: only exact matches are served", "reinstall")]
    threshold = artifact.calibration.threshold_for(cache.min_precision)
    precision, recall = artifact.calibration.at(threshold)
    return [Check("cache", "ok", f"verifier intact; min_precision {cache.min_precision}: score >= {threshold:.3f} "
                  f"(measured on unseen pairs: precision {precision:.3f}, recall {recall:.3f})")]  # fmt: skip


def _policy(settings: Settings, agent: RunningAgent | None) -> list[Check]:
    """The policy in force and whether the share's copy would apply. In force: what the running
    agent says (on a shared box its ledger is not this user's), else the ledger's last good one."""
    from agent.errors import AIFinOpsError
    from agent.policy.sync import read_published

    out: list[Check] = []
    if agent is not None and agent.user is not None:
        current = agent.policy_version
        in_force = "none yet" if current is None else f"version {current}"
        out.append(Check("policy", "ok", f"in force at the running agent: {in_force}"))
    else:
        current, check = _policy_in_ledger(settings)
        out.append(check)
    share = settings.share_dir
    if share is None:
        return out
    try:
        published = read_published(share, settings.share.public_keys, settings.share.read_timeout_s)
    except AIFinOpsError as e:
        fix = "publish with aifinops policy publish; check share.public_keys"
        return [*out, Check("policy", "fail", f"the share's policy cannot be applied: {e.message}", fix)]
    newer = current is None or published.policy.version > current
    state = "newer: applies at the next sync" if newer else "in force"
    return [
        *out,
        Check("policy", "ok", f"share: version {published.policy.version}, signed by {published.key_id} ({state})"),
    ]


def _policy_in_ledger(settings: Settings) -> tuple[int | None, Check]:
    """The last good policy this home's ledger applied (no agent answered for us to ask)."""
    from agent.errors import AIFinOpsError
    from agent.ledger.policies import last_good_in

    try:
        applied = last_good_in(settings.paths.ledger_file)
    except AIFinOpsError as e:
        return None, Check("policy", "warn", f"cannot read the applied policy: {e.message}")
    if applied is None:
        return None, Check("policy", "ok", "no policy received yet: running on the local config's defaults")
    detail = f"version {applied.version} ({applied.sha256[:12]}) applied {applied.applied_at}"
    return applied.version, Check("policy", "ok", detail)


def _alerts(settings: Settings) -> list[Check]:
    """The alert outbox in this home's ledger: the oldest alert still waiting, the last failure."""
    from agent.errors import AIFinOpsError
    from agent.ledger.database import Database

    ledger = settings.paths.ledger_file
    if not ledger.exists():
        return []
    try:
        db = Database.open(ledger)
        try:
            pending = db.query(
                "SELECT count(*) AS n, min(e.ts) AS oldest, max(d.last_error) AS error FROM deliveries d "
                "JOIN events e ON e.id = d.event_id WHERE d.state = 'pending'"
            )[0]
            failed = db.query(
                "SELECT count(*) OVER () AS n, finished_at, last_error, channel FROM deliveries "
                "WHERE state = 'failed' ORDER BY finished_at DESC LIMIT 1"
            )
            delivered = db.query("SELECT count(*) AS n FROM deliveries WHERE state = 'delivered'")[0]["n"]
        finally:
            db.close()
    except AIFinOpsError as e:
        return [Check("alerts", "warn", f"cannot read the alert outbox: {e.message}")]
    out = []
    if pending["n"]:
        why = f" (last error: {pending['error']})" if pending["error"] else ""
        out.append(Check("alerts", "warn", f"{pending['n']} alert(s) waiting for delivery, the oldest since "
                                           f"{str(pending['oldest'])[:19]}{why}", "aifinops alerts list"))  # fmt: skip
    if failed:
        last = failed[0]
        out.append(Check("alerts", "warn", f"{last['n']} alert(s) not delivered; the last to the {last['channel']} "
                                           f"channel at {str(last['finished_at'])[:19]}: {last['last_error']}",
                         "aifinops alerts list; check the receiver, then the policy's alert channels"))  # fmt: skip
    if not out:
        out.append(Check("alerts", "ok", f"{delivered} alert(s) delivered, none waiting" if delivered
                         else "no alert posted anywhere yet"))  # fmt: skip
    return out + _alert_secrets(ledger)


def _alert_secrets(ledger: Path) -> list[Check]:
    """Whether each secret the applied policy's channels name resolves here (in this shell: the
    agent's service may have another environment and keyring; `aifinops alerts test` asks it)."""
    from agent.alerts.secrets import SecretMissing, resolve
    from agent.errors import AIFinOpsError
    from agent.ledger.policies import last_good_in
    from agent.policy.model import parse_policy

    try:
        applied = last_good_in(ledger)
        policy = parse_policy(applied.body) if applied is not None else None
    except AIFinOpsError:
        return []  # said by the policy check
    out = []
    for channel in policy.alerts.channels if policy is not None else ():
        for what, reference in (("URL", channel.url_reference), ("SMTP password", channel.password_secret)):
            if reference is None:
                continue
            try:
                resolve(reference)
            except SecretMissing as e:
                source, _, name = reference.partition(":")
                fix = f"as the agent's user: aifinops alerts set-secret {name}" if source == "keyring" else \
                    "set it in the agent service's environment (docs/ADMIN.md, Alert delivery)"  # fmt: skip
                out.append(Check("alerts", "warn", f"channel {channel.name}: its {what} ({reference}): {e}", fix))
            else:
                out.append(Check("alerts", "ok", f"channel {channel.name}: its {what} comes from {reference} (found)"))
    return out


def _identity(settings: Settings) -> list[Check]:
    token_file = settings.paths.token_file
    if not token_file.exists():
        return [
            Check(
                "token",
                "warn",
                f"no token file at {token_file}",
                "the first `aifinops agent run` writes it, or use AIFINOPS_TOKEN",
            )
        ]
    mode = stat.S_IMODE(token_file.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        return [
            Check(
                "token",
                "fail",
                f"{token_file} is readable by others ({oct(mode)})",
                f"chmod 600 {token_file}",
            )
        ]
    return [Check("token", "ok", f"{token_file} (owner-only)")]
