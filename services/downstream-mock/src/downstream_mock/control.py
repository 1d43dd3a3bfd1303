"""Faults and the readiness switch, shared by every worker through one small JSON file.

An operator flips these on one worker (`PUT /admin/faults`, `POST /admin/readyz/disable`)
and expects all workers to behave the same from then on. Writers replace the file
atomically (temporary file, then `os.replace`) under an exclusive lock, so a reader sees
the old or the new content, never half of either. Readers are on the hot path of every
request: they `stat` the file and parse it again only when its inode, size or mtime
changed, which is one cheap system call per request.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

_Stamp = tuple[int, int, int]


class Faults(BaseModel):
    """What the fault middleware does to every request it may touch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: float = Field(
        default=0.0, ge=0, le=1, allow_inf_nan=False, description="share of requests failed"
    )
    error_status: int = Field(default=503, ge=500, le=599, description="status of a failure")
    latency_seconds: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="added before every response"
    )
    latency_jitter_seconds: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="plus up to this much, at random"
    )

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or self.latency_seconds > 0 or self.latency_jitter_seconds > 0


class Control(BaseModel):
    """The whole content of the control file."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ready: bool = True
    faults: Faults = Faults()


class ControlFile:
    """The control file of one state directory, with a per-process read cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        # One attribute holding both, so a thread never sees a stamp with another's value.
        self._cached: tuple[_Stamp | None, Control] = (None, Control())

    def read(self) -> Control:
        """The current control, re-parsed only if another writer changed the file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return Control()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached_stamp, cached = self._cached
        if stamp == cached_stamp:
            return cached
        try:
            control = Control.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return Control()
        except ValidationError:
            # Only a hand-edited file can get here; keep serving with what we had.
            logger.warning("ignoring unreadable control file", extra={"path": str(self.path)})
            return cached
        self._cached = (stamp, control)
        return control

    def update(self, change: Callable[[Control], Control]) -> Control:
        """Apply `change` to the current control as one atomic read-modify-write.

        Blocking (file lock and I/O): call it from a worker thread, not the event loop.
        """
        with self._locked():
            current = self._read_uncached()
            new = change(current)
            self._write(new)
        return new

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock excludes other processes and, with a fresh open file each time, other
        # threads of this one too.
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_uncached(self) -> Control:
        try:
            return Control.model_validate_json(self.path.read_bytes())
        except (FileNotFoundError, ValidationError):
            return Control()

    def _write(self, control: Control) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".control-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(control.model_dump_json().encode())
            # Filesystem timestamps are often only as fine as a clock tick and inodes get
            # reused, so two quick writes of the same size could look unchanged to a
            # reader's stat. A strictly increasing mtime rules that out.
            mtime = time.time_ns()
            with suppress(FileNotFoundError):
                mtime = max(mtime, os.stat(self.path).st_mtime_ns + 1)
            os.utime(tmp, ns=(mtime, mtime))
            # No fsync: the state lives only as long as the service, in a temp directory.
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
