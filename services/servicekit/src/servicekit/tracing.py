"""OpenTelemetry tracing, built per worker after fork and configured only by `OTEL_*`.

A tracer provider owns a background export thread, and threads do not survive fork, so
a provider built in the gunicorn master would silently export nothing from its workers.
gunicorn's `post_fork` hook therefore calls `install_tracer_provider` in each worker,
and `worker_exit` calls `shutdown_tracer_provider` so queued spans are flushed.

The standard variables decide everything: `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP over HTTP/protobuf),
`OTEL_TRACES_SAMPLER` (default `parentbased_always_on`), and `OTEL_TRACES_EXPORTER`:
`otlp` (default), `console`, or `none` to turn tracing off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

# Probes and scrapes are frequent and carry no information worth a span.
UNTRACED_PATHS = ("/livez", "/readyz", "/health", "/metrics")


class TracingConfigError(SystemExit):
    """Start-up must stop: an `OTEL_*` variable has a value we cannot honour."""


def tracing_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none"


def build_tracer_provider(
    default_service_name: str, environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """A provider exporting as the environment says, or None when tracing is off."""
    if not tracing_enabled(environ):
        return None
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; when they name
    # no service it says "unknown_service", and ours is the better fallback.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(_exporter(environ)))
    return provider


def _exporter(environ: Mapping[str, str]) -> SpanExporter:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    if names == ["console"]:
        return ConsoleSpanExporter()
    if names == ["otlp"]:
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol != "http/protobuf":
            raise TracingConfigError(
                f"invalid setting OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported"
                f" (got {protocol!r})"
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()  # endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*
    raise TracingConfigError(
        f"invalid setting OTEL_TRACES_EXPORTER: use otlp, console or none (got {names!r})"
    )


def install_tracer_provider(default_service_name: str) -> None:
    """In a gunicorn worker after fork: make this worker's provider the global one."""
    provider = build_tracer_provider(default_service_name)
    if provider is not None:
        trace.set_tracer_provider(provider)


def shutdown_tracer_provider() -> None:
    """Flush queued spans before the worker exits."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def current_tracer_provider() -> TracerProvider | None:
    """The SDK provider installed in this process, or None when tracing is off."""
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None
