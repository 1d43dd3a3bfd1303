from __future__ import annotations

import json
import logging
import logging.config
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gunicorn.config import Config
from pydantic_settings import SettingsConfigDict
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from servicekit.logs import JsonFormatter
from servicekit.serving import (
    _OWNED_DIRS_ENV,
    MULTIPROC_ENV,
    gunicorn_logconfig,
    gunicorn_options,
    own_temp_dir,
)
from servicekit.settings import ServiceSettings
from servicekit.workers import ProxyWorker, ServiceWorker


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")


@pytest.fixture(autouse=True)
def _metrics_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`gunicorn_options` exports a metrics directory; keep that out of this process."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "metrics"))
    monkeypatch.delenv(_OWNED_DIRS_ENV, raising=False)


def settings() -> DemoSettings:
    return DemoSettings(host="0.0.0.0", port=8080, workers=3, graceful_timeout=20)


def gunicorn_config(options: dict[str, object]) -> Config:
    """A real gunicorn Config: unknown names and bad values fail here, as at start-up."""
    config = Config()
    for name, value in options.items():
        config.set(name, value)
    return config


def test_options_are_what_the_settings_say() -> None:
    options = gunicorn_options(settings(), service_name="svc")
    assert options["bind"] == ["0.0.0.0:8080"]
    assert options["workers"] == 3
    assert options["graceful_timeout"] == 20
    assert isinstance(options["graceful_timeout"], int)
    assert options["keepalive"] == 75
    assert options["accesslog"] is None


def test_gunicorn_accepts_every_option() -> None:
    # Config.set validates each value, hooks' arity included.
    config = gunicorn_config(gunicorn_options(settings(), service_name="svc"))
    assert config.address == [("0.0.0.0", 8080)]
    assert config.workers == 3
    assert config.graceful_timeout == 20
    assert config.worker_class is ServiceWorker  # importable, and imported by gunicorn
    assert config.proc_name == "svc"


def test_an_exported_directory_is_kept(tmp_path: Path) -> None:
    assert own_temp_dir(MULTIPROC_ENV, "svc-") == str(tmp_path / "metrics")
    assert _OWNED_DIRS_ENV not in os.environ


def test_a_new_directory_is_exported_for_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVING_TEST_DIR", raising=False)
    made = own_temp_dir("SERVING_TEST_DIR", "svc-test-")
    try:
        assert os.path.isdir(made)
        assert os.environ["SERVING_TEST_DIR"] == made
        assert made in os.environ[_OWNED_DIRS_ENV].split(os.pathsep)  # removed on exit
    finally:
        os.rmdir(made)
        monkeypatch.delenv("SERVING_TEST_DIR")


@pytest.mark.parametrize("worker", [ServiceWorker, ProxyWorker])
def test_worker_classes_are_uvicorn_worker_subclasses(worker: type[UvicornWorker]) -> None:
    path = f"{worker.__module__}.{worker.__qualname__}"
    config = gunicorn_config(gunicorn_options(settings(), service_name="svc", worker_class=path))
    assert config.worker_class is worker
    assert issubclass(worker, UvicornWorker)  # the maintained package, not uvicorn.workers
    assert worker.CONFIG_KWARGS["server_header"] is False


def test_the_proxy_worker_leaves_the_date_header_to_the_upstream() -> None:
    assert ProxyWorker.CONFIG_KWARGS["date_header"] is False
    assert "date_header" not in ServiceWorker.CONFIG_KWARGS
    # UvicornWorker's event loop is kept; the parser is httptools, with guards added.
    assert ProxyWorker.CONFIG_KWARGS["loop"] == UvicornWorker.CONFIG_KWARGS["loop"]
    assert issubclass(ProxyWorker.CONFIG_KWARGS["http"], HttpToolsProtocol)


def test_the_master_logs_json(capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig(gunicorn_logconfig("info"))
    root = logging.getLogger()
    assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)

    logging.getLogger("gunicorn.error").info("Booting worker")
    line = capsys.readouterr().out.splitlines()[-1]
    assert json.loads(line)["msg"] == "Booting worker"


def test_start_up_objects_are_frozen_out_of_collections() -> None:
    # In a fresh interpreter: this one's heap belongs to pytest.
    code = (
        "import gc\n"
        "from servicekit.workers import freeze_startup_heap\n"
        "before = gc.get_freeze_count()\n"
        "freeze_startup_heap()\n"
        "print(before, gc.get_freeze_count())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen = result.stdout.split()
    assert int(before) == 0
    assert int(frozen) > 10_000  # the imported modules' objects, at least
