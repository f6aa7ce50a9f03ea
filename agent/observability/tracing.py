"""OpenTelemetry for the agent: a span per request after the GenAI semantic conventions, child
spans for its stages, and the ``gen_ai.client.*`` metrics, exported over OTLP/HTTP.

Nothing of it runs on a request's path: the gateway hands a finished ``Trace`` (what happened,
with its clock readings) to a bounded queue, and this module's thread does the rest. A full
queue drops the newest traces; each export gives up after ``export_timeout_s``: a collector that
is down or hangs costs the agent nothing but the data. Prompt and answer text are exported only
with ``telemetry.capture_content``.

Spans are written straight into OTLP's protobuf messages (``opentelemetry-proto``) from the
trace records; the metrics go through the SDK's ``MeterProvider`` and OTLP metric exporter. On
this 2-core box the SDK's span objects and their encoder cost about 260 µs of CPU per request
(four spans), the direct encoding 77 µs: the agent's threads share one GIL, so that CPU is
latency (docs/BENCHMARKS.md, "Agent overhead").

Imported only when an OTLP endpoint is configured.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceProto
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

if TYPE_CHECKING:
    from agent.observability.telemetry import Trace
    from agent.settings import TelemetrySection

log = logging.getLogger(__name__)

# Histogram boundaries the GenAI conventions advise.
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
BATCH = 512  # spans per export at most
BATCH_WAIT_S = 1.0  # how long the first trace of a batch waits for others
_FLUSH = object()


class Tracing:
    def __init__(self, section: TelemetrySection, version: str, host_id: str = "") -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        base = section.otlp_endpoint.rstrip("/")
        self._timeout_s = section.export_timeout_s
        self._traces_url = f"{base}/v1/traces"
        self._headers = {"Content-Type": "application/x-protobuf", **section.headers}
        attributes: dict[str, Any] = {"service.name": section.service_name, "service.version": version}
        if host_id:
            attributes["host.id"] = host_id
        self.capture_content = section.capture_content
        self._resource = ResourceProto(attributes=_key_values(attributes))
        self._scope = InstrumentationScope(name="aifinops", version=version)
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics", headers=dict(section.headers), timeout=self._timeout_s),
            export_interval_millis=section.metrics_interval_s * 1000,
            export_timeout_millis=self._timeout_s * 1000,
        )
        self._meters = MeterProvider(resource=Resource.create(attributes), metric_readers=[reader])
        meter = self._meters.get_meter("aifinops", version)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per request, input and output",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )  # fmt: skip
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Time per GenAI request",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=section.max_queue)
        self._random = random.Random()  # noqa: S311 - span ids need uniqueness, not secrecy (as the SDK's)
        self._thread = threading.Thread(target=self._run, name="otel-export", daemon=True)
        self._thread.start()

    def submit(self, trace: Trace) -> None:
        """A finished request, for its spans and metrics (never blocks: a full queue drops it)."""
        try:
            self._queue.put_nowait(trace)
        except queue.Full:
            log.warning("OpenTelemetry: the export queue is full; traces are dropped")

    # -- the export thread -----------------------------------------------------------------------

    def _run(self) -> None:
        spans: list[Span] = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            try:
                item, taken = self._queue.get(timeout=timeout), True
            except queue.Empty:
                item, taken = _FLUSH, False  # the batch waited long enough
            if item is not None and item is not _FLUSH:
                try:
                    spans += self._spans_of(item)
                except Exception:  # telemetry never takes anything down; logged with traceback
                    log.exception("building the spans of a request failed")
                deadline = deadline or time.monotonic() + BATCH_WAIT_S
            if item is None or item is _FLUSH or len(spans) >= BATCH:
                self._send(spans)
                spans, deadline = [], None
            if taken:
                self._queue.task_done()  # a flush returns once its batch is sent
            if item is None:
                return

    def _spans_of(self, trace: Trace) -> list[Span]:
        ids = self._random.getrandbits
        trace_id, root_id = ids(128).to_bytes(16, "big"), ids(64).to_bytes(8, "big")
        root = Span(
            trace_id=trace_id,
            span_id=root_id,
            name=trace.name,
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=trace.start_ns,
            end_time_unix_nano=trace.end_ns,
            attributes=_key_values(trace.attributes),
        )
        _failed(root, trace.error)
        out = [root]
        for stage in trace.stages:
            span = Span(
                trace_id=trace_id,
                span_id=ids(64).to_bytes(8, "big"),
                parent_span_id=root_id,
                name=stage.name,
                kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=stage.start_ns,
                end_time_unix_nano=stage.end_ns or trace.end_ns,
                attributes=_key_values(stage.attributes),
            )
            _failed(span, stage.error)
            out.append(span)
        metric = trace.metric_attributes
        if metric is not None:
            self.operation_duration.record((trace.end_ns - trace.start_ns) / 1e9, metric)
            if trace.usage is not None:
                self.token_usage.record(trace.usage[0], {**metric, "gen_ai.token.type": "input"})
                self.token_usage.record(trace.usage[1], {**metric, "gen_ai.token.type": "output"})
        return out

    def _send(self, spans: list[Span]) -> None:
        if not spans:
            return
        request = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(resource=self._resource, scope_spans=[ScopeSpans(scope=self._scope,
                                                                                            spans=spans)])]
        )  # fmt: skip
        body = request.SerializeToString()
        # The URL is the config's http(s) endpoint (settings validate the scheme).
        http = urllib.request.Request(self._traces_url, data=body, headers=self._headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(http, timeout=self._timeout_s) as answer:  # noqa: S310 - http(s) by config
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.warning("OpenTelemetry: %d spans not exported to %s: %s", len(spans), self._traces_url, e)

    # -- tests and shutdown ------------------------------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> None:
        """Export what is queued now (tests); bounded by the export timeout."""
        self._queue.put(_FLUSH)
        self._queue.join()
        self._meters.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        try:
            self._queue.put(None, timeout=self._timeout_s)  # after the traces queued: they are sent first
        except queue.Full:
            pass  # the thread is stuck on a hung collector: it is a daemon, let it go
        self._thread.join(self._timeout_s + 5)
        self._meters.shutdown()


def _failed(span: Span, error: str) -> None:
    if error:
        span.attributes.append(_key_value("error.type", error))
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=error))


def _key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [_key_value(k, v) for k, v in attributes.items()]


def _key_value(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))
