"""The seam between the proxy path and the gateway's own FastAPI endpoints.

A raw ASGI layer: paths under a route prefix go straight to `proxy.forward`, skipping
FastAPI's routing, dependency solving and Response objects, which would cost about
half the gateway's throughput (see bench/). Everything else — /livez, /docs, unknown
paths — goes to FastAPI. The gateway's own paths always win over a route.

Before either, every request passes `hygiene.check_request` (header limits, control
characters, methods, framing); a route's CORS preflight is answered here, and a
request body that stops arriving times out (see `hygiene`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.routing import iter_route_contexts
from opentelemetry.trace import Tracer
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.cors import Cors
from gateway.errors import BadPath, GatewayError
from gateway.guards import Guards
from gateway.hygiene import RequestLimits, check_request, has_body, with_body_timeout
from gateway.metrics import GatewayMetrics
from gateway.paths import normalize
from gateway.proxy import Proxy
from gateway.routing import RouteTable
from gateway.upstream import UpstreamClient
from servicekit.problem import send_problem

UPSTREAM_STATE_KEY = "upstream"
GUARDS_STATE_KEY = "guards"


# The settings' defaults, for a dispatcher built without them (tests).
DEFAULT_LIMITS = RequestLimits(max_header_count=100, max_header_bytes=32 * 1024, body_timeout=30)


class ProxyDispatcher:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: RouteTable,
        metrics: GatewayMetrics,
        tracer: Tracer | None,
        limits: RequestLimits = DEFAULT_LIMITS,
        cors: Mapping[str, Cors] | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.proxy = Proxy(routes.routes, metrics, tracer)
        self.limits = limits
        self.cors = dict(cors or {})  # by route name
        self._own_paths: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = check_request(scope, self.limits)
        if refusal is not None:
            await _refuse(send, refusal)
            return
        if scope["path"] in self._own(scope):
            await self.app(scope, receive, send)
            return
        try:
            segments, trailing_slash = normalize(scope.get("raw_path") or scope["path"].encode())
        except BadPath as exc:
            await send_problem(send, exc.status, exc.detail, slug=exc.slug)
            return
        route = self.routes.match(segments)
        if route is None:
            await self.app(scope, receive, send)
            return
        cors = self.cors.get(route.name)
        if cors is not None:
            if cors.is_preflight(scope):
                await cors.answer_preflight(scope, send)  # never forwarded nor authenticated
                return
            send = cors.wrap(scope, send)  # the gateway's own errors on this route too
        if has_body(scope):
            receive = with_body_timeout(
                receive, self.limits.body_timeout, total=route.timeouts.total
            )
        state = scope["state"]
        client: UpstreamClient = state[UPSTREAM_STATE_KEY]
        guards: Guards = state[GUARDS_STATE_KEY]
        path = route.upstream_path(segments, trailing_slash)
        await self.proxy.forward(
            scope,
            receive,
            send,
            route,
            path=path,
            client=client,
            guards=guards.by_route[route.name],
        )

    def _own(self, scope: Scope) -> frozenset[str]:
        # Read from the app on first use, so it always matches the routes it really has.
        if self._own_paths is None:
            app = scope["app"]
            # `iter_route_contexts` also yields the routes of included routers (the probes),
            # which FastAPI keeps as one opaque entry in `app.routes`.
            self._own_paths = frozenset(
                path
                for context in iter_route_contexts(app.routes)
                if isinstance(path := context.path, str)
            )
        return self._own_paths


async def _refuse(send: Send, error: GatewayError) -> None:
    # The body, if any, was never read: closing keeps it from being parsed as a request.
    headers = [*error.headers, (b"connection", b"close")]
    await send_problem(send, error.status, error.detail, slug=error.slug, headers=headers)
