"""The state every worker of one mock shares: items, flaky counters, faults, readiness.

It all lives in one directory (`MOCK_STATE_DIR`). Under gunicorn, `gunicorn.conf.py`
creates that directory in the master before it forks, so every worker opens the same
one; a single process without the setting gets a private temporary directory, removed
when it stops. Both only need a writable /tmp, so a read-only root filesystem is fine.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from downstream_mock.control import ControlFile
from downstream_mock.store import Store

STATE_DIR_PREFIX = "downstream-mock-"
DB_NAME = "state.sqlite3"
CONTROL_NAME = "control.json"


@dataclass
class SharedState:
    directory: Path
    store: Store
    control: ControlFile
    # Only a directory we made ourselves is ours to remove.
    owns_directory: bool

    @classmethod
    def open(cls, directory: Path | None) -> SharedState:
        owns = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix=STATE_DIR_PREFIX))
        else:
            directory.mkdir(parents=True, exist_ok=True)
        try:
            store = Store(directory / DB_NAME)
        except BaseException:
            if owns:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(directory, store, ControlFile(directory / CONTROL_NAME), owns)

    def close(self) -> None:
        self.store.close()
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
