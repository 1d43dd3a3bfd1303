"""Streaming multipart/form-data: hash file parts as they arrive, keep only small fields.

Built on python-multipart's low-level `MultipartParser`, which calls back with slices of
whatever chunk it was fed. Nothing here holds a file part, so memory stays flat however
large the upload; only plain form fields are kept, and only up to `max_field_bytes`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.multipart import parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


class FormTooLarge(Exception):
    """The form has more parts, or more field text, than the mock will keep."""


@dataclass
class FilePart:
    field: str
    filename: str
    content_type: str | None
    size: int
    sha256: str


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0
    value: bytearray = field(default_factory=bytearray)


def _text(raw: bytes) -> str:
    # Browsers send field names and filenames as raw UTF-8 (RFC 7578 section 5.1).
    return raw.decode("utf-8", errors="replace")


class PartCollector:
    """Receives the parser's callbacks and collects what the upload response reports."""

    def __init__(self, *, max_parts: int, max_field_bytes: int) -> None:
        self.files: list[FilePart] = []
        self.fields: dict[str, list[str]] = {}
        self.complete = False
        self._max_parts = max_parts
        self._field_bytes_left = max_field_bytes
        self._parts = 0
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise FormTooLarge(f"more than {self._max_parts} parts")
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        # The parser bounds each header line, so these buffers stay small.
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        part = self._part
        _, options = parse_options_header(part.headers.get(b"content-disposition"))
        part.name = _text(options.get(b"name", b""))
        filename = options.get(b"filename")
        part.filename = None if filename is None else _text(filename)
        content_type = part.headers.get(b"content-type")
        part.content_type = None if content_type is None else content_type.decode("latin-1")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.filename is not None:
            part.digest.update(memoryview(data)[start:end])
            part.size += end - start
            return
        self._field_bytes_left -= end - start
        if self._field_bytes_left < 0:
            raise FormTooLarge("form fields (parts without a filename) are too large")
        part.value += data[start:end]

    def _on_part_end(self) -> None:
        part = self._part
        if part.filename is None:
            self.fields.setdefault(part.name, []).append(_text(bytes(part.value)))
            return
        self.files.append(
            FilePart(
                part.name, part.filename, part.content_type, part.size, part.digest.hexdigest()
            )
        )

    def _on_end(self) -> None:
        # Only the closing boundary gets here; a body cut short never does.
        self.complete = True
