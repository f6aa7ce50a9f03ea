"""OpenTelemetry for the agent: a span per request after the GenAI semantic conventions, child
spans for its stages, and the ``gen_ai.client.*`` metrics, exported over OTLP/HTTP.

Export never touches a request: spans go to a bounded queue drained by the SDK's batch thread
(full queue: new spans are dropped), metrics are read on their own timer, and each export gives
up after ``export_timeout_s``. A collector that is down or hangs costs the agent nothing but the
data. Prompt and answer text are exported only with ``telemetry.capture_content``.

The SDK is imported here only, and only when an OTLP endpoint is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from agent.settings import TelemetrySection

# Histogram boundaries the GenAI conventions advise.
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]


class Tracing:
    def __init__(self, section: TelemetrySection, version: str, host_id: str = "") -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        base = section.otlp_endpoint.rstrip("/")
        timeout = section.export_timeout_s
        headers = dict(section.headers)
        attributes: dict[str, Any] = {"service.name": section.service_name, "service.version": version}
        if host_id:
            attributes["host.id"] = host_id
        resource = Resource.create(attributes)
        self.capture_content = section.capture_content
        self._spans = TracerProvider(resource=resource)
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, timeout=timeout),
            max_queue_size=section.max_queue,
            max_export_batch_size=min(512, section.max_queue),
            export_timeout_millis=timeout * 1000,
        )
        self._spans.add_span_processor(processor)
        self.tracer = self._spans.get_tracer("aifinops", version)
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics", headers=headers, timeout=timeout),
            export_interval_millis=section.metrics_interval_s * 1000,
            export_timeout_millis=timeout * 1000,
        )
        self._meters = MeterProvider(resource=resource, metric_readers=[reader])
        meter = self._meters.get_meter("aifinops", version)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per request, input and output",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )  # fmt: skip
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Time per GenAI request",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip

    def start(self, name: str, parent: Span | None = None, client: bool = False) -> Span:
        from opentelemetry.trace import SpanKind, set_span_in_context

        context = set_span_in_context(parent) if parent is not None else None
        return self.tracer.start_span(name, context=context, kind=SpanKind.CLIENT if client else SpanKind.INTERNAL)

    def flush(self, timeout_s: float = 5.0) -> None:
        """Export what is queued (tests, shutdown); bounded."""
        self._spans.force_flush(int(timeout_s * 1000))
        self._meters.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self._spans.shutdown()
        self._meters.shutdown()
