"""gunicorn worker classes: uvicorn workers with the headers a service should send."""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]


class ServiceWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn on uvloop and httptools, without a `Server` header advertising either."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "server_header": False,
    }


class ProxyWorker(ServiceWorker):
    """For the gateway: the upstream's `Date` passes through, so uvicorn must not add one."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**ServiceWorker.CONFIG_KWARGS, "date_header": False}
