"""Gunicorn configuration for the downstream-mock.

    gunicorn -c services/downstream-mock/gunicorn.conf.py 'downstream_mock.app:create_app()'

Everything tunable comes from `MOCK_*` variables (port, workers, timeouts, log level).
The one thing added here is the state directory the workers share: items, flaky
counters, faults and readiness must be the same whichever worker a request lands on,
so the master picks the directory before it forks and every worker inherits it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from downstream_mock.settings import Settings
from downstream_mock.state import STATE_DIR_PREFIX
from servicekit.serving import gunicorn_options
from servicekit.settings import load_settings

# Set by this file when it created the state directory, so that only a directory we
# made is removed on exit. In the environment rather than in a variable because
# gunicorn runs this file again on SIGHUP and the second run must not forget it.
_OWNED_STATE_DIR = "DOWNSTREAM_MOCK_OWNED_STATE_DIR"

# Validated here too, so that a bad setting stops the master with one clear line
# instead of every worker failing to boot; and before making a directory it would leak.
globals().update(gunicorn_options(load_settings(Settings)))

if not os.environ.get("MOCK_STATE_DIR"):
    # Under the temp directory, which is writable even with a read-only root filesystem.
    os.environ["MOCK_STATE_DIR"] = tempfile.mkdtemp(prefix=STATE_DIR_PREFIX)
    os.environ[_OWNED_STATE_DIR] = os.environ["MOCK_STATE_DIR"]


def on_exit(server: Any) -> None:
    owned = os.environ.get(_OWNED_STATE_DIR)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)
