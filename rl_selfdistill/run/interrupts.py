"""Graceful stops: the first SIGINT or SIGTERM ends training at the next rollout start, the second at once.

`GracefulStop` installs the handlers for a run's life (main thread only: Python delivers signals
there, and worker threads cannot install handlers). The first signal only sets a flag, which
`callbacks.StopAtRolloutStart` turns into leaving `learn()` once the rollout and update under way are
complete; the run then writes a checkpoint and raises `RunInterrupted`. A second signal exits the
process immediately, as a SIGKILL would: the run resumes from its last complete checkpoint.

Ctrl-C in a terminal signals the whole process group. `sigint_ignored_by_env_workers` keeps subprocess
env workers out of it (they inherit an ignored SIGINT), so that the rollout under way can finish.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; the run is resumable.

    A KeyboardInterrupt, so that callers that stop on Ctrl-C (a benchmark grid, a tuning study) stop here too.
    """

    def __init__(self, signum: int, run_dir: str, steps: int) -> None:
        super().__init__(signum, run_dir, steps)
        self.signum, self.run_dir, self.steps = signum, run_dir, steps

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as shells report a process ended by it (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class GracefulStop:
    """Signal handlers for one run; `signum` is the first signal received, None while none has come."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. a run inside a worker thread: the process's own handling applies
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            # os.write, not print: a handler may run in the middle of another write to stderr.
            _say(f"{name} again: stopping at once without a checkpoint; the run resumes from its last complete checkpoint")
            os._exit(128 + signum)
        self.signum = signum
        _say(f"{name}: finishing the current rollout and writing a checkpoint ({name} again stops at once)")


@contextlib.contextmanager
def sigint_ignored_by_env_workers() -> Iterator[None]:
    """SIGINT ignored while env worker processes start (fork, spawn and a forkserver started now inherit that).

    The parent stops them itself; SIGTERM stays as it was, since multiprocessing ends leftover workers with it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _say(line: str) -> None:
    os.write(2, (line + "\n").encode())
