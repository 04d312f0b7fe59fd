"""One trial: an ordinary training run per (env, seed), reported to Optuna evaluation by evaluation.

Each run is made by `rl_selfdistill.run.run_training`, like `rl-selfdistill train`, in
STUDY_DIR/trials/trial_<NNNN>/runs/<algo>/<env>/seed<N> (a benchmark's layout), so W&B, checkpoints,
crash safety and `rl-selfdistill report` work as for any run.
Intermediate values are the runs' evaluations within their budgets (eval.csv rows), numbered across the
trial's runs in a fixed order (env-major, then seed) and by their env step (`Reporter`), so step k means the
same env, seed and evaluation in every trial and the pruner compares like with like; the pruner judges a trial
on its current run (`study.RunWisePruner`). A pruned run stops at once; its run.json says `"status": "pruned"`.

Score of a run: the report's score (`benchmark.aggregate.final_window_score`: the mean evaluation
return over the final 10% of the budget; over every evaluation for a continual env, whose score is
the mean over its whole level sequence). Objective of a trial: the mean over envs and seeds of
the run scores, each normalised like the report normalises it (`envs.normalize_score`: 0 at the
suite's floor, 1 at its reference score) when the study normalises (several envs, or --suite).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_selfdistill.benchmark.grid import RunState, run_state
from rl_selfdistill.envs.suites import SuiteEnv, normalize_score
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run import rundir

TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
PRUNED = "pruned"
# Trial user attributes: the process that claimed the trial, and the trial a retried one repeats.
WORKER_ATTR = "worker"
RETRY_ATTR = "retry_of"
# Trial user attribute: the step number of the current run's first evaluation (see Reporter).
RUN_START_ATTR = "run_first_step"


@dataclass(frozen=True)
class EnvTarget:
    """One env of a study: its budget and, when the study normalises, the suite entry that normalises its scores."""

    env_id: str
    n_timesteps: int
    suite_env: SuiteEnv | None = None

    def normalise(self, score: float) -> float:
        return float(score) if self.suite_env is None else normalize_score(self.suite_env, score)

    def describe(self) -> dict[str, Any]:
        """The JSON a study records (and compares on resume)."""
        entry: dict[str, Any] = {"env_id": self.env_id, "n_timesteps": self.n_timesteps}
        if self.suite_env is not None:
            entry.update(floor_score=self.suite_env.floor_score, reference_score=self.suite_env.reference_score)
        return entry


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a study runs: the same envs, budgets, seeds and run options."""

    algo: str
    envs: tuple[EnvTarget, ...]
    seeds: tuple[int, ...]
    eval_freq: int
    eval_episodes: int
    train_options: dict[str, Any]  # further TrainRequest fields (device, vec_env, n_envs, wandb_*, save_freq)
    study_name: str


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / TRIALS_DIR / f"trial_{number:04d}"


def run_dir_of(study_dir: Path, number: int, algo: str, env_id: str, seed: int) -> Path:
    """A benchmark's layout inside the trial folder, so `rl-selfdistill report` reads a trial like a benchmark."""
    from rl_selfdistill.benchmark.grid import run_dir_for

    return run_dir_for(trial_dir(study_dir, number), algo, env_id, seed)


def train_command(plan: TrialPlan, env: EnvTarget, seed: int, hyperparams: dict[str, Any], run_dir: Path | None) -> str:
    """The `rl-selfdistill train` command of one run of a trial (recorded in command.txt and the summary)."""
    options: dict[str, Any] = {"-n": env.n_timesteps, "--seed": seed, "--eval-freq": plan.eval_freq}
    options["--eval-episodes"] = plan.eval_episodes
    for key in ("n_envs", "vec_env", "device"):
        value = plan.train_options.get(key)
        options[f"--{key.replace('_', '-')}"] = value if value not in (None, "auto") else None
    options["--gym-packages"] = plan.train_options.get("gym_packages")
    options["--run-dir"] = run_dir
    words = [rundir.PROGRAM, "train", "--algo", plan.algo, "--env", env.env_id]
    command = rundir.format_command(words, options)
    if hyperparams:
        command += " -params " + rundir.format_command([f"{key}:{_param_text(value)}" for key, value in hyperparams.items()])
    return command


def _param_text(value: Any) -> str:
    """A -params value that reads back as `value`: plain where YAML reads it unchanged, else JSON (valid YAML)."""
    import yaml

    text = value if isinstance(value, str) else json.dumps(value)
    try:
        return text if yaml.safe_load(text) == value else json.dumps(value)
    except yaml.YAMLError:
        return json.dumps(value)


