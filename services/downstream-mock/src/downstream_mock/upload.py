"""`POST /upload`: multipart uploads, streamed, with the size and sha256 of every file.

A gateway test uploads files through the proxy and compares the hashes the mock reports
with its own: equal hashes prove the body went through whole and unchanged. The body is
parsed as it arrives and never stored, so a 100 MiB upload costs no more memory than a
small one.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from downstream_mock.errors import MockProblem, problem_responses
from downstream_mock.formdata import FormTooLarge, PartCollector
from downstream_mock.settings import Settings

MAX_PARTS = 1000
# Plain form fields are echoed back, so they are kept in memory: all of them together
# may hold this much. File parts are only hashed and have no such limit.
MAX_FIELD_BYTES = 1024 * 1024

PROBLEM_RESPONSES = problem_responses(
    {
        413: "Body larger than the limit",
        415: "Not multipart/form-data",
        422: "Malformed multipart body",
    }
)

# The body is read by hand, so FastAPI cannot infer it; this documents it for /docs.
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "additionalProperties": {"type": "string", "format": "binary"},
            }
        }
    },
}


class UploadedFile(BaseModel):
    field: str
    filename: str
    content_type: str | None
    size: int
    sha256: str


class UploadResult(BaseModel):
    files: list[UploadedFile]
    fields: dict[str, list[str]] = Field(description="parts without a filename, as text")
    total_bytes: int = Field(description="size of the whole request body as received")


def too_large(detail: str) -> MockProblem:
    return MockProblem(413, detail, slug="upload-too-large")


def malformed(detail: str) -> MockProblem:
    return MockProblem(422, detail, slug="malformed-multipart")


async def read_form(request: Request, max_bytes: int) -> UploadResult:
    media_type, params = parse_options_header(request.headers.get("content-type"))
    if media_type != b"multipart/form-data":
        raise MockProblem(415, "expected multipart/form-data", slug="unsupported-media-type")
    boundary = params.get(b"boundary")
    if not boundary:
        raise malformed("multipart/form-data without a boundary")
    declared = request.headers.get("content-length", "")
    # Refuse what is declared too large before reading a byte of it.
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(f"body of {declared} bytes is over the limit of {max_bytes}")
    collector = PartCollector(max_parts=MAX_PARTS, max_field_bytes=MAX_FIELD_BYTES)
    total = 0
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise too_large(f"body is over the limit of {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except FormTooLarge as exc:
        raise too_large(str(exc)) from exc
    except FormParserError as exc:
        raise malformed(f"malformed multipart body: {exc}") from exc
    if not collector.complete:
        raise malformed("body ended before the closing multipart boundary")
    files = [
        UploadedFile(
            field=f.field,
            filename=f.filename,
            content_type=f.content_type,
            size=f.size,
            sha256=f.sha256,
        )
        for f in collector.files
    ]
    return UploadResult(files=files, fields=collector.fields, total_bytes=total)


def upload_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["upload"])
    max_bytes = settings.max_upload_bytes

    @router.post(
        "/upload",
        operation_id="upload",
        summary="Receive a multipart upload; report each file's size and sha256.",
        description=(
            f"multipart/form-data, parsed as it streams in (up to {max_bytes} bytes, else "
            "413). JSON with each file part's field, filename, size and sha256, the text "
            "fields, and the body size. Not multipart is 415, a malformed body 422."
        ),
        responses=PROBLEM_RESPONSES,
        openapi_extra={"requestBody": UPLOAD_BODY},
    )
    async def upload(request: Request) -> UploadResult:
        return await read_form(request, max_bytes)

    return router
