"""The route table: loaded from YAML, validated once at start-up, matched per request.

A route sends every path under its `prefix` (on a segment boundary: `/mock` matches
`/mock` and `/mock/x`, never `/mockery`) to its `upstream`; the longest matching prefix
wins. Matching happens on the normalised path (see `paths`), so the upstream path is
always the route's base path plus segments that stayed under the prefix.

A bad file stops start-up with one line naming the route and the field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.auth_policy import ApiKeyPolicy, AuthPolicy, NoAuthPolicy
from gateway.breaker import BreakerPolicy
from gateway.cors import CorsPolicy
from gateway.errors import BadPath
from gateway.paths import Segments, encode, normalize
from gateway.ratelimit import RateLimitPolicy
from gateway.retry import RetryPolicy


class RouteTableError(SystemExit):
    """Start-up must stop; the message is one line naming the file, route and field."""


class Timeouts(BaseModel):
    """Seconds. `read` bounds each wait for upstream bytes, `total` the whole exchange."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(default=2.0, gt=0, le=300)
    read: float = Field(default=30.0, gt=0, le=3600)
    total: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _total_is_the_upper_bound(self) -> Self:
        if self.connect > self.total or self.read > self.total:
            raise ValueError("connect and read must not exceed total")
        return self


RouteName = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class RouteConfig(BaseModel):
    """One entry of the `routes:` list, as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RouteName
    prefix: str
    upstream: str
    strip_prefix: bool = True
    timeout: Timeouts = Timeouts()
    max_body_bytes: ByteSize = Field(default=ByteSize(10 * 1024 * 1024), ge=0)
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: BreakerPolicy | None = None
    auth: AuthPolicy = NoAuthPolicy()
    rate_limit: RateLimitPolicy | None = None
    cors: CorsPolicy | None = None

    @model_validator(mode="after")
    def _rate_limit_key_has_a_source(self) -> Self:
        key = self.rate_limit.key if self.rate_limit is not None else None
        if key == "api_key" and not isinstance(self.auth, ApiKeyPolicy):
            raise ValueError("rate_limit.key api_key needs auth.type api_key on the same route")
        return self

    @field_validator("prefix")
    @classmethod
    def _prefix_is_normal(cls, value: str) -> str:
        try:
            segments, _ = normalize(value.encode())
        except BadPath as exc:
            raise ValueError(exc.detail) from None
        normal = encode(segments)
        if normal != value.rstrip("/") and value != "/":
            raise ValueError(f"must be a normalised path such as {normal!r}")
        return normal

    @field_validator("upstream")
    @classmethod
    def _upstream_is_http_base(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not have a query, fragment or credentials")
        _ = parts.port  # raises ValueError for a bad port
        return value.rstrip("/")


class RouteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: list[RouteConfig] = Field(min_length=1)
    # The CORS policy of every route that does not set its own (`cors: null` opts out).
    cors: CorsPolicy | None = None

    @model_validator(mode="after")
    def _names_and_prefixes_unique(self) -> Self:
        # A model-level error has no location, so the message names the route and field.
        for attr in ("name", "prefix"):
            first: dict[str, int] = {}
            for index, route in enumerate(self.routes):
                value = getattr(route, attr)
                if value in first:
                    other = first[value]
                    raise ValueError(
                        f"route {route.name!r} (routes[{index}]) field {attr}: {value!r} is "
                        f"already the {attr} of route {self.routes[other].name!r} (routes[{other}])"
                    )
                first[value] = index
        return self

    @model_validator(mode="after")
    def _shared_upstreams_agree(self) -> Self:
        # Routes to one upstream origin share its breaker and retry budget, so they must
        # not disagree about them. Only routes that use one count: a route without a
        # breaker, or that never retries (its budget is then only the default), has no say.
        first: dict[tuple[str, str], tuple[int, RouteConfig, object]] = {}
        for index, route in enumerate(self.routes):
            origin = _origin(route.upstream)
            for attr, mine in (
                ("circuit_breaker", route.circuit_breaker),
                ("retry.budget", route.retry.budget if route.retry.enabled else None),
            ):
                if mine is None:
                    continue
                other_index, other, theirs = first.setdefault((origin, attr), (index, route, mine))
                if mine != theirs:
                    raise ValueError(
                        f"route {route.name!r} (routes[{index}]) field {attr}: differs from"
                        f" route {other.name!r} (routes[{other_index}]), which shares the"
                        f" upstream {origin}"
                    )
        return self


@dataclass(frozen=True, slots=True)
class Route:
    """A validated route, with what the hot path needs precomputed."""

    name: str
    prefix: str
    prefix_segments: Segments
    origin: str  # scheme://host[:port]
    base_path: str  # "" or "/some/path", no trailing slash
    strip_prefix: bool
    timeouts: Timeouts
    max_body_bytes: int
    retry: RetryPolicy
    circuit_breaker: BreakerPolicy | None
    auth: AuthPolicy
    rate_limit: RateLimitPolicy | None
    cors: CorsPolicy | None

    @classmethod
    def from_config(cls, config: RouteConfig, default_cors: CorsPolicy | None = None) -> Route:
        parts = urlsplit(config.upstream)
        prefix_segments, _ = normalize(config.prefix.encode())
        return cls(
            name=config.name,
            prefix=config.prefix,
            prefix_segments=prefix_segments,
            origin=f"{parts.scheme}://{parts.netloc}",
            base_path=parts.path.rstrip("/"),
            strip_prefix=config.strip_prefix,
            timeouts=config.timeout,
            max_body_bytes=int(config.max_body_bytes),
            retry=config.retry,
            circuit_breaker=config.circuit_breaker,
            auth=config.auth,
            rate_limit=config.rate_limit,
            cors=config.cors if "cors" in config.model_fields_set else default_cors,
        )

    @property
    def upstream(self) -> str:
        return self.origin + self.base_path

    def upstream_path(self, segments: Segments, trailing_slash: bool) -> str:
        kept = segments[len(self.prefix_segments) :] if self.strip_prefix else segments
        if not kept:
            return self.base_path or "/"
        return self.base_path + encode(kept, trailing_slash=trailing_slash)


class RouteTable:
    """Longest-prefix matching on segment boundaries, one dict lookup per path depth."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._by_prefix = {r.prefix_segments: r for r in routes}
        self._max_depth = max((len(r.prefix_segments) for r in routes), default=0)

    def match(self, segments: Segments) -> Route | None:
        for depth in range(min(len(segments), self._max_depth), -1, -1):
            route = self._by_prefix.get(segments[:depth])
            if route is not None:
                return route
        return None


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(text: str, environ: dict[str, str] | os._Environ[str]) -> str:
    """Replace `${NAME}` and `${NAME:-default}`, as docker compose does."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise RouteTableError(f"the route file refers to ${{{name}}}, which is not set")

    return _VARIABLE.sub(substitute, text)


def load_route_table(path: Path, environ: dict[str, str] | None = None) -> RouteTable:
    """Read, expand, validate and compile a route file; `RouteTableError` if anything is off."""
    where = f"invalid route table {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RouteTableError(f"{where}: {exc.strerror or exc}") from None
    try:
        env = os.environ if environ is None else environ
        expanded = expand_environment(text, env)
    except RouteTableError as exc:
        raise RouteTableError(f"{where}: {exc}") from None
    try:
        data = yaml.safe_load(expanded)
    except yaml.YAMLError as exc:
        raise RouteTableError(f"{where}: not valid YAML: {_one_line(str(exc))}") from None
    try:
        # The auth policies read secrets from the same environment the file was expanded with.
        route_file = RouteFile.model_validate(data, context={"environ": env})
    except ValidationError as exc:
        raise RouteTableError(f"{where}: {_describe(exc, data)}") from None
    return RouteTable([Route.from_config(c, route_file.cors) for c in route_file.routes])


def _origin(upstream: str) -> str:
    parts = urlsplit(upstream)
    return f"{parts.scheme}://{parts.netloc}"


def _describe(exc: ValidationError, data: Any) -> str:
    error = exc.errors()[0]
    loc = list(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
        index = loc[1]
        name = _route_name(data, index)
        field = ".".join(str(p) for p in loc[2:]) or "(the route itself)"
        return f"route {name} (routes[{index}]) field {field}: {message}"
    if not loc and error["type"] == "value_error":
        return message  # from RouteFile's own check, which names the route and field
    field = ".".join(str(p) for p in loc) or "(top level)"
    return f"{field}: {message}"


def _route_name(data: Any, index: int) -> str:
    try:
        name = data["routes"][index]["name"]
    except (KeyError, IndexError, TypeError):
        return "<unnamed>"
    return repr(name) if isinstance(name, str) else "<unnamed>"


def _one_line(text: str) -> str:
    return " ".join(text.split())
