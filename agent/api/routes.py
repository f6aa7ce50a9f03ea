"""Thin HTTP handlers over the services: parse, authenticate, call, shape the answer."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agent import __version__
from agent.api import schemas
from agent.api.answer import Event, stream_headers
from agent.api.chat_completions import chat_call, chunk_stream, completion_response
from agent.api.completions import completion_call, text_completion, text_completion_stream
from agent.api.embeddings import embedding_call, embedding_response
from agent.api.errors import error_json
from agent.api.responses import response_call, response_object, response_stream
from agent.budgets.fleet import FleetState
from agent.budgets.forecast import Forecast
from agent.cache.keys import scope_of, visible_scopes
from agent.chat import ChatCall
from agent.errors import InvalidRequest, PermissionDenied, RequestTooLarge
from agent.gateway import ChatResult, Flight
from agent.identity import Caller
from agent.ledger.requests import SPEND_DIMENSIONS, RequestRecord
from agent.money import format_usd
from agent.observability.telemetry import METRICS_CONTENT_TYPE
from agent.timespans import parse_since

if TYPE_CHECKING:
    from agent.services import Services

# An endpoint's shape of a whole answer, and of a streamed one (server-sent events).
WholeAnswer = Callable[[ChatResult], Response]
StreamedAnswer = Callable[[AsyncGenerator[Event, None], Event | None, Flight], AsyncIterator[str]]


def build_routes(services: Services) -> list[Route]:
    api = _Handlers(services)
    return [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/responses", api.responses, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/api/v1/info", api.info, methods=["GET"]),
        Route("/api/v1/me", api.me, methods=["GET"]),
        Route("/api/v1/spend", api.spend, methods=["GET"]),
        Route("/api/v1/requests/{request_id}", api.request_entry, methods=["GET"]),
        Route("/api/v1/cache", api.cache_stats, methods=["GET"]),
        Route("/api/v1/cache", api.cache_clear, methods=["DELETE"]),
        Route("/api/v1/cache/{entry_id:int}/invalidate", api.cache_invalidate, methods=["POST"]),
        Route("/api/v1/budgets", api.budgets, methods=["GET"]),
        Route("/api/v1/events", api.events, methods=["GET"]),
        Route("/api/v1/gpu", api.gpu, methods=["GET"]),
        Route("/api/v1/dashboard", api.dashboard, methods=["GET"]),
        Route("/api/v1/preferences", api.preferences, methods=["POST"]),
        Route("/api/v1/alerts/test", api.alerts_test, methods=["POST"]),
        Route("/api/v1/anomalies", api.anomalies, methods=["GET"]),
        Route("/api/v1/anomalies/{user}", api.anomaly_clear, methods=["DELETE"]),
    ]


class _Handlers:
    def __init__(self, services: Services) -> None:
        self.s = services

    # -- helpers -------------------------------------------------------------------------

    def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return self.s.identity.authenticate(token.strip() if scheme.lower() == "bearer" else None)

    async def body_json(self, request: Request) -> Any:
        limit = self.s.settings.agent.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidRequest("Content-Length is not a number")
            if int(declared) > limit:
                raise RequestTooLarge(f"request body over the {limit}-byte limit")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestTooLarge(f"request body over the {limit}-byte limit")
        try:
            return json.loads(bytes(body).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InvalidRequest(f"request body is not valid UTF-8: {e.reason}") from e
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"request body is not valid JSON: {e.msg} at {e.pos}") from e

    # -- /v1 -------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        caller = self.caller(request)
        call = chat_call(await self.body_json(request), request.headers)
        return await self._answer(caller, call, completion_response, chunk_stream)

    async def completions(self, request: Request) -> Response:
        caller = self.caller(request)
        call = completion_call(await self.body_json(request), request.headers)
        return await self._answer(caller, call, text_completion, text_completion_stream)

    async def responses(self, request: Request) -> Response:
        caller = self.caller(request)
        call, echo = response_call(await self.body_json(request), request.headers)
        return await self._answer(caller, call, partial(response_object, echo=echo),
                                  partial(response_stream, echo=echo))  # fmt: skip

    async def _answer(self, caller: Caller, call: ChatCall, whole: WholeAnswer, stream: StreamedAnswer) -> Response:
        """One chat-shaped call through the gateway: routing, cache, budgets and ledger, then the
        answer in the endpoint's own shape (a JSON body, or server-sent events)."""
        flight = await self.s.gateway.prepare(caller, call)
        if not call.stream:
            return whole(await self.s.gateway.chat(flight))
        events = self.s.gateway.stream(flight)
        try:  # the first event decides between an HTTP error and a 200 stream
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        body = stream(events, first, flight)
        return StreamingResponse(body, media_type="text/event-stream", headers=stream_headers(flight))

    async def embeddings(self, request: Request) -> Response:
        caller = self.caller(request)
        call, encoding = embedding_call(await self.body_json(request), request.headers)
        result = await self.s.embeddings.embed(caller, call)
        return await asyncio.to_thread(embedding_response, result, encoding)  # megabytes of JSON: off the loop

    async def models(self, request: Request) -> Response:
        self.caller(request)
        cards = [schemas.ModelCard(id="auto", owned_by="aifinops")]
        for provider in self.s.registry.providers:
            cards += [schemas.ModelCard(id=m, owned_by=provider.name) for m in provider.models()]
        embedders = self.s.embeddings.models()
        cards += [schemas.ModelCard(id=m, owned_by="aifinops", aifinops_kind="embedding") for m in embedders]
        return _json(schemas.ModelList(data=cards))

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format, for an admin's token (the figures are everyone's spend)."""
        caller = self.caller(request)
        metrics = self.s.telemetry.metrics
        if metrics is None:
            return error_json(404, "not_found_error", "metrics are off on this agent ([metrics] enabled = false)")
        if not caller.is_admin:
            raise PermissionDenied("only admins can read /metrics: it shows every department's spend")
        body = await asyncio.to_thread(metrics.render)  # the budget gauges read the enforcer
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    # -- /api/v1 ---------------------------------------------------------------------------

    async def info(self, _request: Request) -> Response:
        router, routing = self.s.gateway.router, self.s.settings.routing
        if router is None:
            router_info = schemas.RouterInfo(enabled=False)
        else:
            router_info = schemas.RouterInfo(
                enabled=True,
                tiers=dict(router.tiers),
                scoring="model" if router.model is not None else "rules",
                problem=router.model_problem,
                cascade=routing.cascade,
            )
        return _json(schemas.Info(version=__version__, router=router_info))

    async def me(self, request: Request) -> Response:
        caller = self.caller(request)
        department = self.s.enforcer.effective_caller(caller).department
        paused = self.s.preferences.cloud_paused(caller.user_id)
        return _json(schemas.Me(user=caller.user, department=department, admin=caller.is_admin, cloud_paused=paused))

    async def preferences(self, request: Request) -> Response:
        caller = self.caller(request)
        try:
            wanted = schemas.PreferencesIn.model_validate(await self.body_json(request))
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
            )
            raise InvalidRequest(f"invalid preferences: {problems}") from e
        self.s.preferences.set_cloud_paused(caller.user_id, wanted.cloud_paused)
        return await self.me(request)

    async def spend(self, request: Request) -> Response:
        caller = self.caller(request)
        by = request.query_params.get("by", "user")
        if by not in SPEND_DIMENSIONS:
            raise InvalidRequest(f"'by' must be one of {', '.join(SPEND_DIMENSIONS)}")
        since_text = request.query_params.get("since", "30d")
        since = parse_since(since_text)
        rows = self.s.requests.spend(
            by,  # type: ignore[arg-type]
            since.isoformat(timespec="microseconds"),
            None if caller.is_admin else caller.user_id,
        )
        total = sum(r.cost_micro_usd for r in rows)
        out = {
            r.key: schemas.SpendRow(
                key=r.key,
                requests=r.requests,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                cost_usd=format_usd(r.cost_micro_usd),
                cost_micro_usd=r.cost_micro_usd,
                cost_saved_usd=format_usd(r.cost_saved_micro_usd),
                unpriced_requests=r.unpriced_requests,
                failed_requests=r.failed_requests,
                cache_read_tokens=r.cache_read_tokens,
                provider_cache_saved_usd=format_usd(r.provider_cache_saved_micro_usd),
            )
            for r in rows
        }
        # GPU time (busy and idle) charged by the sampler, next to the requests' own cost.
        gpu = self.s.gpu_ledger.spend(by, since, None if caller.is_admin else caller.user)
        for g in gpu:
            row = out.get(g.key) or schemas.SpendRow(
                key=g.key, requests=0, input_tokens=0, output_tokens=0, cost_usd=format_usd(0), cost_micro_usd=0,
                cost_saved_usd=format_usd(0), unpriced_requests=0, failed_requests=0,
            )  # fmt: skip
            out[g.key] = row.model_copy(
                update={"gpu_cost_usd": format_usd(g.cost_micro_usd), "gpu_cost_micro_usd": g.cost_micro_usd}
            )
        gpu_total = sum(g.cost_micro_usd for g in gpu)
        report = schemas.SpendReport(
            by=by,
            since=since.isoformat(),
            scope="all" if caller.is_admin else "own",
            total_cost_usd=format_usd(total),
            total_cost_micro_usd=total,
            unpriced_requests=sum(r.unpriced_requests for r in rows),
            rows=list(out.values()),
            total_gpu_cost_usd=format_usd(gpu_total),
            total_gpu_cost_micro_usd=gpu_total,
        )
        return _json(report)

    async def request_entry(self, request: Request) -> Response:
        caller = self.caller(request)
        record = self.s.requests.get(request.path_params["request_id"])
        # Someone else's row answers exactly like a missing one: no existence oracle.
        if record is None or (record.user_id != caller.user_id and not caller.is_admin):
            return error_json(404, "not_found_error", "no such request")
        return _json(_entry(record))

    # -- /api/v1/budgets and /api/v1/events -------------------------------------------------

    async def budgets(self, request: Request) -> Response:
        caller = self.caller(request)
        everyone = request.query_params.get("all") == "true"
        if everyone and not caller.is_admin:
            raise PermissionDenied("only admins can see every budget")
        feature = request.query_params.get("feature", "")
        # Forecasts read the ledger: in a worker thread, never in the event loop.
        version, entries = await asyncio.to_thread(self._budget_entries, caller, everyone, feature, True)
        scope = "all" if everyone else "own"
        return _json(schemas.BudgetReport(policy_version=version, scope=scope, budgets=entries))

    async def dashboard(self, request: Request) -> Response:
        """The tray's dashboard in one call: budgets, daily spend, spend by model/route/feature/
        tier, savings, GPU cost; the caller's own figures (admins: ?all=true for everyone's).
        Whole UTC days: `since` is taken back to the start of its day."""
        caller = self.caller(request)
        everyone = request.query_params.get("all") == "true"
        if everyone and not caller.is_admin:
            raise PermissionDenied("only admins can see everyone's dashboard")
        moment = parse_since(request.query_params.get("since", "30d"))
        since = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        dashboard = await asyncio.to_thread(self._dashboard, caller, everyone, since)
        return _json(dashboard)

    def _dashboard(self, caller: Caller, everyone: bool, since: datetime) -> schemas.Dashboard:
        """The figures (SQL over the daily rollup, in a worker thread: never in the event loop)."""
        summary = self.s.requests.summary(
            since.date().isoformat(), None if everyone else caller.user_id, ("model", "route", "feature", "tier")
        )

        def keyed(by: str) -> list[schemas.KeyedSpend]:
            return [
                schemas.KeyedSpend(
                    key=r.key,
                    requests=r.requests,
                    cost_micro_usd=r.cost_micro_usd,
                    cost_usd=format_usd(r.cost_micro_usd),
                )
                for r in summary.by[by]
            ]

        daily = [
            schemas.DailySpend(
                day=d.day, requests=d.requests, cost_micro_usd=d.cost_micro_usd, cost_usd=format_usd(d.cost_micro_usd)
            )
            for d in summary.daily
        ]
        gpu_rows = self.s.gpu_ledger.spend("user", since, None if everyone else caller.user)
        idle_keys = ("idle", "other")
        busy = sum(g.cost_micro_usd for g in gpu_rows if not g.key.startswith(idle_keys))
        idle = sum(g.cost_micro_usd for g in gpu_rows if g.key.startswith(idle_keys))
        version, budgets = self._budget_entries(caller, everyone, "", forecasts=True)
        total = sum(d.cost_micro_usd for d in daily)
        return schemas.Dashboard(
            since=since.isoformat(),
            scope="all" if everyone else "own",
            policy_version=version,
            budgets=budgets,
            daily=daily,
            by_model=keyed("model"),
            by_route=keyed("route"),
            by_feature=keyed("feature"),
            by_tier=keyed("tier"),
            savings=schemas.Savings(
                cache_micro_usd=summary.cache_saved_micro_usd,
                compression_micro_usd=summary.compression_saved_micro_usd,
                provider_cache_micro_usd=summary.provider_cache_saved_micro_usd,
            ),
            gpu=schemas.GpuCosts(busy_micro_usd=busy, idle_micro_usd=idle) if gpu_rows else None,
            totals=schemas.Totals(
                requests=sum(d.requests for d in daily), cost_micro_usd=total, cost_usd=format_usd(total)
            ),
        )

    def _budget_entries(
        self, caller: Caller, everyone: bool, feature: str, forecasts: bool = False
    ) -> tuple[int | None, list[schemas.BudgetEntry]]:
        enforcer = self.s.enforcer
        policy = enforcer.policy
        if policy is None:
            return None, []
        caller = enforcer.effective_caller(caller)
        statuses = enforcer.all_statuses() if everyone else enforcer.statuses(caller, feature)
        entries = [
            schemas.BudgetEntry(
                name=b.name,
                scope=b.scope,
                subject=b.subject,
                period=b.period,
                action=b.action,
                amount_usd=format_usd(b.amount_micro_usd),
                spent_usd=format_usd(b.spent_micro_usd),
                reserved_usd=format_usd(b.reserved_micro_usd),
                remaining_usd=format_usd(b.remaining_micro_usd),
                amount_micro_usd=b.amount_micro_usd,
                spent_micro_usd=b.spent_micro_usd,
                reserved_micro_usd=b.reserved_micro_usd,
                remaining_micro_usd=b.remaining_micro_usd,
                resets_at=b.resets_at,
                fleet=_fleet_out(b.fleet),
                **(_forecast_out(enforcer.forecast(b)) if forecasts else {}),
            )
            for b in statuses
        ]
        return policy.version, entries

    async def events(self, request: Request) -> Response:
        """Events after ?since=ID; with ?wait=S (up to 60) the call waits for the first one."""
        caller = self.caller(request)
        try:
            after = int(request.query_params.get("since", "0"))
            wait = float(request.query_params.get("wait", "0"))
        except ValueError as e:
            raise InvalidRequest("since must be an event id and wait a number of seconds") from e
        if after < 0 or not 0 <= wait <= 60:
            raise InvalidRequest("since must be >= 0 and wait between 0 and 60 seconds")
        if not caller.is_admin:
            caller = self.s.enforcer.effective_caller(caller)
        reader = (None, None) if caller.is_admin else (caller.user_id, caller.department)
        deadline = time.monotonic() + wait
        while True:
            found = self.s.events.since(after, user_id=reader[0], department=reader[1])
            if found or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
        deliveries = self.s.events.deliveries([e.id for e in found])
        out = [schemas.EventOut(id=e.id, ts=e.ts, kind=e.kind, user_id=e.user_id, department=e.department, body=e.body,
                                deliveries=[schemas.DeliveryOut(**d) for d in deliveries.get(e.id, [])])
               for e in found]  # fmt: skip
        return _json(schemas.EventList(events=out, last_id=found[-1].id if found else after))

    async def gpu(self, request: Request) -> Response:
        """This box's GPUs over ?since= (default 30d): utilisation, busy/idle hours and cost,
        peak memory, right-sizing recommendations. Box-level figures: no one's requests."""
        self.caller(request)
        since = parse_since(request.query_params.get("since", "30d"))
        report = await asyncio.to_thread(self._gpu_report, since)
        return Response(json.dumps(report), media_type="application/json")

    def _gpu_report(self, since: datetime) -> dict[str, Any]:
        from decimal import Decimal
        from pathlib import Path

        from agent.gpu.catalogue import load_catalogue
        from agent.gpu.cost import GpuPricing
        from agent.gpu.ledger_minutes import load_rollups
        from agent.gpu.report import gpu_report

        section = self.s.settings.gpu
        rollups = load_rollups(self.s.db, since)
        sampling = self.s.gpu_sampler is not None
        if not rollups:
            return {"sampling": sampling, "gpus": [], "recommendations": [], "period_days": "0"}
        now = datetime.now(UTC)
        period_s = max((now - max(since, rollups[0].minute)).total_seconds(), 60.0)
        catalogue = load_catalogue(Path(section.catalogue).expanduser() if section.catalogue else None)
        report = gpu_report(rollups, GpuPricing.from_settings(section), catalogue,
                            period_days=Decimal(repr(period_s)) / 86400)  # fmt: skip
        return {"sampling": sampling, **report.to_json()}

    # -- /api/v1/cache ---------------------------------------------------------------------

    def _cache_scope(self, request: Request, caller: Caller) -> str | None:
        """The scope a cache call acts on: the caller's own, or everything for `?all=true` (admins)."""
        if request.query_params.get("all") == "true":
            if not caller.is_admin:
                raise PermissionDenied("only an admin may act on the whole cache")
            return None
        return scope_of(caller, self.s.settings.cache.scope)

    async def cache_stats(self, request: Request) -> Response:
        caller = self.caller(request)
        scope = self._cache_scope(request, caller)
        cache = self.s.cache
        if cache is None:
            return _json(schemas.CacheStats(enabled=False, scope=scope or "all"))
        stats = await asyncio.to_thread(cache.stats, scope)
        return _json(
            schemas.CacheStats(
                enabled=True,
                scope=scope or "all",
                entries=stats.entries,
                hits=stats.hits,
                saved_usd=format_usd(stats.saved_micro_usd),
                saved_micro_usd=stats.saved_micro_usd,
                bytes=stats.bytes,
                corrupt_rows_skipped=stats.corrupt_rows_skipped,
            )
        )

    async def cache_clear(self, request: Request) -> Response:
        caller = self.caller(request)
        scope = self._cache_scope(request, caller)
        removed = await asyncio.to_thread(self.s.cache.clear, scope) if self.s.cache else 0
        return _json(schemas.CacheCleared(scope=scope or "all", removed=removed))

    async def alerts_test(self, request: Request) -> Response:
        """Admins: post a test alert to every channel of the policy in force, and say how each went
        (the first try; a receiver that is down keeps it in the outbox, retried as any alert)."""
        caller = self.caller(request)
        if not caller.is_admin:
            raise PermissionDenied("only admins can send a test alert")
        policy = self.s.policy.current
        channels = policy.every_alert_channel() if policy is not None else ()
        if not channels:
            raise InvalidRequest("the policy in force has no alert channel: set webhook_url or [[alerts.channels]] "
                                 "in the policy (docs/ADMIN.md)", code="no_alert_channel")  # fmt: skip
        body = {"message": f"a test alert from aifinops on {socket.gethostname()}", "requested_by": caller.user}
        event_id = await asyncio.to_thread(self.s.events.add, "alert_test", body, deliver=channels)
        assert event_id is not None  # noqa: S101 - no dedupe key: always new
        deadline = time.monotonic() + 15
        while True:  # until each channel's first try is over
            found = (await asyncio.to_thread(self.s.events.deliveries, [event_id])).get(event_id, [])
            if all(d["attempts"] or d["state"] != "pending" for d in found) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        return _json(schemas.EventOut(id=event_id, ts="", kind="alert_test", user_id=None, department=None, body=body,
                                      deliveries=[schemas.DeliveryOut(**d) for d in found]))  # fmt: skip

    async def anomalies(self, request: Request) -> Response:
        """Admins: the users throttled after a runaway."""
        if not self.caller(request).is_admin:
            raise PermissionDenied("only admins can see throttled users")
        runaway = self.s.runaway
        rows = await asyncio.to_thread(runaway.throttles) if runaway is not None else []
        throttled = [schemas.ThrottleOut(user=r["user_name"], since=r["since"], limit_per_hour=r["limit_per_hour"],
                                         reason=r["reason"]) for r in rows]  # fmt: skip
        return _json(schemas.ThrottleList(throttled=throttled))

    async def anomaly_clear(self, request: Request) -> Response:
        """Admins: lift a user's throttle."""
        if not self.caller(request).is_admin:
            raise PermissionDenied("only admins can lift a throttle")
        user = str(request.path_params["user"])
        runaway = self.s.runaway
        if runaway is None or not await asyncio.to_thread(runaway.clear, user):
            return error_json(404, "not_found_error", f"{user!r} is not throttled")
        return Response(status_code=204)

    async def cache_invalidate(self, request: Request) -> Response:
        """Mark a served answer wrong: it is removed. Only for entries the caller can be served."""
        caller = self.caller(request)
        allowed = None if caller.is_admin else visible_scopes(caller)
        entry_id = int(request.path_params["entry_id"])
        removed = self.s.cache is not None and await asyncio.to_thread(self.s.cache.invalidate, entry_id, allowed)
        if not removed:  # someone else's entry answers exactly like a missing one
            return error_json(404, "not_found_error", "no such cache entry")
        return Response(status_code=204)


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def _forecast_out(f: Forecast) -> dict[str, Any]:
    if f.forecast_micro_usd is None or f.low_micro_usd is None or f.high_micro_usd is None:
        return {"forecast_note": f.problem}
    return {
        "forecast_usd": format_usd(f.forecast_micro_usd),
        "forecast_low_usd": format_usd(f.low_micro_usd),
        "forecast_high_usd": format_usd(f.high_micro_usd),
        "forecast_micro_usd": f.forecast_micro_usd,
        "breach_at": f.breach_at.astimezone(UTC).isoformat(timespec="seconds") if f.breach_at else None,
    }


