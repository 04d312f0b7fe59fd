"""One process per run directory: an OS lock (`fcntl.flock`) on RUN_DIR/run.lock, held for the run's life.

The kernel releases a flock when its holder dies, however it dies (even SIGKILL), so a lock is never
stale: a run whose holder is gone is simply free. The file also records the holder's PID, host and
start time, rewritten by every new holder, so that a refused process can say who holds the run.

flock is reliable on local file systems. On network file systems it depends on the server (NFSv4 and
Lustre with `flock` mount options support it); without that support two hosts may not see each other's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

import rl_selfdistill.run.rundir as rundir
from rl_selfdistill.errors import UsageError

# The holder writes its details right after taking the lock; a reader that finds the file empty waits this long.
_HOLDER_WRITE_WAIT_S = 1.0


class RunLocked(UsageError):
    """Another live process holds the run directory."""


class RunLock:
    """The held lock of one run directory; `release()` (or the process's end) frees it."""

    def __init__(self, run_dir: Path, handle: IO[str]) -> None:
        self.run_dir = Path(run_dir)
        self._handle: IO[str] | None = handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        # Unlock before closing: the close alone would also release it, but this says when.
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / rundir.LOCK


def acquire(run_dir: Path) -> RunLock:
    """Take the run directory's lock without waiting; `RunLocked` names the holder when a live process has it."""
    path = lock_path(run_dir)
    # "a+": create if missing, never truncate before the lock is ours (the holder's details must survive a refusal).
    handle = open(path, "a+")  # noqa: SIM115 - kept open for the run's life, closed by RunLock.release
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunLocked(
            f"run directory {str(run_dir)!r} is in use by {_describe(holder(run_dir))}; "
            "wait for that process to end or stop it, then try again"
        ) from None
    except OSError as error:
        handle.close()
        raise UsageError(f"cannot lock run directory {str(run_dir)!r} ({error.strerror}); use a local file system") from None
    _write_holder(handle)
    return RunLock(run_dir, handle)


def holder(run_dir: Path) -> dict[str, Any]:
    """The details the current (or last) holder wrote: pid, host, since; empty when there are none yet."""
    deadline = time.monotonic() + _HOLDER_WRITE_WAIT_S
    while True:
        try:
            info = json.loads(lock_path(run_dir).read_text() or "null")
        except (OSError, json.JSONDecodeError):
            info = None  # being written right now
        if isinstance(info, dict) or time.monotonic() >= deadline:
            return info if isinstance(info, dict) else {}
        time.sleep(0.05)


def _write_holder(handle: IO[str]) -> None:
    """Replace the previous holder's details with ours (a dead holder's PID must not be reported again)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": rundir.utc_now()}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(info) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (its PID and host are not recorded yet)"
    return f"PID {info.get('pid')} on host {info.get('host')} (since {info.get('since')})"
