"""The study: file-backed storage, resume after a kill, and worker processes sharing it.

Storage: an Optuna journal file, STUDY_DIR/study.journal. Every change is one line appended with
one write and an fsync under a file lock, so several processes can share it without a database
server, and a process killed between two changes leaves a file that replays to the state before
the kill. SQLite, the other file-backed option, serialises writers on one database lock and
answers "database is locked" under contention.

Intended number of trials: `--n-trials N` counts *finished* trials, COMPLETE plus PRUNED. FAILED
trials (a crash, or a worker killed mid-trial) do not count: a study ends with N finished trials.
A worker starts a trial only while finished + running < N, checked and claimed under a lock, so
N workers never overshoot.

Resume: every trial records its worker's host, pid and process start time. A RUNNING trial whose
worker process is gone (same host) is marked FAIL when any worker next starts, its trial.json says
so, and its parameters are enqueued again, so the study evaluates them in a fresh trial, which takes
over the killed trial's finished runs and resumes its run that was cut off after a checkpoint
(`trial.take_over_killed_run`). Rerunning the same command
therefore continues a killed study to N finished trials.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import multiprocessing
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from optuna.pruners import BasePruner, MedianPruner

from rl_selfdistill.errors import UsageError
from rl_selfdistill.run import rundir
from rl_selfdistill.tune.space import SearchSpace
from rl_selfdistill.tune.trial import RETRY_ATTR, TRIAL_FILE, WORKER_ATTR, TrialPlan, run_trial, trial_dir

JOURNAL = "study.journal"
STUDY_FILE = "study.json"
LOCK = ".claim.lock"
SETTINGS_ATTR = "rl_selfdistill_settings"
MAX_CONSECUTIVE_FAILURES = 3
PRUNERS = ("median", "halving", "none")


@dataclass(frozen=True)
class TuneSettings:
    """Everything a worker needs; picklable, so `--workers N` can hand it to spawned processes."""

    study_dir: Path
    plan: TrialPlan
    space: SearchSpace
    n_trials: int
    pruner: str = "median"
    n_startup_trials: int = 10
    pruner_warmup: int = 0
    sampler_seed: int | None = None
    enqueue: tuple[dict[str, Any], ...] = ()
    workers: int = 1
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Benchmark folders whose runs on the study's envs and tuning seeds the summary scores like a trial (--reference).
    references: tuple[Path, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same study (n_trials, workers and devices may differ)."""
        plan = self.plan
        return {
            "algo": plan.algo,
            "envs": [env.describe() for env in plan.envs],
            "seeds": list(plan.seeds),
            "eval_freq": plan.eval_freq,
            "eval_episodes": plan.eval_episodes,
            "n_envs": plan.train_options.get("n_envs"),
            "space": self.space.to_yaml(),
            "pruner": self.pruner,
            "n_startup_trials": self.n_startup_trials,
            "pruner_warmup": self.pruner_warmup,
        }


# ----------------------------------------------------------------------------- storage and study


def storage(study_dir: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(study_dir) / JOURNAL)))


def make_pruner(settings: TuneSettings) -> Any:
    import optuna

    if settings.pruner == "median":
        return RunWisePruner(settings.n_startup_trials, settings.pruner_warmup)
    if settings.pruner == "halving":
        # The RL Zoo's settings: a rung after every evaluation, the best quarter promoted.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4, min_early_stopping_rate=0)
    return optuna.pruners.NopPruner()


class RunWisePruner(BasePruner):
    """Optuna's median pruner, judging a trial on its current run.

    A trial's steps run through several runs (envs and seeds), and Optuna's median pruner compares the trial's best
    value over *all* its steps with the other trials' median at the current step: a good value late in the first
    run (an easy env) then outweighs every evaluation of the later runs, and the trial can no longer be pruned.
    Here the trial is seen with its current run's values only (from the step recorded as RUN_START_ATTR), and the
    first `n_warmup_evaluations` evaluations of every run, noisy as a run starts, are never pruned.
    """

    def __init__(self, n_startup_trials: int, n_warmup_evaluations: int) -> None:
        self.n_warmup_evaluations = n_warmup_evaluations
        self.median = MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=0)

    def prune(self, study: Any, trial: Any) -> bool:
        from rl_selfdistill.tune.trial import RUN_START_ATTR

        first = trial.user_attrs.get(RUN_START_ATTR, 0)
        values = {step: value for step, value in trial.intermediate_values.items() if step >= first}
        if not values or max(values) - first < self.n_warmup_evaluations:
            return False
        view = copy.copy(trial)  # a FrozenTrial: the copy's values can be narrowed without touching the study
        view.intermediate_values = values
        return self.median.prune(study, view)


