"""Gunicorn settings shared by both services' `gunicorn.conf.py`.

Production serving is gunicorn managing uvicorn workers (the `uvicorn-worker` package;
`uvicorn.workers` is deprecated). Everything tunable comes from the service's settings,
so the container, compose and the chart configure it through environment variables.
"""

from __future__ import annotations

from typing import Any

from servicekit.settings import ServiceSettings


def gunicorn_options(
    settings: ServiceSettings, *, worker_class: str = "servicekit.workers.ServiceWorker"
) -> dict[str, Any]:
    """Values for the module namespace of a gunicorn config file."""
    return {
        "bind": [f"{settings.host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": worker_class,
        # On SIGTERM a worker stops accepting, finishes in-flight requests for up to
        # this long, then is killed.
        "graceful_timeout": settings.graceful_timeout,
        # Must outlast the idle timeout of any connection pool in front of us, or the
        # pool may reuse a connection at the moment we close it.
        "keepalive": settings.keepalive,
        # Heartbeat timeout for a stuck worker; uvicorn workers notify from their loop.
        "timeout": 60,
        # The app writes the access log; gunicorn's own would duplicate it.
        "accesslog": None,
        "logconfig_dict": gunicorn_logconfig(settings.log_level),
        # gunicorn's control socket would need a writable home; nothing here uses it.
        "control_socket_disable": True,
        # The client address is the TCP peer; forwarding headers are the app's business.
        "forwarded_allow_ips": "",
    }


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """JSON lines for the gunicorn master too, so every line on stdout parses."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stdout",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "servicekit.logs.JsonFormatter"}},
        "handlers": {"stdout": handler},
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
