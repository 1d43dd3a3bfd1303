from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.errors import BadPath
from gateway.paths import encode, normalize
from gateway.routing import Route, RouteConfig

# --- examples --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "segments", "trailing_slash"),
    [
        (b"/", (), False),
        (b"/a/b", (b"a", b"b"), False),
        (b"/a/b/", (b"a", b"b"), True),
        (b"//a///b", (b"a", b"b"), False),
        (b"/a/./b", (b"a", b"b"), False),
        (b"/a/x/../b", (b"a", b"b"), False),
        (b"/a/%2e%2E/b", (b"b",), False),
        (b"/a/%2e/b", (b"a", b"b"), False),
        (b"/a%20b/c", (b"a b", b"c"), False),
        (b"/caf%C3%A9", ("café".encode(),), False),
        (b"/a;b=c/d", (b"a;b=c", b"d"), False),
        (b"/.../x", (b"...", b"x"), False),
        (b"/..", None, False),
    ],
)
def test_normalize(raw: bytes, segments: tuple[bytes, ...] | None, trailing_slash: bool) -> None:
    if segments is None:
        with pytest.raises(BadPath):
            normalize(raw)
        return
    assert normalize(raw) == (segments, trailing_slash)


@pytest.mark.parametrize(
    "raw",
    [
        b"a/b",  # not absolute
        b"",
        b"/a/%2f/b",  # encoded slash
        b"/a/%2F",
        b"/a%5cb",  # encoded backslash
        b"/a\\b",
        b"/a%00b",
        b"/a\x00b",
        b"/a%0d%0aSet-Cookie:x",
        b"/a/%zz",  # malformed escape
        b"/a/%4",
        b"/a/%",
        b"/../etc/passwd",
        b"/a/../../etc",
        b"/%2e%2e/etc",
        b"/a/..;x/b",  # a servlet container's ".."
        b"/a/.;x/b",
    ],
)
def test_ambiguous_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(BadPath) as caught:
        normalize(raw)
    assert caught.value.status == 400
    assert caught.value.slug == "bad-path"


@pytest.mark.parametrize(
    ("segments", "trailing_slash", "encoded"),
    [
        ((), False, "/"),
        ((), True, "/"),
        ((b"a", b"b"), True, "/a/b/"),
        ((b"a b", b"50%"), False, "/a%20b/50%25"),
        ((b"q?x#y",), False, "/q%3Fx%23y"),
        ((b"k=v;p@x:y~z",), False, "/k=v;p@x:y~z"),
        (("é".encode(),), False, "/%C3%A9"),
    ],
)
def test_encode(segments: tuple[bytes, ...], trailing_slash: bool, encoded: str) -> None:
    assert encode(segments, trailing_slash=trailing_slash) == encoded


# --- properties ------------------------------------------------------------------------

# Raw paths built from the pieces that make path handling go wrong, plus arbitrary bytes.
_PIECES = st.sampled_from(
    [b"/", b"//", b".", b"..", b"%2e", b"%2E%2e", b"%2f", b"%5c", b"%", b"%4", b"%25", b";",
     b"a", b"b", b"\\", b"\x00", b"\xff", b"%c3%a9", b"?", b"#", b" "]
)  # fmt: skip
RAW_PATHS = st.one_of(
    st.binary(max_size=40).map(lambda b: b"/" + b),
    st.lists(st.one_of(_PIECES, st.binary(max_size=3)), max_size=12).map(
        lambda parts: b"/" + b"".join(parts)
    ),
)


def normalized_or_none(raw: bytes) -> tuple[tuple[bytes, ...], bool] | None:
    try:
        return normalize(raw)
    except BadPath:
        return None


@given(st.binary(max_size=60))
def test_any_bytes_either_fail_cleanly_or_give_safe_segments(raw: bytes) -> None:
    result = normalized_or_none(raw)
    if result is None:
        return
    segments, _ = result
    for segment in segments:
        assert segment not in (b"", b".", b"..")
        assert b"/" not in segment


@given(RAW_PATHS)
@example(b"/a/%2e%2e/b/")
@example(b"/%25%32%65")  # "%2e" encoded once more: must stay a literal "%2e"
def test_encoding_normalised_segments_is_idempotent(raw: bytes) -> None:
    result = normalized_or_none(raw)
    if result is None:
        return
    segments, trailing_slash = result
    for segment in segments:
        assert segment not in (b"", b".", b"..")
        assert b"/" not in segment
    encoded = encode(segments, trailing_slash=trailing_slash)
    assert normalize(encoded.encode("ascii")) == (segments, trailing_slash)


ROUTES = [
    Route.from_config(RouteConfig(name="api", prefix="/api", upstream="http://u/base/path")),
    Route.from_config(
        RouteConfig(name="keep", prefix="/keep", upstream="http://u/kept", strip_prefix=False)
    ),
]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
@given(tail=RAW_PATHS)
@example(tail=b"/..")
@example(tail=b"/../..")
@example(tail=b"/%2e%2e/%2e%2e/x")
def test_a_path_under_a_prefix_never_leaves_the_base_path(route: Route, tail: bytes) -> None:
    raw = route.prefix.encode() + tail
    result = normalized_or_none(raw)
    if result is None:
        return
    segments, trailing_slash = result
    if segments[: len(route.prefix_segments)] != route.prefix_segments:
        return  # climbed out of the prefix: this route does not match it at all
    upstream_path = route.upstream_path(segments, trailing_slash)
    assert upstream_path == route.base_path or upstream_path.startswith(route.base_path + "/")
    # What the upstream resolves lies under the base path as well.
    upstream_segments, _ = normalize(upstream_path.encode("ascii"))
    base_segments, _ = normalize(route.base_path.encode())
    assert upstream_segments[: len(base_segments)] == base_segments
