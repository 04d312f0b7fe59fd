"""CPU environments, GPU (or CPU) networks: how the two share the machine.

Observations: SB3's rollout loop already converts the whole (n_envs, ...) observation batch with
`obs_as_tensor(obs, device)` once per step, so the batch crosses to the GPU in one transfer, not per env.
Pinned memory is not used: SB3 consumes the tensor immediately (the forward pass waits for the copy), so a
non-blocking copy from pinned memory would save nothing, and staging the batch in a pinned buffer adds a
CPU copy. A (8, 4, 84, 84) uint8 Atari batch is 225 KB, i.e. microseconds over PCIe, next to milliseconds of
env stepping.

Threads: torch's intra-op pool defaults to one thread per core, and its OpenMP workers spin after each op.
With subproc workers or EnvPool threads stepping on the same few cores, that spinning competes with env
stepping. `configure_torch_threads` leaves cores to the env workers. Measured on a shared 2-core CPU machine
(PPO, Pong, 8 envs, RL Zoo Atari settings, 1024 steps, paired runs, `scripts/env_speed.py threads`): 1 torch
thread vs 2 gave median 32 vs 19 steps/s with EnvPool (2 threads: 0.59x) and 55 vs 17 steps/s with subproc
(0.31x).
"""

from __future__ import annotations

import os
import sys

import torch


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def recommended_torch_threads(n_envs: int, backend: str, cores: int | None = None) -> int:
    """Threads for torch given how many cores the env workers need.

    dummy steps envs in this process, between torch calls, so torch may use every core. subproc and envpool
    step envs in other processes/threads: give them one core per env up to all but one core, keep >= 1.
    """
    cores = cores or available_cores()
    if backend == "dummy":
        return cores
    return max(1, cores - min(n_envs, cores - 1))


def explicit_torch_threads() -> int | None:
    """The thread count the user set in the environment (RL_SELFDISTILL_TORCH_THREADS, else OMP_NUM_THREADS)."""
    explicit = os.environ.get("RL_SELFDISTILL_TORCH_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return int(explicit) if explicit and explicit.isdigit() and int(explicit) > 0 else None


def configure_torch_threads(n_envs: int, backend: str) -> int:
    """Set torch.set_num_threads for this env layout and return the number used.

    An explicit OMP_NUM_THREADS or RL_SELFDISTILL_TORCH_THREADS in the environment wins (user's choice).
    """
    threads = explicit_torch_threads()
    if threads is None:
        threads = recommended_torch_threads(n_envs, backend)
    torch.set_num_threads(threads)
    return threads


def busy_machine_note(planned_threads: int, cores: int | None = None, load: float | None = None) -> str | None:
    """A line for the user when other processes already keep cores busy and the planned torch threads would not fit.

    `load`: the 1-minute load average (default: the machine's), read before this command's runs start, so it counts
    other jobs. Not acted on (the load may be a job that just ended): oversubscribed OpenMP threads wait on each
    other for whole time slices, measured 10-60x slower on 2 cores, and only the user knows what else will run.
    """
    cores = cores or available_cores()
    if load is None:
        if not hasattr(os, "getloadavg"):
            return None
        load = os.getloadavg()[0]
    busy = round(load)
    if busy < 1 or busy + planned_threads <= cores:
        return None
    return (
        f"note: this machine is already busy (load average {load:.1f} over the last minute, {cores} cores) and these "
        f"runs plan {planned_threads} torch threads; oversubscribed, training can run 10x slower or worse. Beside other "
        "jobs, give this one its share: --cpus-per-run N (benchmark), RL_SELFDISTILL_TORCH_THREADS=N (tune, train)"
    )


def say_if_busy(planned_threads: int) -> None:
    """Print `busy_machine_note` to stderr when there is one (benchmark and tune, before their runs start)."""
    note = busy_machine_note(planned_threads)
    if note:
        print(note, file=sys.stderr, flush=True)
