from __future__ import annotations

import os
import runpy
import tempfile
from pathlib import Path

import pytest

from downstream_mock.settings import Settings
from downstream_mock.state import STATE_DIR_PREFIX
from servicekit.serving import gunicorn_options

CONF = Path(__file__).resolve().parents[1] / "gunicorn.conf.py"
# What servicekit.serving records of the temporary directories the master made.
OWNED = "SERVICEKIT_OWNED_TEMP_DIRS"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # setenv first, so that monkeypatch restores the absence of what the file sets.
    for name in ("MOCK_STATE_DIR", OWNED, "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def _comparable(value: object) -> object:
    return getattr(value, "__qualname__", value) if callable(value) else value


def test_options_come_from_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MOCK_PORT", "18081")
    clean_env.setenv("MOCK_WORKERS", "3")
    conf = runpy.run_path(str(CONF))
    try:
        assert conf["bind"] == ["127.0.0.1:18081"]
        assert conf["workers"] == 3
        shared = gunicorn_options(Settings(), service_name="downstream-mock")
        # The hooks are closures, new on every call: compare their names instead.
        assert {name: _comparable(conf[name]) for name in shared} == {
            name: _comparable(value) for name, value in shared.items()
        }
    finally:
        conf["on_exit"](None)


def test_master_makes_the_shared_state_dir_and_removes_it(clean_env: pytest.MonkeyPatch) -> None:
    conf = runpy.run_path(str(CONF))
    state_dir = Path(os.environ["MOCK_STATE_DIR"])
    assert state_dir.is_dir()
    # Run again, as gunicorn does on SIGHUP: same directory, still removed at exit.
    runpy.run_path(str(CONF))
    assert Path(os.environ["MOCK_STATE_DIR"]) == state_dir
    conf["on_exit"](None)
    assert not state_dir.exists()


def test_a_given_state_dir_is_left_alone(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("MOCK_STATE_DIR", str(tmp_path))
    conf = runpy.run_path(str(CONF))
    conf["on_exit"](None)
    assert tmp_path.is_dir()


def test_a_bad_setting_stops_the_master(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MOCK_WORKERS", "0")
    before = set(Path(tempfile.gettempdir()).glob(f"{STATE_DIR_PREFIX}*"))
    with pytest.raises(SystemExit, match="MOCK_WORKERS"):
        runpy.run_path(str(CONF))
    # Nothing was made that no on_exit would remove.
    assert "MOCK_STATE_DIR" not in os.environ
    assert set(Path(tempfile.gettempdir()).glob(f"{STATE_DIR_PREFIX}*")) == before