def train_request(plan: TrialPlan, env: EnvTarget, seed: int, hyperparams: dict[str, Any], **fields: Any) -> Any:
    """The TrainRequest of one run of a trial (quiet: no progress bar, no log table)."""
    from rl_selfdistill.run import TrainRequest

    return TrainRequest(
        algo=plan.algo,
        env_id=env.env_id,
        n_timesteps=env.n_timesteps,
        seed=seed,
        hyperparams=dict(hyperparams),
        eval_freq=plan.eval_freq,
        eval_episodes=plan.eval_episodes,
        wandb_group=plan.study_name,
        progress=False,
        verbose=0,
        **plan.train_options,
        **fields,
    )


def check_plan(plan: TrialPlan, point: dict[str, Any]) -> None:
    """What every trial's runs would refuse (env id, budget, device, fixed keys, action space), refused now.

    `point` is one point of the space (`space.first_point`): the run request is resolved with it.
    """
    from rl_selfdistill.benchmark.aggregate import score_fraction
    from rl_selfdistill.benchmark.grid import incompatibility
    from rl_selfdistill.run.request import resolve_config

    for env in plan.envs:
        config = resolve_config(train_request(plan, env, plan.seeds[0], point))
        reason = incompatibility(plan.algo, env.env_id)
        if reason:
            raise UsageError(f"{reason}; tune it on other envs")
        every = evaluation_interval(plan.eval_freq, config["hyperparams"]["n_envs"])
        if env.n_timesteps // every * every < (1.0 - score_fraction(env.env_id)) * env.n_timesteps:
            raise UsageError(
                f"--eval-freq {plan.eval_freq} leaves no evaluation in the final 10% of {env.env_id}'s "
                f"{env.n_timesteps} steps, where a run is scored; use at most a tenth of the budget"
            )


def read_evaluations(run_dir: Path) -> list[tuple[int, float]]:
    """(timesteps, mean return) of each eval.csv row, read as the report reads them (`aggregate.read_evals`)."""
    from rl_selfdistill.benchmark.aggregate import read_evals

    evals = read_evals(Path(run_dir))
    if evals is None:
        return []
    return [(int(step), float(mean)) for step, mean in zip(evals["timesteps"], evals["mean_reward"])]


