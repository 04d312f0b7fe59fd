"""Executing grid cells: one training run per job, on a local process pool or as Ray tasks.

Both backends call the same `execute_run`, which goes through `rl_selfdistill.run` exactly
as `rl-selfdistill train` does, so a benchmark run is indistinguishable from a train run.
Scheduling is left to `concurrent.futures` and Ray respectively.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_selfdistill.benchmark.grid import RunSpec, RunState, diverged_note, run_state
from rl_selfdistill.run import rundir
from rl_selfdistill.run.checkpoints import UnrecoverableCheckpoints

# Ray's object store only carries small job descriptions and outcomes here.
_RAY_OBJECT_STORE_BYTES = 100 * 2**20


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs to run (or resume) one grid cell; picklable."""

    spec: RunSpec
    run_dir: Path
    hyperparams: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    wandb_group: str | None = None
    tags: tuple[str, ...] = ()
    torch_threads: int = 1


@dataclass(frozen=True)
class RunOutcome:
    label: str
    run_dir: str
    action: str  # "trained" | "resumed" | "skipped"
    wall_s: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def execute_run(job: RunJob) -> RunOutcome:
    """Train, resume or skip one cell. Errors are returned, not raised, so one bad run does not end the grid."""
    from rl_selfdistill.run.divergence import RunDiverged

    limit_threads(job.torch_threads)
    state = run_state(job.run_dir)
    if state is RunState.FINISHED:
        return RunOutcome(job.spec.label, str(job.run_dir), "skipped", 0.0)
    if state is RunState.DIVERGED:  # the same seed and settings would diverge again: reported, not retrained
        return RunOutcome(job.spec.label, str(job.run_dir), "skipped", 0.0, diverged_note(job.run_dir))
    action = "resumed" if state is RunState.INTERRUPTED else "trained"
    start = time.monotonic()
    try:
        _train_or_resume(job, state)
    except UnrecoverableCheckpoints as error:  # not restarted behind the user's back: they decide, with this command
        restart = rundir.format_command([rundir.PROGRAM, "train", "--resume", job.run_dir, "--restart-if-unrecoverable"])
        message = f"{error.problem}; to start this cell over from step 0, run `{restart}`, then the benchmark again"
        return RunOutcome(job.spec.label, str(job.run_dir), action, time.monotonic() - start, message)
    except RunDiverged:  # a result of these settings, not a crash: one line from run.json, no traceback
        return RunOutcome(job.spec.label, str(job.run_dir), action, time.monotonic() - start, diverged_note(job.run_dir))
    except Exception as error:  # noqa: BLE001 - reported per run, the grid goes on
        traceback.print_exc()  # the worker's stderr keeps the full story; the outcome carries one line
        message = f"{type(error).__name__}: {error}"
        return RunOutcome(job.spec.label, str(job.run_dir), action, time.monotonic() - start, message)
    return RunOutcome(job.spec.label, str(job.run_dir), action, time.monotonic() - start)


def _train_or_resume(job: RunJob, state: RunState) -> None:
    from rl_selfdistill.run import resume_training, run_training

    if state is RunState.INTERRUPTED and not _resumable(job.run_dir):
        set_aside(job.run_dir)
        state = RunState.MISSING
    if state is RunState.INTERRUPTED:
        resume_training(job.run_dir, changes=thread_change(job))
    else:
        run_training(build_train_request(job))


def thread_change(job: RunJob) -> dict[str, Any]:
    """The grid's thread share for a resumed cell, when its config.yaml recorded another.

    Without it a cell started with all cores keeps them when resumed beside other jobs (`--cpus-per-run 1`), and the
    oversubscribed OpenMP threads wait on each other: measured 10-60x slower.
    """
    recorded = rundir.read_raw_config(job.run_dir)["options"].get("num_threads")
    return {} if recorded == job.torch_threads else {"num_threads": job.torch_threads}


def _resumable(run_dir: Path) -> bool:
    """A run killed before it wrote its config and state has nothing to resume from."""
    return (run_dir / rundir.CONFIG).is_file() and rundir.read_run_info(run_dir) is not None


