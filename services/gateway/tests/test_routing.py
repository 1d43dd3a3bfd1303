from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.routing import (
    Route,
    RouteConfig,
    RouteTable,
    RouteTableError,
    Timeouts,
    load_route_table,
)

WriteRoutes = Callable[[str], Path]
DEFAULT_ROUTES_FILE = Path(__file__).parents[1] / "routes.yaml"


def route(name: str, prefix: str, upstream: str = "http://u", **more: object) -> Route:
    return Route.from_config(RouteConfig(name=name, prefix=prefix, upstream=upstream, **more))  # type: ignore[arg-type]


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(RouteTableError) as caught:
        load_route_table(path, environ={} if environ is None else environ)
    message = caught.value.code
    assert isinstance(message, str)
    assert "\n" not in message
    assert message.startswith(f"invalid route table {path}: ")
    return message


# --- loading ---------------------------------------------------------------------------


def test_load_a_route_file(write_routes: WriteRoutes) -> None:
    path = write_routes(
        """
        routes:
          - name: mock
            prefix: /mock/
            upstream: http://mock.internal:8081/
            timeout: {connect: 1, read: 5, total: 10}
            max_body_bytes: 1MiB
          - name: other
            prefix: /other/deep
            upstream: https://other.internal/base
            strip_prefix: false
        """
    )
    table = load_route_table(path, environ={})

    mock, other = table.routes
    assert mock.name == "mock"
    assert mock.prefix == "/mock"
    assert mock.prefix_segments == (b"mock",)
    assert mock.origin == "http://mock.internal:8081"
    assert mock.base_path == ""
    assert mock.strip_prefix is True
    assert mock.timeouts == Timeouts(connect=1, read=5, total=10)
    assert mock.max_body_bytes == 1024 * 1024

    assert other.prefix_segments == (b"other", b"deep")
    assert other.upstream == "https://other.internal/base"
    assert other.strip_prefix is False
    assert other.timeouts == Timeouts()
    assert other.max_body_bytes == 10 * 1024 * 1024


def test_the_default_route_file_loads() -> None:
    table = load_route_table(DEFAULT_ROUTES_FILE, environ={})
    by_name = {r.name: r for r in table.routes}
    assert {"mock", "mock-scoped", "mock-strict", "unreachable"} <= by_name.keys()
    mock = by_name["mock"]
    assert (mock.prefix, mock.upstream, mock.strip_prefix) == (
        "/mock",
        "http://127.0.0.1:8081",
        True,
    )
    assert table.match((b"mock", b"echo")) is mock
    assert mock.upstream_path((b"mock", b"echo"), False) == "/echo"
    assert by_name["mock-scoped"].base_path == "/echo/scoped"


def test_the_default_route_file_follows_its_environment() -> None:
    table = load_route_table(
        DEFAULT_ROUTES_FILE, environ={"MOCK_UPSTREAM": "http://downstream-mock:8080"}
    )
    assert table.routes[0].upstream == "http://downstream-mock:8080"


@pytest.mark.parametrize(
    ("environ", "upstream"),
    [
        ({}, "http://default.internal:1"),
        ({"UP": ""}, "http://default.internal:1"),  # empty counts as unset, as in compose
        ({"UP": "http://set.internal:2"}, "http://set.internal:2"),
    ],
)
def test_variables_with_defaults(
    write_routes: WriteRoutes, environ: dict[str, str], upstream: str
) -> None:
    path = write_routes(
        """
        routes:
          - {name: a, prefix: /a, upstream: "${UP:-http://default.internal:1}"}
        """
    )
    assert load_route_table(path, environ=environ).routes[0].upstream == upstream


