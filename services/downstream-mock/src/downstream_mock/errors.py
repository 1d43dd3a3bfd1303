"""The errors the mock answers on purpose, and the one place that turns them into HTTP.

Routes raise `MockProblem` instead of building responses, so their return types stay
the success model and every deliberate error has the same problem+json shape (with the
request id) as the ones servicekit makes for 404, 405, 422 and 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from servicekit.problem import ProblemResponse


def status_title(status: int) -> str:
    """The reason phrase, also for codes without a registered one (520, 599)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Status {status}"


def problem_responses(described: Mapping[int | str, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for statuses answered with problem+json."""
    return {
        status: {"description": why, "content": {"application/problem+json": {}}}
        for status, why in described.items()
    }


class MockProblem(Exception):
    """Answer this request with `status` and a problem+json body of type `slug`."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str,
        title: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title
        self.extra = extra
        self.headers = headers


def install_error_handler(app: FastAPI) -> None:
    async def mock_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MockProblem)
        return ProblemResponse(
            exc.status,
            exc.detail,
            slug=exc.slug,
            title=exc.title or status_title(exc.status),
            extra=exc.extra,
            headers=exc.headers,
        )

    app.add_exception_handler(MockProblem, mock_problem)