def set_aside(run_dir: Path) -> Path:
    """Rename an unusable run directory instead of deleting it (the user may want to look at it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = run_dir.with_name(f"{run_dir.name}.incomplete-{stamp}")
    run_dir.rename(target)
    return target


def build_train_request(job: RunJob) -> Any:
    """The `TrainRequest` the `train` command would build for this cell (quiet: no progress bar, no log table)."""
    from rl_selfdistill.run import TrainRequest

    options = {key: value for key, value in job.train_options.items() if value is not None}
    return TrainRequest(
        algo=job.spec.algo,
        env_id=job.spec.env_id,
        n_timesteps=job.spec.n_timesteps,
        seed=job.spec.seed,
        hyperparams=dict(job.hyperparams),
        env_kwargs=dict(job.env_kwargs),
        run_dir=job.run_dir,
        wandb_group=job.wandb_group,
        extra_tags=list(job.tags),
        num_threads=job.torch_threads,
        progress=False,
        verbose=0,
        command=train_command(job),
        **options,
    )


def train_command(job: RunJob) -> str:
    """The `rl-selfdistill train` command that reproduces this cell on its own (recorded in command.txt)."""
    options: dict[str, Any] = {
        "--algo": job.spec.algo,
        "--env": job.spec.env_id,
        "-n": job.spec.n_timesteps,
        "--seed": job.spec.seed,
        "--run-dir": job.run_dir,
        **{f"--{key.replace('_', '-')}": value for key, value in job.train_options.items()},
        "--num-threads": job.torch_threads,
        "--wandb-group": job.wandb_group,
        "--tags": job.tags,
        "-params": [f"{key}:{json.dumps(value)}" for key, value in job.hyperparams.items()],
        "--env-kwargs": [f"{key}:{json.dumps(value)}" for key, value in job.env_kwargs.items()],
        "--no-progress": True,
        "--verbose": 0,
    }
    return rundir.format_command([rundir.PROGRAM, "train"], options)


def limit_threads(n_threads: int) -> None:
    """Cap this worker's native thread pools (OpenMP, MKL) so `workers` concurrent runs do not oversubscribe the cores.

    The run itself gets its torch thread count explicitly (TrainRequest.num_threads).
    """
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(n_threads)
    import torch

    torch.set_num_threads(n_threads)


def threads_per_worker(workers: int, cpu_count: int | None = None) -> int:
    return max(1, (cpu_count or os.cpu_count() or 1) // max(1, workers))


def run_local(jobs: list[RunJob], workers: int) -> Iterator[RunOutcome]:
    """A process pool; each run gets a fresh process so no torch, W&B or RNG state leaks between runs."""
    if not jobs:
        return
    # spawn, not fork: forking a process that already initialised torch threads can deadlock.
    context = multiprocessing.get_context("spawn")
    slots = min(workers, len(jobs))
    pool = ProcessPoolExecutor(max_workers=slots, mp_context=context, max_tasks_per_child=1)
    # At most one job per worker is ever submitted: the executor forwards a queued job to a worker process as soon
    # as it can, so with the whole grid submitted a Ctrl-C (which reaches the workers too: they checkpoint and stop)
    # still started the next cell before shutdown could cancel it.
    pending = iter(jobs)
    running = {pool.submit(execute_run, job) for job in itertools.islice(pending, slots)}
    try:
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                running |= {pool.submit(execute_run, job) for job in itertools.islice(pending, 1)}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(
    jobs: list[RunJob], address: str | None, workers: int, cpus_per_run: float, gpus_per_run: float
) -> Iterator[RunOutcome]:
    """One Ray task per run; Ray places tasks by their `num_cpus`/`num_gpus`.

    Without `address` a local Ray instance sized to `workers` runs at a time is started and
    stopped again; with one (`auto` or `ray://...`) the cluster's resources decide concurrency.
    """
    if not jobs:
        return
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(**_ray_init_kwargs(address, workers, cpus_per_run))
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(execute_run)
        waiting = [task.remote(job) for job in jobs]
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def _ray_init_kwargs(address: str | None, workers: int, cpus_per_run: float) -> dict[str, Any]:
    if address:
        return {"address": address, "log_to_driver": True}
    return {
        "num_cpus": max(1, round(workers * cpus_per_run)),
        "include_dashboard": False,
        "object_store_memory": _RAY_OBJECT_STORE_BYTES,
        "log_to_driver": True,
    }
