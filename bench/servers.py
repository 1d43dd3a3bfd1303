"""How each server under test is started: the mock, the gateway, nginx, the baseline.

Every server listens on a free port of 127.0.0.1 and logs into the run's temporary
directory. All proxies forward `/mock/...` to the same mock with the prefix stripped,
so every path is driven with the same URL path.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import sys
from pathlib import Path

from procs import Service, Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
GUNICORN = str(BIN / "gunicorn")
PREFIX = "/mock"
READY_PATH = "/readyz"

NGINX_INSTALL = "sudo apt-get update && sudo apt-get install -y nginx-light wrk"


def nginx_path() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def start_mock(stack: Stack, *, workers: int) -> Service:
    port = free_port()
    state_dir = stack.workdir / "mock-state"
    state_dir.mkdir(exist_ok=True)
    env = {
        "MOCK_PORT": str(port),
        "MOCK_WORKERS": str(workers),
        "MOCK_STATE_DIR": str(state_dir),
        # The mock is the fixed cost under every path; its access log is off so that
        # more of the two cores is left for what is measured.
        "MOCK_ACCESS_LOG": "false",
        "MOCK_LOG_LEVEL": "warning",
        # No spans from the mock: exporting them would cost it CPU on every path.
        "OTEL_TRACES_EXPORTER": "none",
    }
    return stack.start(
        "mock",
        [
            GUNICORN,
            "-c",
            str(ROOT / "services/downstream-mock/gunicorn.conf.py"),
            "downstream_mock.app:create_app()",
        ],
        port=port,
        env=env,
        cwd=ROOT,
        backend=True,
    )


# Tracing on, every request sampled, spans exported over OTLP/HTTP to the endpoint
# given; the batch span processor keeps its defaults, as deployed.
TRACING_ENV = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_TRACES_SAMPLER": "always_on",
    "OTEL_SERVICE_NAME": "gateway-bench",
}


def start_gateway(
    stack: Stack,
    *,
    mock: Service,
    workers: int,
    name: str = "gateway",
    otlp_endpoint: str | None = None,
    pythonpath: str | None = None,
) -> Service:
    """The gateway as deployed: gunicorn, its own config, access log on (to a file).

    Tracing is off (`OTEL_TRACES_EXPORTER=none`) unless `otlp_endpoint` is given.
    `pythonpath` goes first on PYTHONPATH: a directory holding modified copies of
    `gateway`/`servicekit` runs those instead of the installed ones (an A/B variant).
    """
    port = free_port()
    tracing = (
        {**TRACING_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint}
        if otlp_endpoint
        else {"OTEL_TRACES_EXPORTER": "none"}
    )
    env = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_WORKERS": str(workers),
        "GATEWAY_ROUTES_FILE": str(BENCH / "routes.yaml"),
        "GATEWAY_ACCESS_LOG": "true",
        "GATEWAY_LOG_LEVEL": "info",
        "MOCK_UPSTREAM": mock.base_url,
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **tracing,
    }
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p
        )
    return stack.start(
        name,
        [
            GUNICORN,
            "-c",
            str(ROOT / "services/gateway/gunicorn.conf.py"),
            "gateway.app:create_app()",
        ],
        port=port,
        env=env,
        cwd=ROOT,
    )


def start_httpx_baseline(
    stack: Stack, *, mock: Service, name: str = "fastapi-httpx", without_sniffio: bool = False
) -> Service:
    """FastAPI route + one shared httpx.AsyncClient: the common pattern, for scale.

    `without_sniffio` hides sniffio, as in an image built without the dev tools (see
    baselines/without_sniffio/sniffio.py).
    """
    port = free_port()
    env = {"BASELINE_UPSTREAM": mock.base_url, "OTEL_TRACES_EXPORTER": "none"}
    if without_sniffio:
        shim = str(BENCH / "baselines" / "without_sniffio")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (shim, os.environ.get("PYTHONPATH")) if p)
    return stack.start(
        name,
        [
            GUNICORN,
            "--workers",
            "1",
            "--worker-class",
            "uvicorn_worker.UvicornWorker",
            "--bind",
            f"127.0.0.1:{port}",
            "--pythonpath",
            str(BENCH / "baselines"),
            "--no-control-socket",
            "fastapi_httpx:create_app()",
        ],
        port=port,
        env=env,
        cwd=ROOT,
    )


def start_proxy(
    stack: Stack,
    kind: str,
    *,
    name: str,
    mock: Service,
    workers: int,
    otlp_endpoint: str | None = None,
    pythonpath: str | None = None,
) -> Service:
    """Start one proxy of `kind`: gateway, nginx, fastapi-httpx, fastapi-httpx-nosniffio."""
    if kind == "gateway":
        return start_gateway(
            stack,
            mock=mock,
            workers=workers,
            name=name,
            otlp_endpoint=otlp_endpoint,
            pythonpath=pythonpath,
        )
    if kind == "nginx":
        return start_nginx(stack, mock=mock, workers=workers)
    if kind in ("fastapi-httpx", "fastapi-httpx-nosniffio"):
        return start_httpx_baseline(
            stack, mock=mock, name=name, without_sniffio=kind.endswith("nosniffio")
        )
    raise ValueError(f"unknown kind of proxy {kind!r}")


def start_otlp_sink(stack: Stack) -> Service:
    port = free_port()
    return stack.start(
        "otlp-sink",
        [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(port)],
        port=port,
        cwd=ROOT,
        backend=True,
    )


def nginx_conf(workdir: Path, *, port: int, upstream_port: int, workers: int) -> str:
    """A reverse proxy with upstream keep-alive, like one would put in front of a service.

    Its access log stays on (to a file), as the gateway's does; it sets the same
    forwarding headers the gateway sets.
    """
    user = ""
    if os.geteuid() == 0:
        # As root nginx would switch its workers to `nobody`, who cannot write here.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    return f"""\
{user}
worker_processes {workers};
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/nginx-access.log;
    default_type application/octet-stream;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    client_max_body_size 256m;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = {READY_PATH} {{ return 200 "ready\\n"; }}
        location {PREFIX}/ {{
            proxy_pass http://mock/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"""


def start_nginx(stack: Stack, *, mock: Service, workers: int) -> Service:
    nginx = nginx_path()
    if nginx is None:
        raise FileNotFoundError("nginx")
    port = free_port()
    conf = stack.workdir / "nginx.conf"
    conf.write_text(
        nginx_conf(stack.workdir, port=port, upstream_port=mock.port, workers=workers),
        encoding="utf-8",
    )
    return stack.start(
        "nginx",
        # -e: the error log before the config is read, else /var/log/nginx is tried.
        [
            nginx,
            "-p",
            str(stack.workdir),
            "-e",
            str(stack.workdir / "nginx-error.log"),
            "-c",
            str(conf),
        ],
        port=port,
    )