def make_sampler(settings: TuneSettings, offset: int) -> Any:
    import optuna

    # A seeded sampler restarted on a resumed study would replay its first random draws: offset the seed.
    seed = None if settings.sampler_seed is None else settings.sampler_seed + offset
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # `group` is experimental
    return optuna.samplers.TPESampler(
        n_startup_trials=settings.n_startup_trials,
        multivariate=True,
        group=True,  # conditional keys (`when:`) get their own joint model per branch
        constant_liar=True,  # workers running at the same time do not all sample the same point
        seed=seed,
    )


def open_study(settings: TuneSettings) -> Any:
    """Create the study on first use, else load it and refuse settings that differ from the recorded ones."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    store = storage(settings.study_dir)
    name = settings.plan.study_name
    if name in optuna.get_all_study_names(store):  # reads only: create_study would append a record on every resume
        study = optuna.load_study(study_name=name, storage=store)
    else:
        study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True)
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    identity = json.loads(json.dumps(settings.identity()))
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, identity)
    elif recorded != identity:
        changed = next(key for key in identity if recorded.get(key) != identity[key])
        raise UsageError(
            f"study {str(settings.study_dir)!r} was created with another {changed} ({recorded.get(changed)!r}); "
            "rerun its own command (study.json) or choose a new STUDY_DIR"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "already exists, skipping" on every resume: the point of skip_if_exists
        for params in settings.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    # No sampler here: claim_trial seeds one before every ask (below); a summary only reads the study.
    return optuna.load_study(study_name=name, storage=store, pruner=make_pruner(settings))


def claimed_count(study: Any) -> int:
    """Trials ever claimed (every state but WAITING): one more after each claim, whoever made it."""
    from optuna.trial import TrialState

    return sum(trial.state != TrialState.WAITING for trial in study.get_trials(deepcopy=False))


def as_recorded(settings: TuneSettings) -> TuneSettings:
    """The settings with the command and --n-trials the study was last run with (study.json), for `--summary`:
    a summary asked for with a shorter command (no --n-trials) must still say "k of 30", not "k of 20"."""
    path = settings.study_dir / STUDY_FILE
    if not path.is_file():
        return settings
    recorded = json.loads(path.read_text())
    command = recorded.get("command", settings.command)
    return replace(settings, n_trials=recorded.get("n_trials", settings.n_trials), command=command)


def write_study_file(settings: TuneSettings) -> None:
    text = json.dumps({"command": settings.command, "n_trials": settings.n_trials, **settings.identity()}, indent=2)
    rundir.atomic_write_text(settings.study_dir / STUDY_FILE, text + "\n")


# ----------------------------------------------------------------------------- workers and stale trials


def _process_token(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a reused pid apart); None where /proc is unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has finished: it cannot finish a trial


def worker_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": _process_token(os.getpid())}


def worker_alive(worker: dict[str, Any] | None) -> bool:
    """Whether the process that claimed a trial still runs. Trials of other hosts are assumed alive."""
    if not worker:
        return False  # claimed under the lock but killed before it recorded its worker
    if worker.get("host") != socket.gethostname():
        return True
    pid = int(worker["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    token = _process_token(pid)
    recorded = worker.get("token")
    return not (Path("/proc").is_dir() and token is None) and (recorded is None or token == recorded)


@contextlib.contextmanager
def claim_lock(study_dir: Path) -> Iterator[None]:
    """Serialises 'count trials, recover stale ones, claim the next' across the study's processes."""
    with open(Path(study_dir) / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recover_stale_trials(study: Any, study_dir: Path) -> list[int]:
    """Mark RUNNING trials of dead workers FAIL and enqueue their parameters again; returns their numbers."""
    from optuna.trial import TrialState

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(trial.user_attrs.get(WORKER_ATTR)):
            continue
        # The storage call optuna.storages.fail_stale_trials makes; that helper needs heartbeats, which journals lack.
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        update_trial_file(study_dir, trial.number, status="failed", reason="its worker process died; retried as a new trial")
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
        recovered.append(trial.number)
    return recovered


def finished_count(study: Any) -> tuple[int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(trial.state == TrialState.RUNNING for trial in trials)
    return len(trials) - running, running


def claim_trial(study: Any, settings: TuneSettings) -> Any | None:
    """The next trial for this worker, or None when the study has (or is running) its N trials."""
    with claim_lock(settings.study_dir):
        for number in recover_stale_trials(study, settings.study_dir):
            print(f"trial {number}: its worker died; marked FAIL and its parameters enqueued again", flush=True)
        finished, running = finished_count(study)
        if finished + running >= settings.n_trials:
            return None
        # Seeded per claim, from the number of claims so far (counted under the lock, so no two claims share it):
        # a resumed study does not replay its first draws, and workers or separate `tune` processes joining the
        # study do not all draw the same points, while one command on one study stays reproducible.
        study.sampler = make_sampler(settings, claimed_count(study))
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        return trial


# ----------------------------------------------------------------------------- one trial, one worker


def sample_params(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Suggest every active key of the space, in file order; fixed keys are added unsampled."""
    sampled: dict[str, Any] = {}
    for param in space.params:
        if not param.active(sampled):
            continue
        if param.type == "categorical":
            sampled[param.name] = trial.suggest_categorical(param.name, list(param.choices))
        elif param.type == "int":
            step = int(param.step or 1)
            sampled[param.name] = trial.suggest_int(param.name, int(param.low), int(param.high), step=step, log=param.log)
        else:
            sampled[param.name] = trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)
    return sampled


def update_trial_file(study_dir: Path, number: int, **changes: Any) -> None:
    path = trial_dir(study_dir, number) / TRIAL_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        record = {"number": number}
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write_text(path, json.dumps({**record, **changes}, indent=2, default=str) + "\n")


def execute(study: Any, trial: Any, settings: TuneSettings) -> str:
    """Run one claimed trial, tell Optuna how it ended and return that state's name."""
    import optuna
    from optuna.trial import TrialState

    params = sample_params(trial, settings.space)
    hyperparams = {**settings.space.fixed, **params}
    records: list[dict[str, Any]] = []
    retry = trial.user_attrs.get(RETRY_ATTR)
    update_trial_file(
        settings.study_dir, trial.number, status="running", params=params, fixed=settings.space.fixed, retry_of=retry,
        worker=trial.user_attrs.get(WORKER_ATTR), started_at=rundir.utc_now(), runs=records,
    )  # fmt: skip
    state, value, reason = TrialState.COMPLETE, None, None
    try:
        value = run_trial(trial, settings.plan, settings.study_dir, hyperparams, records)
    except optuna.TrialPruned as pruned:
        state, reason = TrialState.PRUNED, str(pruned)
    except Exception as error:  # noqa: BLE001 - one bad trial (NaN, bad combination) does not end the study
        state, reason = TrialState.FAIL, f"{type(error).__name__}: {error}"
    study.tell(trial, value, state=state)
    update_trial_file(
        settings.study_dir, trial.number, status=state.name.lower(), value=value, reason=reason,
        runs=records, finished_at=rundir.utc_now(),
    )  # fmt: skip
    shown = f"{value:.4g}" if value is not None else reason
    print(f"trial {trial.number} {state.name.lower()}: {shown}  {params}", flush=True)
    return state.name


def work(settings: TuneSettings) -> int:
    """A worker: claim and run trials until the study has its N finished (or running) trials. Exit status."""
    from rl_selfdistill.tune.summary import write_summary

    if settings.workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ.setdefault("RL_SELFDISTILL_TORCH_THREADS", str(max(1, cores // settings.workers)))
    study = open_study(settings)
    failures = 0
    while (trial := claim_trial(study, settings)) is not None:
        state = execute(study, trial, settings)
        failures = failures + 1 if state == "FAIL" else 0
        with contextlib.suppress(Exception):  # a summary that cannot be drawn never stops the study
            write_summary(study, settings)
        if failures >= MAX_CONSECUTIVE_FAILURES:
            print(f"{failures} trials in a row failed; stopping (see trials/*/trial.json)", file=sys.stderr)
            return 1
    return 0


def _worker_main(settings: TuneSettings) -> None:
    sys.exit(work(settings))


def run_workers(settings: TuneSettings) -> int:
    """`--workers N`: N spawned processes share the study; the exit status is the worst of theirs.

    The caller has opened the study once, so it exists with its candidates before the workers race for it.
    """
    if settings.workers == 1:
        return work(settings)
    context = multiprocessing.get_context("spawn")  # forking after torch initialised its threads can deadlock
    processes = [context.Process(target=_worker_main, args=(settings,)) for _ in range(settings.workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return 0 if all(process.exitcode == 0 for process in processes) else 1
