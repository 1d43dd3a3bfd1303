"""Gunicorn settings and hooks shared by both services' `gunicorn.conf.py`.

Production serving is gunicorn managing uvicorn workers (the `uvicorn-worker` package;
`uvicorn.workers` is deprecated). Everything tunable comes from the service's settings,
so the container, compose and the chart configure it through environment variables.

The hooks put telemetry where it belongs: the metrics directory is emptied in the
master before any worker starts, each worker builds its own tracer provider after fork
and flushes it on exit, and the master marks a dead worker's gauges as gone.

Import nothing from prometheus_client here: it picks single- or multi-process mode when
first imported, which must happen after `PROMETHEUS_MULTIPROC_DIR` is set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from servicekit.settings import ServiceSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Temporary directories this master made, removed again when it exits. Kept in the
# environment because gunicorn re-reads the config file on SIGHUP.
_OWNED_DIRS_ENV = "SERVICEKIT_OWNED_TEMP_DIRS"


def own_temp_dir(env_name: str, prefix: str) -> str:
    """`$env_name`, or a new temporary directory exported under that name.

    Called in the master before forking, so every worker inherits the same directory.
    The temp directory is writable even with a read-only root filesystem.
    """
    existing = os.environ.get(env_name)
    if existing:
        return existing
    path = tempfile.mkdtemp(prefix=prefix)
    os.environ[env_name] = path
    _remember_owned(path)
    return path


def _remember_owned(path: str) -> None:
    owned = [p for p in os.environ.get(_OWNED_DIRS_ENV, "").split(os.pathsep) if p]
    os.environ[_OWNED_DIRS_ENV] = os.pathsep.join([*owned, path])


def export_metrics_dir(service_name: str) -> str:
    """First thing in a gunicorn config file: choose the metrics directory.

    prometheus_client decides between single- and multi-process mode when it is first
    imported, and a service's modules may import it, so this must run before the config
    file imports anything of the service's. Workers inherit the variable. Only the name is
    chosen here (the master's pid makes it unique); `on_starting` creates and empties it,
    so a config file that then stops on a bad setting leaves nothing behind.
    """
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        return existing
    path = os.path.join(tempfile.gettempdir(), f"{service_name}-metrics-{os.getpid()}")
    os.environ[MULTIPROC_ENV] = path
    _remember_owned(path)
    return path


def gunicorn_options(
    settings: ServiceSettings,
    *,
    service_name: str,
    worker_class: str = "servicekit.workers.ServiceWorker",
) -> dict[str, Any]:
    """Values and hooks for the module namespace of a gunicorn config file."""

    def on_starting(server: Any) -> None:
        # In the master, before any worker exists to inherit the environment; a config
        # file that did not call export_metrics_dir still gets a shared directory.
        export_metrics_dir(service_name)
        from servicekit.metrics import prepare_multiprocess_dir  # noqa: PLC0415

        prepare_multiprocess_dir()

    def post_fork(server: Any, worker: Any) -> None:
        from servicekit.metrics import pin_worker_pid  # noqa: PLC0415
        from servicekit.tracing import install_tracer_provider  # noqa: PLC0415

        pin_worker_pid()  # before the app, and with it any metric, exists
        install_tracer_provider(service_name)

    def worker_exit(server: Any, worker: Any) -> None:
        from servicekit.tracing import shutdown_tracer_provider  # noqa: PLC0415

        shutdown_tracer_provider()

    def child_exit(server: Any, worker: Any) -> None:
        from servicekit.metrics import worker_exited  # noqa: PLC0415

        worker_exited(worker.pid)

    def on_exit(server: Any) -> None:
        for path in os.environ.get(_OWNED_DIRS_ENV, "").split(os.pathsep):
            if path:
                shutil.rmtree(path, ignore_errors=True)

    return {
        "bind": [f"{settings.host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": worker_class,
        "proc_name": service_name,
        # On SIGTERM a worker keeps serving for drain_delay (readiness already 503), then
        # stops accepting and finishes in-flight requests; gunicorn kills it this long
        # after the SIGTERM, drain included (see servicekit.drain).
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
        "on_starting": on_starting,
        "post_fork": post_fork,
        "worker_exit": worker_exit,
        "child_exit": child_exit,
        "on_exit": on_exit,
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
