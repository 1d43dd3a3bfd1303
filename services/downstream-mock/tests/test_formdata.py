from __future__ import annotations

import hashlib

import pytest
from python_multipart.multipart import MultipartParser

from downstream_mock.formdata import FormTooLarge, PartCollector


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--B\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--B--\r\n"


def parse(
    body: bytes, *, chunk: int, max_parts: int = 10, max_field_bytes: int = 100
) -> PartCollector:
    collector = PartCollector(max_parts=max_parts, max_field_bytes=max_field_bytes)
    parser = MultipartParser(b"B", collector.callbacks())
    for offset in range(0, len(body), chunk):
        parser.write(body[offset : offset + chunk])
    parser.finalize()
    return collector


@pytest.mark.parametrize("chunk", [1, 3, 17, 4096])
def test_any_chunking_gives_the_same_result(chunk: int) -> None:
    # Almost a delimiter (`\r\n--B`), to show the parser does not cut the file there.
    data = bytes(range(256)) * 10 + b"\r\n--C\r\n-"
    collector = parse(form(("f", data, "x.bin"), ("note", b"hi", None)), chunk=chunk)
    assert collector.complete
    assert [(f.field, f.filename, f.size, f.sha256) for f in collector.files] == [
        ("f", "x.bin", len(data), hashlib.sha256(data).hexdigest())
    ]
    assert collector.fields == {"note": ["hi"]}


def test_incomplete_body_is_not_complete() -> None:
    body = form(("f", b"data", "x"))
    collector = parse(body[:-10], chunk=1000)
    assert not collector.complete


def test_too_many_parts() -> None:
    body = form(*[(f"f{i}", b"", None) for i in range(4)])
    with pytest.raises(FormTooLarge, match="more than 3 parts"):
        parse(body, chunk=1000, max_parts=3)


def test_field_text_is_bounded_but_files_are_not() -> None:
    assert parse(form(("f", b"x" * 1000, "big")), chunk=64).files[0].size == 1000
    with pytest.raises(FormTooLarge):
        parse(form(("a", b"x" * 60, None), ("b", b"y" * 41, None)), chunk=64)
