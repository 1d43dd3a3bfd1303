"""Path normalisation: the one defence that keeps a request inside its route's prefix.

The raw request target is split on literal slashes first and each segment is decoded
afterwards, so an encoded slash can never become a separator. Dot segments are then
resolved (decoded ones too: `%2e%2e` is `..`), and the result is what routing matches
and what the upstream receives, re-encoded. Anything ambiguous is refused rather than
guessed at: encoded slashes and backslashes, NUL and control bytes, malformed escapes,
and `..` that would climb above the root.
"""

from __future__ import annotations

import re
from urllib.parse import quote_from_bytes, unquote_to_bytes

from gateway.errors import BadPath

_MALFORMED_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_DECODED = re.compile(rb"[/\\\x00-\x1f\x7f]")
# RFC 3986 pchar minus "%": what a segment may hold unescaped.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"

Segments = tuple[bytes, ...]


def normalize(raw_path: bytes) -> tuple[Segments, bool]:
    """Decoded segments of `raw_path` with dot segments resolved, and whether it ended in '/'.

    Raises `BadPath` for anything that could be read two ways.
    """
    if not raw_path.startswith(b"/"):
        raise BadPath("the path must start with '/'")
    if _MALFORMED_ESCAPE.search(raw_path):
        raise BadPath("the path has a malformed percent-escape")
    segments: list[bytes] = []
    raw_segments = raw_path.split(b"/")
    for raw in raw_segments[1:]:
        if not raw:
            continue  # "//" is "/", as nginx's merge_slashes has it
        segment = unquote_to_bytes(raw) if b"%" in raw else raw
        if _FORBIDDEN_DECODED.search(segment):
            raise BadPath("the path has an encoded slash, backslash or control byte")
        # "..;x" is ".." to some servlet containers: treat path parameters as part of it.
        bare = segment.split(b";", 1)[0]
        if bare == b".":
            if segment != b".":
                raise BadPath("the path has a dot segment with parameters")
            continue
        if bare == b"..":
            if segment != b".." or not segments:
                raise BadPath("the path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    trailing_slash = len(raw_segments) > 2 and raw_segments[-1] == b"" and bool(segments)
    return tuple(segments), trailing_slash


def encode(segments: Segments, *, trailing_slash: bool = False) -> str:
    """The path for the upstream: each segment percent-encoded, joined by '/'."""
    path = "/" + "/".join(quote_from_bytes(s, safe=_SEGMENT_SAFE) for s in segments)
    if trailing_slash and segments:
        path += "/"
    return path
