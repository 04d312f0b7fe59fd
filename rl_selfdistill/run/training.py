"""One training run from start to finish: `run_training`, `resume_training` and the `TrainingRun` they drive.

run = prepare_run(request)             # run directory written and locked (run.lock) for this process
with run:                              # SIGINT/SIGTERM handled, W&B and the SB3 logger started
    run.train()                        # learn to the budget, save model.zip, status "finished"
    ...                                # the caller may still use run.model (e.g. record a video)
                                       # leaving the block closes the logger and the W&B run, frees the lock

A first SIGINT or SIGTERM during `train()` ends it after the current env step: a checkpoint is written,
run.json says "interrupted" and `RunInterrupted` is raised. A second one exits the process at once.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import rl_selfdistill.run.resume as resume
import rl_selfdistill.run.rundir as rundir
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.interrupts import GracefulStop, RunInterrupted
from rl_selfdistill.run.lock import RunLock, acquire
from rl_selfdistill.run.request import (
    TrainRequest,
    check_device,
    check_resume_changes,
    import_gym_packages,
    resolve_config,
    with_provenance,
)


@dataclass
class TrainingRun:
    """A run directory with its model, evaluation env and state, between preparation and the end of training."""

    config: dict[str, Any]
    run_dir: Path
    model: Any
    eval_env: Any
    state: dict[str, Any]
    resumed: bool = False
    extra_callbacks: list[Any] = field(default_factory=list)
    extra_tags: list[str] = field(default_factory=list)
    eval_history: dict[str, Any] = field(default_factory=dict)
    wandb_run: Any = None
    lock: RunLock | None = None
    stop: GracefulStop = field(default_factory=GracefulStop)
    guard: Any = None  # the DivergenceGuard of train(), None when the run turned it off
    _clock_start: float = field(default_factory=time.monotonic)
    _clock_base: float = 0.0
    # CPU time of this process (all its threads; envs in subprocesses are not counted): steadier than wall-clock on a
    # shared machine, so costs compare across runs that ran beside different loads.
    _cpu_start: float = field(default_factory=time.process_time)
    _cpu_base: float = 0.0

    @property
    def options(self) -> dict[str, Any]:
        return self.config["options"]

    def clocks(self) -> dict[str, float]:
        """The run's training time so far: wall-clock and this process's CPU time, over every leg that counts."""
        return {
            "wall_clock_s": round(self._clock_base + time.monotonic() - self._clock_start, 3),
            "cpu_time_s": round(self._cpu_base + time.process_time() - self._cpu_start, 3),
        }

    def update_state(self, **changes: Any) -> None:
        self.state.update(changes)
        self.state["num_timesteps_done"] = int(self.model.num_timesteps)
        self.state.update(self.clocks())
        rundir.write_run_state(self.run_dir, self.state)

    def checkpoint(self) -> None:
        if self.guard is not None:
            self.guard.check_parameters()  # a checkpoint never holds non-finite weights
        self._write_checkpoint()

    def _write_checkpoint(self) -> Path:
        from rl_selfdistill.run.checkpoints import write_checkpoint

        folder = write_checkpoint(
            self.run_dir,
            self.model,
            wandb_run_id=self.wandb_run.id if self.wandb_run is not None else None,
            keep=self.options["keep_checkpoints"],
            save_replay_buffer=bool(self.options.get("save_replay_buffer")),
            clocks=self.clocks(),
        )
        self.update_state()
        return folder

    def _has_checkpoint_at(self, step: int) -> bool:
        from rl_selfdistill.run.checkpoints import checkpoint_step, list_checkpoints

        newest = list_checkpoints(self.run_dir)[-1:]
        return bool(newest) and checkpoint_step(newest[0]) == step

    def __enter__(self) -> TrainingRun:
        self.stop.install()
        try:
            self._start_tracking()
            self.update_state(status="running")
        except BaseException as error:  # handlers, the W&B run, the logger and the lock: undo before passing it on
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        from rl_selfdistill import tracking

        try:
            self.model.logger.close()
            tracking.finish_wandb(self.wandb_run, exit_code=0 if kind is None else 1)
        finally:
            self.stop.restore()
            if self.lock is not None:
                self.lock.release()

    def train(self) -> None:
        """Learn the rest of the budget, then save model.zip and mark the run finished."""
        from rl_selfdistill.run.divergence import RunDiverged

        total = int(self.config["hyperparams"]["n_timesteps"])
        try:
            self._learn(total)
            if self.guard is not None:
                self.guard.check_parameters()  # model.zip never holds non-finite weights
        except RunDiverged as diverged:
            self._stop_on_divergence(diverged)
        if self.model._total_timesteps != total:
            raise RuntimeError(f"schedule horizon is {self.model._total_timesteps}, expected {total}")
        self._save_final_model()

    def _learn(self, total: int) -> None:
        """learn() to the budget; RunInterrupted after a graceful stop, RunDiverged when the guard stops it."""
        from rl_selfdistill.run.callbacks import StopRequested
        from rl_selfdistill.run.divergence import as_divergence

        remaining = max(total - int(self.model.num_timesteps), 0)
        callbacks = self._callbacks()
        try:
            # SB3 adds num_timesteps to the budget when reset_num_timesteps=False (issue #1277): pass what is left.
            self.model.learn(remaining, callback=callbacks, reset_num_timesteps=not self.resumed)
        except StopRequested:
            callbacks.on_training_end()  # what learn() does when it ends by itself (closes the progress bar)
        except Exception as error:
            diverged = as_divergence(error, self.guard, int(self.model.num_timesteps))
            if diverged is not None:
                callbacks.on_training_end()
                raise diverged from None
            # A SIGTERM sent to the whole process group also ends subprocess env workers, and the env step under
            # way fails. The learner's own state is whole (updates happen between steps): checkpoint it.
            if not self.stop.requested:
                raise
        if self.stop.requested and self.model.num_timesteps < total:
            self._stop_on_signal()

    def _stop_on_divergence(self, diverged: Any) -> NoReturn:
        """Keep the last good checkpoint (never the bad weights: no model.zip), mark the run "diverged", raise."""
        from rl_selfdistill.run.divergence import keep_last_good

        diverged.record_kept(self.run_dir, keep_last_good(self.guard, self.model, self.run_dir, self._write_checkpoint))
        self.update_state(status="diverged", diverged_at=rundir.utc_now(), divergence=diverged.as_record())
        raise diverged

    def _stop_on_signal(self) -> None:
        """Checkpoint (whatever --save-freq says: otherwise all work since the last one is lost), mark, raise."""
        assert self.stop.signum is not None
        self.checkpoint()
        self.update_state(status="interrupted", interrupted_at=rundir.utc_now())
        raise RunInterrupted(self.stop.signum, str(self.run_dir), int(self.model.num_timesteps))

    def log_video(self, video: Path) -> None:
        """Attach an MP4 of this run's agent to its W&B run (no-op without one)."""
        from rl_selfdistill import tracking

        if self.wandb_run is not None:
            tracking.log_video(self.wandb_run, video, key="eval/video", step=self.model.num_timesteps)

    def _callbacks(self) -> Any:
        from stable_baselines3.common.callbacks import CallbackList

        import rl_selfdistill.run.callbacks as callbacks
        from rl_selfdistill.envs.continual import ContinualLevelCallback, is_continual
        from rl_selfdistill.run.build import evaluates_deterministically
        from rl_selfdistill.run.divergence import DivergenceGuard

        # First: nothing below (a checkpoint, a graceful stop, an evaluation) may see weights the guard would refuse.
        self.guard = DivergenceGuard() if self.options.get("divergence_guard", True) else None
        chosen: list[Any] = [
            *([self.guard] if self.guard is not None else []),
            callbacks.StopAtRolloutStart(lambda: self.stop.requested),
            callbacks.CheckpointCallback(self.checkpoint, self.options["save_freq"]),
        ]
        n_envs = self.config["hyperparams"]["n_envs"]
        if is_continual(self.config["env_id"]):
            # Before the EvalCallback: evaluations measure the level being learnt, and a resume keeps the schedule.
            chosen.append(ContinualLevelCallback(self.eval_env))
        if self.options["eval_freq"] > 0:
            from rl_selfdistill.algos import registry

            deterministic = evaluates_deterministically(self.config["env_id"])
            evaluation = callbacks.make_eval_callback(
                self.eval_env,
                self.run_dir,
                self.options,
                n_envs=n_envs,
                deterministic=deterministic,
                masked=registry.get(self.config["algo"]).needs_action_masks,
            )
            callbacks.continue_eval_history(evaluation, self.run_dir, int(self.model.num_timesteps), n_envs, self.eval_history)
            if self.guard is not None:
                self.guard.before_evaluations_of(evaluation)
            chosen.append(evaluation)
        if callbacks.progress_wanted(self.options["progress"]):
            chosen.append(callbacks.ProgressBarCallback(self.config["hyperparams"]["n_timesteps"]))
        return CallbackList([*chosen, *self.extra_callbacks])

    def _start_tracking(self) -> None:
        from rl_selfdistill import tracking
        from rl_selfdistill.run.callbacks import progress_wanted

        config, options = self.config, self.options
        tags = [config["algo"], config["env_id"], *options["tags"], *options.get("extra_tags", []), *self.extra_tags]
        self.wandb_run = tracking.init_wandb(
            mode=options["wandb_mode"],
            run_dir=self.run_dir,
            project=options["wandb_project"],
            entity=options["wandb_entity"],
            group=options["wandb_group"] or f"{config['algo']}_{rundir.safe_env_name(config['env_id'])}",
            name=self.run_dir.name,
            tags=list(dict.fromkeys(tags)),
            config=config,
            run_id=self.state.get("wandb_run_id"),
        )
        if self.wandb_run is not None:
            self.state["wandb_run_id"] = self.wandb_run.id
        if options["verbose"] >= 1:
            from rl_selfdistill.run.build import backend_of

            print(f"run directory: {self.run_dir}", file=sys.stderr)
            backend = backend_of(self.model.get_env())
            print(f"envs: {self.model.n_envs} x {self.config['env_id']} on {backend}", file=sys.stderr)
            print(tracking.describe_wandb_run(self.wandb_run), file=sys.stderr)
        stdout_table = options["verbose"] >= 1 and not progress_wanted(options["progress"])
        self.model.set_logger(tracking.make_logger(self.run_dir, self.wandb_run, stdout=stdout_table, resume=self.resumed))

    def _save_final_model(self) -> None:
        from rl_selfdistill import tracking

        if self.options.get("save_freq") and not self._has_checkpoint_at(int(self.model.num_timesteps)):
            self._write_checkpoint()  # a final checkpoint: `--resume RUN -n MORE` extends the run exactly
        final = self.run_dir / rundir.MODEL
        temp = self.run_dir / f".{rundir.MODEL}.tmp.zip"
        self.model.save(temp)
        os.replace(temp, final)
        vecnormalize = self.model.get_vec_normalize_env()
        if vecnormalize is not None:
            vecnormalize.save(str(self.run_dir / rundir.VECNORMALIZE))
        self.update_state(status="finished", finished_at=rundir.utc_now())
        if self.wandb_run is not None:
            name = f"model-{self.config['algo']}-{rundir.safe_env_name(self.config['env_id'])}-{self.wandb_run.id}"
            metadata = {"num_timesteps": int(self.model.num_timesteps), "seed": self.config["seed"]}
            tracking.log_model_artifact(self.wandb_run, final, name=name.replace("/", "_"), metadata=metadata)