def _entry(r: RequestRecord) -> schemas.RequestEntry:
    return schemas.RequestEntry(
        id=r.id,
        ts=r.ts,
        user=r.user_name,
        department=r.department,
        feature=r.feature,
        requested_model=r.requested_model,
        model=r.model,
        provider=r.provider,
        route=r.route,
        reason=r.reason,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        tokens_estimated=r.tokens_estimated,
        cost_usd=format_usd(r.cost_micro_usd),
        cost_micro_usd=r.cost_micro_usd,
        price_source=r.price_source,
        latency_ms=r.latency_ms,
        status=r.status,
        error_type=r.error_type,
        stream=r.stream,
        attempts=r.attempts,
        tier=r.tier,
        route_score=r.route_score,
        confidence=r.confidence,
        parent_id=r.parent_id,
        prompt_tokens_before=r.prompt_tokens_before,
        prompt_tokens_after=r.prompt_tokens_after,
        optimizer_note=r.optimizer_note,
        cost_saved_usd=format_usd(r.cost_saved_micro_usd),
    )


def _fleet_out(state: FleetState | None) -> schemas.FleetBudgetOut | None:
    if state is None:
        return None
    spent = state.fleet_spent_micro_usd
    return schemas.FleetBudgetOut(
        allotted_usd=format_usd(state.allotted_micro_usd),
        allotted_micro_usd=state.allotted_micro_usd,
        fleet_spent_usd=None if spent is None else format_usd(spent),
        fleet_spent_micro_usd=spent,
        hosts=state.hosts,
        problem=state.problem,
    )
