"""Composition root: builds every service from Settings, starts and stops them.

Nothing here runs at import; ``Services.open()`` does the I/O (folders, ledger, first-run
provisioning). ``agent.app.build_asgi_app()`` wires the HTTP layer to them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from agent import __version__
from agent.alerts.outbox import Outbox
from agent.budgets.calibration import InputCalibration
from agent.budgets.enforcer import BudgetEnforcer
from agent.budgets.fleet import FleetBudgets
from agent.budgets.runaway import RunawayWatch
from agent.bundle import direct_numba_cache
from agent.cache.service import SemanticCache
from agent.cache.verifier import PairVerifier, VerifierArtifact
from agent.embedding_gateway import EmbeddingGateway
from agent.errors import ConfigError
from agent.gateway import Gateway
from agent.gpu.attribution import ActivityLog
from agent.gpu.cost import GpuPricing
from agent.gpu.sampler import GpuSampler
from agent.identity import Identity
from agent.ledger.cache_entries import CacheEntries
from agent.ledger.database import Database
from agent.ledger.events import EventLog
from agent.ledger.gpu import GpuLedger
from agent.ledger.policies import PolicyStore
from agent.ledger.preferences import Preferences
from agent.ledger.requests import RequestLog
from agent.ledger.users import UserStore
from agent.models.store import ModelStore
from agent.observability.telemetry import OFF, Telemetry
from agent.optimizer import PromptOptimizer
from agent.policy.sync import PolicySync
from agent.pricing.prices import PriceBook
from agent.pricing.tokens import warm_up as warm_up_tokens
from agent.providers.local_embeddings import LocalEmbeddingProvider
from agent.providers.local_llama import LocalLlamaProvider
from agent.providers.onnx_embedder import OnnxEmbedder
from agent.providers.registry import ProviderRegistry
from agent.routing.artifact import build_router_model
from agent.routing.router import TIERS, Router, Tier
from agent.settings import Settings, write_default_config
from native.nvml import GpuSource, NvmlSource, TraceReplay, probe

if TYPE_CHECKING:
    from agent.fleet.publisher import FleetPublisher
    from agent.policy.model import Policy

log = logging.getLogger(__name__)

_FIRST_PUBLISH_DELAY_S = 5.0
_FORECAST_EVERY_S = 600.0  # how often budget forecasts are checked for a coming breach
_FIRST_FORECAST_DELAY_S = 60.0


@dataclass
class Services:
    settings: Settings
    db: Database
    identity: Identity
    requests: RequestLog
    store: ModelStore
    registry: ProviderRegistry
    gateway: Gateway
    cache: SemanticCache | None
    optimizer: PromptOptimizer
    events: EventLog
    policy: PolicySync
    enforcer: BudgetEnforcer
    scheduler: BackgroundScheduler
    gpu_ledger: GpuLedger
    activity: ActivityLog
    preferences: Preferences
    embeddings: EmbeddingGateway
    gpu_sampler: GpuSampler | None = None
    publisher: FleetPublisher | None = None
    telemetry: Telemetry = OFF
    runaway: RunawayWatch | None = None
    outbox: Outbox | None = None

    @classmethod
    def open(cls, settings: Settings) -> Services:
        settings.paths.ensure()
        # Before the kernels are first imported: a writable, per-user folder (in a bundle too).
        direct_numba_cache(settings.paths.cache_dir / "numba")
        # Only where the config in force is read: with AIFINOPS_CONFIG or --config naming another
        # file (a system service's /etc/aifinops/config.toml), a copy in the home would mislead.
        in_force = settings.config_file or settings.paths.config_file
        if in_force == settings.paths.config_file and write_default_config(in_force):
            log.info("wrote a commented default config to %s", in_force)
        db = Database.open(settings.paths.ledger_file)
        requests = RequestLog(db)
        store = ModelStore(settings.models_dir, settings.share_dir)
        registry = ProviderRegistry.from_settings(settings, store)
        prices = PriceBook(settings.pricing.overrides, settings.pricing.local_usd_per_hour)
        embedder = _shared_embedder(settings, store)
        optimizer = PromptOptimizer(settings.optimizer, store)
        cache = (
            SemanticCache(settings.cache, CacheEntries(db), embedder, verifier=cache_verifier(settings, store))
            if settings.cache.enabled
            else None
        )
        events = EventLog(db)
        share = settings.share
        policy = PolicySync(
            PolicyStore(db), settings.share_dir, share.public_keys, events, timeout_s=share.read_timeout_s
        )
        enforcer = BudgetEnforcer(db, lambda: policy.current, events, fleet=_fleet_budgets(settings))
        runaway = RunawayWatch(db, events, lambda: policy.current)
        outbox = _outbox(settings, db, lambda: policy.current)
        events.on_delivery = outbox.wake
        activity = ActivityLog()
        preferences = Preferences(db)
        calibration = InputCalibration.from_ledger(db)
        telemetry = _telemetry(settings, enforcer, policy)
        for local in registry.local():
            local.on_load = telemetry.model_load
        gateway = Gateway(
            registry,
            prices,
            requests,
            settings.agent.default_model,
            cache,
            router=build_router(settings, registry),
            routing=settings.routing,
            embedder=embedder,
            tiers={tier: getattr(settings.tiers, tier) for tier in TIERS},
            optimizer=optimizer,
            enforcer=enforcer,
            activity=activity,
            cloud_paused=lambda caller: preferences.cloud_paused(caller.user_id),
            calibration=calibration,
            hold_wait_s=settings.budgets.hold_wait_s,
            telemetry=telemetry,
            runaway=runaway,
        )
        embeddings = EmbeddingGateway(
            registry,
            prices,
            requests,
            local=LocalEmbeddingProvider(embedder),
            enforcer=enforcer,
            terms=gateway.terms,
            cloud_paused=lambda caller: preferences.cloud_paused(caller.user_id),
            calibration=calibration,
            hold_wait_s=settings.budgets.hold_wait_s,
            telemetry=telemetry,
        )
        scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        return cls(
            settings,
            db,
            Identity(UserStore(db)),
            requests,
            store,
            registry,
            gateway,
            cache,
            optimizer,
            events,
            policy,
            enforcer,
            scheduler,
            GpuLedger(db),
            activity,
            preferences,
            embeddings=embeddings,
            publisher=_fleet_publisher(settings, db, policy, enforcer),
            telemetry=telemetry,
            runaway=runaway,
            outbox=outbox,
        )

    def provision(self) -> None:
        """Workstation first run: the OS user gets a user row and a 0600 token file."""
        if self.settings.agent.provision_os_user:
            self.identity.provision_os_user(self.settings.paths.token_file)

    @staticmethod
    def _logged(job: Callable[[], object], what: str) -> Callable[[], None]:
        """A scheduler job that logs a failure: the agent stays up, and the next run tries again."""

        def run() -> None:
            try:
                job()
            except Exception:  # a scheduler thread
                log.exception("%s failed", what)

        return run

    async def start(self) -> None:
        # The last good policy is in force at once; the share is read now and then every interval.
        self.policy.load_last_good()
        log.info("policy: %s", self.policy.status().summary)
        if self.settings.share_dir is not None:
            interval = self.settings.share.sync_interval_s
            self.scheduler.add_job(self.policy.sync_once, "interval", seconds=interval, id="policy-sync",
                                   next_run_time=datetime.now(UTC))  # fmt: skip
        for provider in self.registry.local():
            idle_s = provider.config.idle_unload_s
            if idle_s > 0:  # checked four times per idle period, at most once a minute
                every = min(60.0, max(idle_s / 4, 0.5))
                self.scheduler.add_job(self._unload_if_idle, "interval", seconds=every, args=[provider, idle_s],
                                       id=f"unload-{provider.name}")  # fmt: skip
        self._start_gpu_sampling()
        if self.publisher is not None:
            # The first publish a little after start: the share's policy is applied by then, so the
            # host's summary names the version in force (policy-sync runs at start).
            every = self.settings.fleet.publish_interval_s
            first = datetime.now(UTC) + timedelta(seconds=min(_FIRST_PUBLISH_DELAY_S, every))
            self.scheduler.add_job(self._publish, "interval", seconds=every, id="fleet-publish", next_run_time=first)
        if self.enforcer.fleet is not None:
            every = self.settings.fleet.budget_refresh_s
            self.scheduler.add_job(self.enforcer.refresh_fleet, "interval", seconds=every, id="fleet-budgets")
        # Budget forecasts read the ledger: every few minutes, never on the request path.
        first = datetime.now(UTC) + timedelta(seconds=_FIRST_FORECAST_DELAY_S)
        forecasts = self._logged(self.enforcer.check_forecasts, "checking the budget forecasts")
        self.scheduler.add_job(forecasts, "interval", seconds=_FORECAST_EVERY_S, id="budget-forecasts",
                               next_run_time=first)  # fmt: skip
        # Each user's usual request rate per hour of the week, learned from the ledger now and hourly.
        if self.runaway is not None:
            self.scheduler.add_job(self._logged(self.runaway.refresh, "learning the runaway baselines"), "interval",
                                   seconds=3600, id="runaway-baselines", next_run_time=datetime.now(UTC))  # fmt: skip
        self.db.checkpoint_in_background()  # the WAL copied into the ledger file by a thread, not a request
        self.scheduler.start()
        if self.outbox is not None:  # alerts still pending from before a restart go out now
            self.outbox.start()
        # The o200k vocabulary (about 0.4 s to read): loaded now, not by the first request.
        threading.Thread(target=warm_up_tokens, name="tokens-warm-up", daemon=True).start()
        if self.cache is not None:
            self.cache.load()
            # Load the embedder and compile the similarity kernels now, not on the first request.
            # A daemon thread, not the loop's executor: a stop during a first run's compile (10 s
            # and more on 2 cores) must not wait for it.
            threading.Thread(target=_warm_up, args=(self.cache,), name="cache-warm-up", daemon=True).start()
        for provider in self.registry.local():
            if provider.config.load_at_start:
                # Loads in the model's own thread; a failure is logged, the agent stays up.
                task = asyncio.create_task(provider.load())
                task.add_done_callback(_log_load_failure)

    def _start_gpu_sampling(self) -> None:
        """Every gpu.sample_interval_s: NVML (or a replayed trace) -> minutes, costs, charges."""
        gpu = self.settings.gpu
        if not gpu.enabled:
            return
        if gpu.trace:
            try:
                source: GpuSource = TraceReplay.from_file(gpu.trace)
            except (OSError, ValueError) as e:
                log.error("gpu.trace %s cannot be replayed: %s; GPU tracking off", gpu.trace, e)
                return
        else:
            status = probe()
            if not status.available:
                log.info("no NVIDIA GPU (%s): running without GPU tracking", status.error)
                return
            source = NvmlSource()
        self.gpu_sampler = GpuSampler(
            source,
            self.gpu_ledger,
            GpuPricing.from_settings(gpu),
            self.activity,
            idle_threshold_pct=gpu.idle_threshold_pct,
            max_gap_s=gpu.max_gap_s,
            box_department=gpu.box_department,
            on_minute=self.telemetry.metrics.gpu_minute if self.telemetry.metrics is not None else None,
        )
        self.scheduler.add_job(self.gpu_sampler.tick, "interval", seconds=gpu.sample_interval_s, id="gpu-sample")

    def _publish(self) -> None:
        """One fleet publish; a share that fails is said once per outage, the rows wait."""
        if self.publisher is None:
            return
        failing = self.publisher.status().last_error is not None
        try:
            outcome = self.publisher.publish_once()
        except OSError as e:
            if not failing:
                log.warning("fleet: the share %s did not take this host's rows (%s); they wait in the ledger",
                            self.publisher.host_dir, e)  # fmt: skip
            return
        if failing:
            log.info("fleet: the share takes rows again; caught up %s", outcome.rows)

    def _unload_if_idle(self, provider: LocalLlamaProvider, idle_s: float) -> None:
        unloaded = provider.unload_if_idle(idle_s)
        if unloaded is not None:
            self.telemetry.model_unload(unloaded.model)
            freed = unloaded.memory_freed_bytes
            body = {
                "model": unloaded.model,
                "idle_s": round(unloaded.idle_s, 1),
                "memory_freed_mib": None if freed is None else round(freed / 2**20, 1),
            }
            self.events.add("model_unloaded", body)

    async def stop(self) -> None:
        if self.outbox is not None:
            await asyncio.to_thread(self.outbox.stop)  # what is pending stays in the ledger for the next start
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.gpu_sampler is not None:
            self.gpu_sampler.flush()  # the minutes still open are written too
        await self.registry.close()
        await asyncio.to_thread(self.optimizer.close)  # the lossy step's scoring model, if loaded
        await asyncio.to_thread(self.telemetry.shutdown)  # the last spans, bounded by the export timeout
        self.db.close()


def _telemetry(settings: Settings, enforcer: BudgetEnforcer, policy: PolicySync) -> Telemetry:
    """Prometheus metrics (on by default) and OpenTelemetry (with an OTLP endpoint); each
    library is imported only when its part is on."""
    metrics = tracing = None
    if settings.metrics.enabled:
        from agent.observability.metrics import Metrics

        metrics = Metrics(user_label=settings.metrics.user_label)

        def policy_state() -> tuple[int | None, float | None]:
            current = policy.current
            return (current.version if current else None), policy.last_read_unix

        metrics.watch(lambda: enforcer.all_statuses() if policy.current else [], policy_state)
    if settings.telemetry.otlp_endpoint:
        from agent.fleet.files import host_id
        from agent.observability.tracing import Tracing

        tracing = Tracing(settings.telemetry, __version__, host_id(settings.paths.data_dir))
    return Telemetry(metrics, tracing)


def _fleet_publisher(
    settings: Settings, db: Database, policy: PolicySync, enforcer: BudgetEnforcer
) -> FleetPublisher | None:
    if settings.share_dir is None or not settings.fleet.publish:
        return None  # pyarrow is not even imported
    from agent.fleet.publisher import FleetBudgetTotal, build_publisher

    def version() -> int | None:
        current = policy.current
        return current.version if current else None

    def budgets() -> list[FleetBudgetTotal]:
        return [
            FleetBudgetTotal(
                s.name, s.scope, s.subject, s.period, s.period_key, s.spent_micro_usd, s.reserved_micro_usd
            )
            for s in enforcer.fleet_statuses()
        ]

    return build_publisher(settings, db, budgets=budgets, policy_version=version)


def _fleet_budgets(settings: Settings) -> FleetBudgets | None:
    """Department and organisation budgets across the fleet, through allotments on the share."""
    if settings.share_dir is None or not settings.fleet.budgets:
        return None
    from agent.budgets.fleet import FleetHistory
    from agent.fleet.files import host_id
    from agent.fleet.leases import LeaseBook

    fleet, me = settings.fleet, host_id(settings.paths.data_dir)
    # The fleet's spend history for forecasts; the segments' checksums are cached as the CLI's are.
    history = FleetHistory(settings.share_dir, me, checksum_cache=settings.paths.cache_dir / "fleet-checksums.json")
    return FleetBudgets(
        LeaseBook(settings.share_dir, me),
        chunk=Fraction(fleet.allotment_percent, 100),
        idle_s=fleet.allotment_idle_s,
        history=history,
    )


def _outbox(settings: Settings, db: Database, policy: Callable[[], Policy | None]) -> Outbox:
    """The alert sender; with fleet-wide budgets, fleet alerts are claimed on the share first."""
    from agent.fleet.files import host_id

    me = host_id(settings.paths.data_dir)
    claims = None
    if settings.share_dir is not None and settings.fleet.budgets:
        from agent.fleet.claims import FleetClaims

        claims = FleetClaims(settings.share_dir, me)
    return Outbox(db, policy, origin=me, claims=claims)


def _warm_up(cache: SemanticCache) -> None:
    try:
        cache.warm_up()
    except Exception:  # a thread boundary: the agent stays up, the first lookup loads it again
        log.exception("warming up the semantic cache failed")


def _log_load_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("loading a model at start failed: %s", error)


def _shared_embedder(settings: Settings, store: ModelStore) -> Callable[[], OnnxEmbedder]:
    """One embedding model for the router and the cache, loaded on first use."""
    lock = threading.Lock()
    loaded: list[OnnxEmbedder] = []

    def embedder() -> OnnxEmbedder:
        with lock:
            if not loaded:
                model = store.resolve(settings.cache.embedding_model)
                tokenizer = store.resolve(settings.cache.embedding_tokenizer)
                loaded.append(OnnxEmbedder(model, tokenizer, threads=max(1, (os.cpu_count() or 2) - 1)))
            return loaded[0]

    return embedder


def cache_verifier(settings: Settings, store: ModelStore) -> Callable[[], PairVerifier]:
    """The shipped cache verifier, loaded when the cache first needs it (on the embedder's tokenizer)."""

    def verifier() -> PairVerifier:
        tokenizer = store.resolve(settings.cache.embedding_tokenizer)
        return PairVerifier(VerifierArtifact.load(), tokenizer, threads=max(1, (os.cpu_count() or 2) - 1))

    return verifier


def build_router(settings: Settings, registry: ProviderRegistry) -> Router | None:
    """The router for "auto", or None when routing is off. A tier naming an unknown model is a
    config error; an unreadable artifact is not: the router runs on rules and says so."""
    if not settings.routing.enabled:
        return None
    tiers: dict[Tier, str] = {}
    known = set(registry.model_names())
    for tier in TIERS:
        model = getattr(settings.tiers, tier)
        if model and model not in known:
            raise ConfigError(
                f"tiers.{tier} = {model!r}: no such model is configured (known: {', '.join(sorted(known))})"
            )
        if model:
            tiers[tier] = model
    if not tiers:
        return None
    model, problem = build_router_model(settings)
    return Router(tiers, settings.routing, model, problem)