def prepare_run(request: TrainRequest, *, callbacks: list[Any] | None = None) -> TrainingRun:
    """Check and resolve `request`, build envs and model, then write the new run directory.

    Everything that can be wrong with the request is checked before the run directory exists.
    """
    from rl_selfdistill.run.build import build_envs, build_model, check_action_space

    config = with_provenance(resolve_config(request))
    env, eval_env = build_envs(config, seed=config["seed"])
    check_action_space(request.algo, env)
    model = build_model(config, env)
    if request.run_dir:
        run_dir = rundir.claim_run_dir(request.run_dir)
    else:
        run_dir = rundir.allocate_run_dir(request.log_folder, request.algo, request.env_id)
    lock = acquire(run_dir)
    try:
        rundir.write_config(run_dir, config)
        (run_dir / rundir.COMMAND).write_text((request.command or rundir.invoked_command()) + "\n")
        rundir.start_eval_csv(run_dir)
        state = rundir.initial_run_state(config)
        rundir.write_run_state(run_dir, state)
    except BaseException:
        lock.release()
        raise
    return TrainingRun(config, run_dir, model, eval_env, state, extra_callbacks=list(callbacks or []), lock=lock)


def prepare_resume(
    run_dir: Path,
    *,
    callbacks: list[Any] | None = None,
    extra_tags: list[str] | None = None,
    changes: dict[str, Any] | None = None,
    command: str | None = None,
    restart_if_unrecoverable: bool = False,
) -> TrainingRun:
    """The run in `run_dir` restored from its newest usable checkpoint (or restarted if it has none yet).

    The run directory is locked first: nothing in it is read or rewound while another process runs it.
    `changes` (TrainRequest field -> value, only `request.RESUMABLE` fields) are applied, then recorded in
    config.yaml and in run.json's `resumes`: a new budget (`n_timesteps`, above the steps done; schedules
    then run to the new budget), `save_freq`, `eval_freq`, `device`, `wandb_mode`, `num_threads`. `command` goes to
    command.txt (default: this process's command line).

    Damaged checkpoints are skipped (one warning line each) and moved to checkpoints/damaged-<time>/. When every
    checkpoint is damaged, `UnrecoverableCheckpoints` is raised and nothing is changed, unless
    `restart_if_unrecoverable`: then they are moved aside and the run starts over from step 0.
    """
    changes = dict(changes or {})
    check_resume_changes(changes)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {str(run_dir)!r}: no such run directory; pass a folder like logs/sd_ppo/CartPole-v1_1")
    # Checked before the lock too, so that resuming a folder that is no run, or a finished run, leaves it untouched.
    rundir.read_raw_config(run_dir)
    resume.refuse_finished(run_dir, rundir.read_run_info(run_dir) or {}, changes)
    lock = acquire(run_dir)
    try:
        run = _restore(
            run_dir,
            callbacks=callbacks,
            extra_tags=extra_tags,
            changes=changes,
            command=command,
            restart_if_unrecoverable=restart_if_unrecoverable,
        )
    except BaseException:
        lock.release()
        raise
    run.lock = lock
    return run


