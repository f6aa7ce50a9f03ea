"""The agent's Prometheus metrics (``GET /metrics``), one registry per agent.

Counters and histograms are fed from the ledger rows as they are written (so they agree with the
ledger), from refusals, model loads and GPU minutes; budgets and the policy are read when
scraped. Labels are bounded: department, feature, model, route, tier, status; a per-user label
only when ``[metrics] user_label`` is on. Money is in USD (Prometheus' base unit convention); the
exact micro-USD figures stay in the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agent.budgets.enforcer import BudgetStatus
    from agent.ledger.requests import RequestRecord

MICRO = 1_000_000
# Seconds: local answers take seconds, cloud ones up to a minute; the agent's own work is sub-ms.
# (version in force or None, Unix time of the last successful read of the share or None)
PolicyState = tuple[int | None, float | None]
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, *, user_label: bool = False) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: noise to a scraper
        self.registry = CollectorRegistry(auto_describe=False)
        self.user_label = user_label
        r = self.registry
        spend_labels = ["department", "feature", "model", *(["user"] if user_label else [])]
        self.requests = Counter("aifinops_requests", "Requests answered or failed, by how they were served",
                                ["route", "tier", "model", "status"], registry=r)  # fmt: skip
        self.tokens = Counter("aifinops_tokens", "Tokens read and written by models", ["direction", "model"],
                              registry=r)  # fmt: skip
        self.spend = Counter("aifinops_spend_usd", "Money spent (USD; the ledger has the exact micro-USD)",
                             spend_labels, registry=r)  # fmt: skip
        self.unpriced = Counter("aifinops_unpriced_requests", "Requests whose price is unknown", ["model"],
                                registry=r)  # fmt: skip
        self.savings = Counter("aifinops_savings_usd", "Money saved, by the cache and by prompt compression",
                               ["kind", "department"], registry=r)  # fmt: skip
        self.cache = Counter("aifinops_cache_lookups", "Semantic cache lookups by result (hit, miss, bypass)",
                             ["result"], registry=r)  # fmt: skip
        self.router = Counter("aifinops_router_decisions", "Requests for model auto, by the tier that answered",
                              ["tier"], registry=r)  # fmt: skip
        self.refused = Counter("aifinops_refused_requests", "Requests refused before any model ran, by error type",
                               ["reason"], registry=r)  # fmt: skip
        self.duration = Histogram("aifinops_request_duration_seconds", "Time from request to the last byte",
                                  ["route", "stream"], buckets=DURATION_BUCKETS, registry=r)  # fmt: skip
        self.ttft = Histogram("aifinops_time_to_first_token_seconds", "Streams: time to the first answer token",
                              ["route"], buckets=DURATION_BUCKETS, registry=r)  # fmt: skip
        self.model_loads = Counter("aifinops_model_loads", "Local model loads", ["model"], registry=r)
        self.model_unloads = Counter("aifinops_model_unloads", "Local model unloads after idling", ["model"],
                                     registry=r)  # fmt: skip
        self.model_load_seconds = Histogram("aifinops_model_load_seconds", "Time to load a local model",
                                            ["model"], buckets=DURATION_BUCKETS, registry=r)  # fmt: skip
        self.model_loaded = Gauge("aifinops_model_loaded", "1 while the local model is in memory", ["model"],
                                  registry=r)  # fmt: skip
        self.gpu_seconds = Counter("aifinops_gpu_seconds", "GPU time sampled, busy or idle", ["gpu", "state"],
                                   registry=r)  # fmt: skip
        self.gpu_cost = Counter("aifinops_gpu_cost_usd", "GPU time charged (USD), busy or idle", ["gpu", "state"],
                                registry=r)  # fmt: skip

    # -- fed by the agent ------------------------------------------------------------------------

    def request(self, row: RequestRecord, cache_status: str | None, routed: bool) -> None:
        """One ledger row, as it is written (chat, completions, responses, embeddings)."""
        self.requests.labels(row.route, row.tier, row.model, row.status).inc()
        if row.input_tokens:
            self.tokens.labels("input", row.model).inc(row.input_tokens)
        if row.output_tokens:
            self.tokens.labels("output", row.model).inc(row.output_tokens)
        if row.cost_micro_usd is None:
            self.unpriced.labels(row.model).inc()
        elif row.cost_micro_usd:
            labels = [row.department, row.feature, row.model, *([row.user_name] if self.user_label else [])]
            self.spend.labels(*labels).inc(row.cost_micro_usd / MICRO)
        if row.cost_saved_micro_usd:
            kind = "cache" if row.cache_hit else "compression"
            self.savings.labels(kind, row.department).inc(row.cost_saved_micro_usd / MICRO)
        if cache_status is not None:
            self.cache.labels(cache_status).inc()
        if routed:
            self.router.labels(row.tier or row.route).inc()
        self.duration.labels(row.route, "true" if row.stream else "false").observe(row.latency_ms / 1000)

    def refusal(self, error_type: str) -> None:
        self.refused.labels(error_type).inc()

    def first_token(self, route: str, seconds: float) -> None:
        self.ttft.labels(route).observe(seconds)

    def model_load(self, model: str, seconds: float) -> None:
        self.model_loads.labels(model).inc()
        self.model_load_seconds.labels(model).observe(seconds)
        self.model_loaded.labels(model).set(1)

    def model_unload(self, model: str) -> None:
        self.model_unloads.labels(model).inc()
        self.model_loaded.labels(model).set(0)

    def gpu_minute(self, gpu: int, busy_s: float, idle_s: float, busy_micro_usd: int, idle_micro_usd: int) -> None:
        label = str(gpu)
        self.gpu_seconds.labels(label, "busy").inc(busy_s)
        self.gpu_seconds.labels(label, "idle").inc(idle_s)
        self.gpu_cost.labels(label, "busy").inc(busy_micro_usd / MICRO)
        self.gpu_cost.labels(label, "idle").inc(idle_micro_usd / MICRO)

    def watch(self, budgets: Callable[[], Iterable[BudgetStatus]], policy: Callable[[], PolicyState]) -> None:
        """Budgets and the policy, read when scraped."""
        self.registry.register(_StateCollector(budgets, policy))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, budgets: Callable[[], Iterable[BudgetStatus]], policy: Callable[[], PolicyState]) -> None:
        self._budgets, self._policy = budgets, policy

    def collect(self) -> Iterator[Metric]:
        labels = ["budget", "scope", "subject", "period"]
        amount = GaugeMetricFamily("aifinops_budget_amount_usd", "A budget's amount for its period", labels=labels)
        spent = GaugeMetricFamily("aifinops_budget_spent_usd", "Spent against a budget this period", labels=labels)
        held = GaugeMetricFamily("aifinops_budget_held_usd", "Held by requests in flight", labels=labels)
        remaining = GaugeMetricFamily("aifinops_budget_remaining_usd", "Left in a budget this period", labels=labels)
        for b in self._budgets():
            key = [b.name, b.scope, b.subject, b.period]
            amount.add_metric(key, b.amount_micro_usd / MICRO)
            spent.add_metric(key, b.spent_micro_usd / MICRO)
            held.add_metric(key, b.reserved_micro_usd / MICRO)
            remaining.add_metric(key, b.remaining_micro_usd / MICRO)
        yield from (amount, spent, held, remaining)
        version, synced = self._policy()
        policy_version = GaugeMetricFamily("aifinops_policy_version", "Version of the policy in force (0: none)")
        policy_version.add_metric([], version or 0)
        yield policy_version
        last = GaugeMetricFamily(
            "aifinops_policy_last_sync_timestamp_seconds",
            "When the share's policy was last read successfully (Unix time; 0: never)",
        )
        last.add_metric([], synced or 0)
        yield last
