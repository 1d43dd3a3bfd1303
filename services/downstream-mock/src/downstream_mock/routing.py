"""Routes that answer any method, each method with its own OpenAPI operation id.

One FastAPI route with several methods would repeat its `operation_id` once per method,
which OpenAPI forbids (and FastAPI warns about), so each method gets its own route and
an id such as `echo_post`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

ANY_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def add_any_method_route(
    router: APIRouter,
    path: str,
    endpoint: Callable[..., Any],
    *,
    operation_id: str,
    summary: str,
    description: str,
    **options: Any,
) -> None:
    for method in ANY_METHODS:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            operation_id=f"{operation_id}_{method.lower()}",
            summary=summary,
            description=description,
            **options,
        )