def _restore(
    run_dir: Path,
    *,
    callbacks: list[Any] | None,
    extra_tags: list[str] | None,
    changes: dict[str, Any],
    command: str | None,
    restart_if_unrecoverable: bool = False,
) -> TrainingRun:
    from rl_selfdistill.run.build import build_envs, build_model
    from rl_selfdistill.run.checkpoints import UnrecoverableCheckpoints, apply_recovery, inspect_checkpoints, load_checkpoint

    raw = rundir.read_raw_config(run_dir)
    # Custom envs and algorithms must be registered before the config is validated against them.
    import_gym_packages(list(raw["options"].get("gym_packages") or []))
    config = rundir.read_config(run_dir)
    for resolved in (raw, config):
        resume.apply_changes(resolved, changes)
    # A run killed between writing config.yaml and run.json has no state yet: it starts over.
    state = rundir.read_run_state(run_dir) if (run_dir / rundir.RUN_STATE).exists() else rundir.initial_run_state(config)
    resume.refuse_finished(run_dir, state, changes)
    check_device(config["options"]["device"])
    recovery = inspect_checkpoints(run_dir)  # reads only: nothing changes before every check has passed
    if recovery.unrecoverable and not restart_if_unrecoverable:
        raise UnrecoverableCheckpoints(run_dir, recovery.damaged)
    resume.say_where_an_extension_starts(run_dir, state, recovery.checkpoint)
    if recovery.checkpoint is not None:
        model, eval_env, meta = load_checkpoint(recovery.checkpoint, config)
        state["wandb_run_id"] = meta.get("wandb_run_id") or state.get("wandb_run_id")
        # The clocks as they were at the checkpoint: work done after it, lost in a crash and redone, counts once.
        state.update(meta.get("clocks") or {})
        resume.say_if_replay_buffer_restarts(config, recovery.checkpoint)
    else:  # killed before its first checkpoint (or all damaged, and asked to): start over in the same directory
        state.update(wall_clock_s=0.0, cpu_time_s=0.0)
        env, eval_env = build_envs(config, seed=config["seed"])
        model = build_model(config, env)
    steps = int(model.num_timesteps)
    if changes.get("n_timesteps", steps + 1) <= steps:
        raise UsageError(f"run {str(run_dir)!r} is at step {steps}: a new budget must be larger, got {changes['n_timesteps']}")
    if changes:
        rundir.write_config(run_dir, raw)
        state["n_timesteps"] = config["hyperparams"]["n_timesteps"]
    state["resumes"] = [*state.get("resumes", []), {"step": steps, "at": rundir.utc_now(), "changes": changes}]
    apply_recovery(run_dir, recovery)
    history = rundir.rewind_logs(run_dir, steps)
    run = TrainingRun(
        config,
        run_dir,
        model,
        eval_env,
        state,
        resumed=True,
        extra_callbacks=list(callbacks or []),
        extra_tags=list(extra_tags or []),
        eval_history=history,
    )
    run._clock_base = float(state.get("wall_clock_s") or 0.0)
    run._cpu_base = float(state.get("cpu_time_s") or 0.0)
    rundir.append_command(run_dir, (command or rundir.invoked_command()) + f"  # resumed at step {steps}")
    return run


def run_training(request: TrainRequest, *, callbacks: list[Any] | None = None) -> Path:
    """Train one run from scratch; returns its run directory. `callbacks` are extra SB3 callbacks (not recorded).

    Raises `RunLocked` when another process holds the run directory, `RunInterrupted` after a graceful stop.
    """
    with prepare_run(request, callbacks=callbacks) as run:
        run.train()
    return run.run_dir


def resume_training(
    run_dir: Path,
    *,
    callbacks: list[Any] | None = None,
    extra_tags: list[str] | None = None,
    changes: dict[str, Any] | None = None,
    restart_if_unrecoverable: bool = False,
) -> Path:
    """Continue a run from its newest usable checkpoint to its budget; returns the run directory.

    `changes` and `restart_if_unrecoverable` as for `prepare_resume` (e.g. {"n_timesteps": 2_000_000} extends the run).
    """
    with prepare_resume(
        run_dir,
        callbacks=callbacks,
        extra_tags=extra_tags,
        changes=changes,
        restart_if_unrecoverable=restart_if_unrecoverable,
    ) as run:
        run.train()
    return run.run_dir