def evaluation_interval(eval_freq: int, n_envs: int) -> int:
    """Env steps between a run's evaluations: SB3's EvalCallback counts vectorized steps, every eval_freq // n_envs."""
    return n_envs * max(eval_freq // n_envs, 1)


def run_evaluation_interval(run_dir: Path, eval_freq: int) -> int:
    return evaluation_interval(eval_freq, int(rundir.read_raw_config(run_dir)["hyperparams"].get("n_envs") or 1))


def run_score(run_dir: Path, env_id: str, n_timesteps: int) -> float | None:
    """The report's score of one run (None when no evaluation falls in its final window)."""
    from rl_selfdistill.benchmark.aggregate import final_window_score, read_evals, score_fraction

    evals = read_evals(Path(run_dir))
    return None if evals is None else final_window_score(evals, n_timesteps, score_fraction(env_id))


class Reporter:
    """Feeds a trial's evaluations to Optuna and asks the pruner after each batch.

    Step numbers are fixed by the run's place in the trial and the evaluation's env step, not by how many values
    came before: run r's evaluation at env step t is step `first_step(r) + t // interval - 1`, where first_step(r)
    adds up the evaluations that fit in the budgets of the runs before it. So step k is the same env, seed and
    evaluation in every trial even when runs train past their budget (PPO completes its last rollout, DQN its
    last `train_freq`) by different amounts, as a tuned `n_steps` or `train_freq` makes them do; evaluations past
    the budget are neither scored (`final_window_score`) nor reported.
    The first step of the current run is recorded on the trial (RUN_START_ATTR), so the pruner can judge the trial
    on its current run only (`study.RunWisePruner`).
    """

    def __init__(self, trial: Any, eval_freq: int) -> None:
        self.trial = trial
        self.eval_freq = eval_freq
        self.first_step = 0
        self.values: list[float] = []

    def start_run(self) -> None:
        self.trial.set_user_attr(RUN_START_ATTR, self.first_step)

    def end_run(self, run_dir: Path, n_timesteps: int) -> None:
        self.first_step += n_timesteps // run_evaluation_interval(run_dir, self.eval_freq)

    def report_new(self, run_dir: Path, seen: int, n_timesteps: int, normalise: Callable[[float], float]) -> int:
        """Report eval.csv rows after the first `seen`; returns how many rows have been reported now."""
        import optuna

        rows = read_evaluations(run_dir)
        new = [(timesteps, mean) for timesteps, mean in rows[seen:] if timesteps <= n_timesteps]
        if new:
            interval = run_evaluation_interval(run_dir, self.eval_freq)
        for timesteps, mean in new:
            value = normalise(mean)
            self.trial.report(value, self.first_step + timesteps // interval - 1)
            self.values.append(value)
        if new and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at env step {new[-1][0]} (evaluation value {self.values[-1]:.4g})")
        return max(seen, len(rows))


def pruning_callback(reporter: Reporter, run_dir: Path, env: EnvTarget) -> Any:
    """SB3 callback: after each evaluation of the run, report it; raising TrialPruned ends learn() at once."""
    from stable_baselines3.common.callbacks import BaseCallback

    class ReportEvaluations(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.seen = 0
            self.next_check = reporter.eval_freq
            self.stopped_at: int | None = None  # env steps done when the pruner stopped this run

        def _on_step(self) -> bool:
            # The evaluation callback runs before this one in the run's CallbackList and evaluates at
            # most every eval_freq steps: past each multiple, any new eval.csv row is already written.
            if self.num_timesteps >= self.next_check:
                self.next_check = (self.num_timesteps // reporter.eval_freq + 1) * reporter.eval_freq
                try:
                    self.seen = reporter.report_new(run_dir, self.seen, env.n_timesteps, env.normalise)
                except BaseException:
                    self.stopped_at = self.num_timesteps
                    self.training_env.close()  # subprocess env workers would outlive the aborted learn()
                    raise
            return True

    return ReportEvaluations()


def mark_pruned(run_dir: Path, reason: str, steps: int | None) -> None:
    """run.json of a pruned run: status "pruned" (it stopped on purpose, it is not a crash to resume)."""
    state = rundir.read_run_info(run_dir)
    if state is not None:
        changes = {"status": PRUNED, "pruned": reason, "finished_at": rundir.utc_now()}
        if steps is not None:
            changes["num_timesteps_done"] = steps
        rundir.write_run_state(run_dir, {**state, **changes})


def take_over_killed_run(
    study_dir: Path, retry_of: int | None, algo: str, env_id: str, seed: int, run_dir: Path
) -> RunState | None:
    """Move the killed trial's run of this env and seed here when it need not be trained again; its state, or None.

    Same parameters, same seed, same code: a finished run (FINISHED) is what training it again would give, and a
    run cut off after a checkpoint (INTERRUPTED: Ctrl-C always writes one, `--save-freq N` for a kill) resumes
    to the same result as if it had not been stopped. A run with no checkpoint stays where it was left (None).
    """
    from rl_selfdistill.run.checkpoints import list_checkpoints

    if retry_of is None or run_dir.exists():
        return None
    source = run_dir_of(study_dir, retry_of, algo, env_id, seed)
    state = run_state(source)
    if state is RunState.FINISHED or (state is RunState.INTERRUPTED and list_checkpoints(source)):
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, run_dir)
        return state
    return None


def run_trial(
    trial: Any, plan: TrialPlan, study_dir: Path, hyperparams: dict[str, Any], records: list[dict[str, Any]]
) -> float:
    """Train every (env, seed) run of the trial and return its objective; raises TrialPruned.

    `records` receives one entry per run as it starts (env, seed, run_dir, status, score), so the
    caller can describe a pruned or failed trial too.
    """
    import optuna

    from rl_selfdistill.run import resume_training, run_training

    reporter = Reporter(trial, plan.eval_freq)
    tags = [plan.study_name, f"trial{trial.number}"]
    retry_of = trial.user_attrs.get(RETRY_ATTR)
    for env in plan.envs:
        for seed in plan.seeds:
            run_dir = run_dir_of(study_dir, trial.number, plan.algo, env.env_id, seed)
            record: dict[str, Any] = {"env_id": env.env_id, "seed": seed, "run_dir": str(run_dir.relative_to(study_dir))}
            records.append(record)
            command = train_command(plan, env, seed, hyperparams, run_dir)
            request = train_request(plan, env, seed, hyperparams, run_dir=run_dir, command=command, extra_tags=tags)
            callback = pruning_callback(reporter, run_dir, env)
            reporter.start_run()
            taken = take_over_killed_run(study_dir, retry_of, plan.algo, env.env_id, seed, run_dir)
            if taken is RunState.FINISHED:
                record["reused_from_trial"] = retry_of
            else:
                try:
                    if taken is RunState.INTERRUPTED:
                        record["resumed_from_trial"] = retry_of
                        # The callback first reports the evaluations made before the stop, then the new ones.
                        resume_training(run_dir, callbacks=[callback], extra_tags=[f"trial{trial.number}"])
                    else:
                        run_training(request, callbacks=[callback])
                except optuna.TrialPruned as pruned:
                    mark_pruned(run_dir, str(pruned), callback.stopped_at)
                    record["status"] = PRUNED
                    raise
            score = run_score(run_dir, env.env_id, env.n_timesteps)
            if score is None:
                raise RuntimeError(f"run {run_dir} has no evaluation in its final 10%")
            record.update(status="finished", score=score, normalised=env.normalise(score))
            # Evaluations after the callback's last look; a prune here stops the trial before its next run.
            reporter.report_new(run_dir, callback.seen, env.n_timesteps, env.normalise)
            reporter.end_run(run_dir, env.n_timesteps)
    return sum(record["normalised"] for record in records) / len(records)