def test_variables_come_from_the_process_environment_by_default(
    write_routes: WriteRoutes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTING_TEST_HOST", "from-env.internal")
    path = write_routes("routes: [{name: a, prefix: /a, upstream: 'http://${ROUTING_TEST_HOST}'}]")
    assert load_route_table(path).routes[0].upstream == "http://from-env.internal"


def test_a_missing_variable_is_named(write_routes: WriteRoutes) -> None:
    path = write_routes("routes: [{name: a, prefix: /a, upstream: '${NOT_SET_ANYWHERE}'}]")
    message = load_error(path)
    assert "${NOT_SET_ANYWHERE}" in message
    assert "not set" in message


# Each bad file, with the route and field its one-line message must name.
BAD_ROUTES = {
    "unknown field": (
        "routes: [{name: api, prefix: /api, upstream: 'http://u', retries: 3}]",
        "api",
        "retries",
    ),
    "upstream scheme": (
        "routes: [{name: api, prefix: /api, upstream: 'ftp://u'}]",
        "api",
        "upstream",
    ),
    "upstream without host": (
        "routes: [{name: api, prefix: /api, upstream: 'http:///x'}]",
        "api",
        "upstream",
    ),
    "upstream with query": (
        "routes: [{name: api, prefix: /api, upstream: 'http://u/?a=1'}]",
        "api",
        "upstream",
    ),
    "upstream with credentials": (
        "routes: [{name: api, prefix: /api, upstream: 'http://user:pw@u'}]",
        "api",
        "upstream",
    ),
    "upstream bad port": (
        "routes: [{name: api, prefix: /api, upstream: 'http://u:99999'}]",
        "api",
        "upstream",
    ),
    "missing upstream": ("routes: [{name: api, prefix: /api}]", "api", "upstream"),
    "duplicate name": (
        """
        routes:
          - {name: api, prefix: /one, upstream: 'http://u'}
          - {name: api, prefix: /two, upstream: 'http://u'}
        """,
        "api",
        "name",
    ),
    "duplicate prefix": (
        """
        routes:
          - {name: first, prefix: /api, upstream: 'http://u'}
          - {name: second, prefix: /api/, upstream: 'http://u'}
        """,
        "second",
        "prefix",
    ),
    "connect above total": (
        "routes: [{name: api, prefix: /api, upstream: 'http://u', "
        "timeout: {connect: 10, total: 5}}]",
        "api",
        "timeout",
    ),
    "negative read timeout": (
        "routes: [{name: api, prefix: /api, upstream: 'http://u', timeout: {read: -1}}]",
        "api",
        "timeout.read",
    ),
    "unknown timeout": (
        "routes: [{name: api, prefix: /api, upstream: 'http://u', timeout: {idle: 1}}]",
        "api",
        "timeout.idle",
    ),
    "relative prefix": (
        "routes: [{name: api, prefix: api, upstream: 'http://u'}]",
        "api",
        "prefix",
    ),
    "dot segments in prefix": (
        "routes: [{name: api, prefix: /a/../api, upstream: 'http://u'}]",
        "api",
        "prefix",
    ),
    "encoded slash in prefix": (
        "routes: [{name: api, prefix: /a%2fb, upstream: 'http://u'}]",
        "api",
        "prefix",
    ),
    "bad name": (
        "routes: [{name: Bad_Name, prefix: /api, upstream: 'http://u'}]",
        "Bad_Name",
        "name",
    ),
    "bad body limit": (
        "routes: [{name: api, prefix: /api, upstream: 'http://u', max_body_bytes: lots}]",
        "api",
        "max_body_bytes",
    ),
}


@pytest.mark.parametrize(("text", "name", "field"), BAD_ROUTES.values(), ids=BAD_ROUTES.keys())
def test_a_bad_route_is_one_line_naming_route_and_field(
    write_routes: WriteRoutes, text: str, name: str, field: str
) -> None:
    message = load_error(write_routes(text))
    assert f"route '{name}' " in message
    assert f" field {field}: " in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes: [{name: a, prefix: /a, upstream: [unclosed", "not valid YAML"),
        ("routes:\n  - name: a\n\tprefix: /a\n", "not valid YAML"),
        ("routes: []", "routes: List should have at least 1 item"),
        ("", "(top level): Input should be a valid dictionary"),
        ("- just\n- a list\n", "Input should be a valid dictionary"),
        ("routes: [{name: a, prefix: /a, upstream: 'http://u'}]\nextra: 1\n", "extra"),
        ("routes: [just-a-string]", "route <unnamed> (routes[0]) field (the route itself)"),
    ],
)
def test_a_bad_file_is_one_line(write_routes: WriteRoutes, text: str, expected: str) -> None:
    assert expected in load_error(write_routes(text))


def test_routes_that_do_not_retry_have_no_say_in_a_shared_budget(
    write_routes: WriteRoutes,
) -> None:
    # One retrying route sets a budget; the others to the same upstream never retry, so
    # their (default) budget is not in effect and must not have to be copied.
    path = write_routes(
        """
        routes:
          - {name: plain, prefix: /plain, upstream: 'http://u'}
          - name: retrying
            prefix: /retrying
            upstream: 'http://u'
            retry: {attempts: 3, budget: {ratio: 0.1}}
          - name: guarded
            prefix: /guarded
            upstream: 'http://u/base'
            circuit_breaker: {consecutive_failures: 3}
          - {name: after, prefix: /after, upstream: 'http://u', retry: {attempts: 1}}
        """
    )
    assert [r.name for r in load_route_table(path, environ={}).routes] == [
        "plain",
        "retrying",
        "guarded",
        "after",
    ]


@pytest.mark.parametrize(
    ("second", "third", "field"),
    [
        ("retry: {attempts: 2, budget: {ratio: 0.1}}", "retry: {attempts: 2}", "retry.budget"),
        (
            "circuit_breaker: {open_seconds: 5}",
            "circuit_breaker: {open_seconds: 9}",
            "circuit_breaker",
        ),
    ],
)
def test_routes_that_share_an_upstream_policy_must_agree(
    write_routes: WriteRoutes, second: str, third: str, field: str
) -> None:
    # The first route to the upstream sets neither, so the two that do are compared.
    path = write_routes(
        f"""
        routes:
          - {{name: first, prefix: /first, upstream: 'http://u'}}
          - {{name: second, prefix: /second, upstream: 'http://u', {second}}}
          - {{name: third, prefix: /third, upstream: 'http://u', {third}}}
        """
    )
    message = load_error(path)
    assert f"route 'third' (routes[2]) field {field}: differs from route 'second'" in message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.yaml")
    assert "No such file or directory" in message


# --- matching --------------------------------------------------------------------------

TABLE = RouteTable(
    [
        route("api", "/api"),
        route("api-v2", "/api/v2"),
        route("mock", "/mock"),
    ]
)


@pytest.mark.parametrize(
    ("segments", "name"),
    [
        ((b"api",), "api"),
        ((b"api", b"x"), "api"),
        ((b"api", b"v3"), "api"),
        ((b"api", b"v2"), "api-v2"),
        ((b"api", b"v2", b"x", b"y"), "api-v2"),
        ((b"mock",), "mock"),
        ((b"mock", b"echo"), "mock"),
        ((b"mockery",), None),  # a prefix matches whole segments only
        ((b"mockery", b"x"), None),
        ((b"moc",), None),
        ((b"Mock",), None),
        ((b"apiv2",), None),
        ((), None),
        ((b"other", b"api"), None),
    ],
)
def test_longest_prefix_on_segment_boundaries(
    segments: tuple[bytes, ...], name: str | None
) -> None:
    matched = TABLE.match(segments)
    assert (matched.name if matched else None) == name


def test_a_root_prefix_catches_everything_else() -> None:
    table = RouteTable([route("all", "/"), route("api", "/api")])
    assert table.match(()).name == "all"  # type: ignore[union-attr]
    assert table.match((b"x", b"y")).name == "all"  # type: ignore[union-attr]
    assert table.match((b"api", b"y")).name == "api"  # type: ignore[union-attr]


def test_an_empty_table_matches_nothing() -> None:
    assert RouteTable([]).match((b"a",)) is None


# --- upstream paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "segments", "trailing_slash", "path"),
    [
        ({"upstream": "http://u"}, (b"mock", b"echo"), False, "/echo"),
        ({"upstream": "http://u"}, (b"mock",), False, "/"),
        ({"upstream": "http://u"}, (b"mock",), True, "/"),
        ({"upstream": "http://u"}, (b"mock", b"a", b"b"), True, "/a/b/"),
        ({"upstream": "http://u"}, (b"mock", b"a b", b"%"), False, "/a%20b/%25"),
        ({"upstream": "http://u/base/path/"}, (b"mock", b"x", b"y"), False, "/base/path/x/y"),
        ({"upstream": "http://u/base/path"}, (b"mock",), False, "/base/path"),
        ({"upstream": "http://u/base"}, (b"mock", b"x"), True, "/base/x/"),
        ({"upstream": "http://u", "strip_prefix": False}, (b"mock", b"x"), False, "/mock/x"),
        ({"upstream": "http://u", "strip_prefix": False}, (b"mock",), False, "/mock"),
        ({"upstream": "http://u/b", "strip_prefix": False}, (b"mock", b"x"), False, "/b/mock/x"),
    ],
)
def test_upstream_path(
    config: dict[str, object], segments: tuple[bytes, ...], trailing_slash: bool, path: str
) -> None:
    assert route("mock", "/mock", **config).upstream_path(segments, trailing_slash) == path  # type: ignore[arg-type]


def test_origin_keeps_port_and_scheme() -> None:
    r = route("r", "/r", upstream="https://example.internal:8443/base/")
    assert r.origin == "https://example.internal:8443"
    assert r.base_path == "/base"
    assert r.upstream == "https://example.internal:8443/base"
