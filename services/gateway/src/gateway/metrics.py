"""The gateway's own metrics: what each upstream did, per route.

The server side (rate, errors, duration per route) is servicekit's RED metrics; these
add the upstream view. Children are bound per route once, at start-up, so the hot path
does no label lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from servicekit.metrics import LATENCY_BUCKETS

# What happened to one attempt to reach an upstream.
OUTCOMES = (
    "ok",
    "timeout",
    "connect_error",
    "broken",
    "client_gone",
    "body_too_large",
    "circuit_open",
    "client_timeout",
)


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    outcomes: dict[str, Counter]
    latency: Histogram
    in_flight: Gauge
    request_bytes: Counter
    response_bytes: Counter


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.upstream_requests = Counter(
            "gateway_upstream_requests_total",
            "Attempts to reach an upstream, by route and outcome (ok means a response"
            " arrived, whatever its status).",
            ["route", "outcome"],
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_response_seconds",
            "Time from sending a request upstream to receiving its response headers.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_in_flight = Gauge(
            "gateway_upstream_requests_in_flight",
            "Requests being proxied right now, by route, summed over live workers.",
            ["route"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.request_bytes = Counter(
            "gateway_request_body_bytes",
            "Request body bytes forwarded to upstreams, by route.",
            ["route"],
            registry=registry,
        )
        self.response_bytes = Counter(
            "gateway_response_body_bytes",
            "Response body bytes relayed from upstreams to clients, by route.",
            ["route"],
            registry=registry,
        )

    def for_route(self, route: str) -> RouteMetrics:
        return RouteMetrics(
            outcomes={o: self.upstream_requests.labels(route, o) for o in OUTCOMES},
            latency=self.upstream_latency.labels(route),
            in_flight=self.upstream_in_flight.labels(route),
            request_bytes=self.request_bytes.labels(route),
            response_bytes=self.response_bytes.labels(route),
        )
