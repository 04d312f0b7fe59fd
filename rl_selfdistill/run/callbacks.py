"""The SB3 callbacks of a training run: checkpoints, graceful stops, evaluation records and the progress bar."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

import rl_selfdistill.run.rundir as rundir

# Refreshing the progress bar's postfix more often costs more than the information is worth.
POSTFIX_PERIOD_S = 1.0


class CheckpointCallback(BaseCallback):
    """Calls `save()` at the first rollout start after each multiple of `save_freq` env steps.

    Rollout starts are the one point where the previous update is complete and nothing of
    the next one exists, so a resumed run continues where the algorithm's own loop would.
    """

    def __init__(self, save: Callable[[], None], save_freq: int) -> None:
        super().__init__()
        self.save = save
        self.save_freq = save_freq
        self.next_save = -1

    def _next_multiple(self) -> int:
        return (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_training_start(self) -> None:
        if self.save_freq > 0:
            self.next_save = self._next_multiple()

    def _on_rollout_start(self) -> None:
        if self.save_freq > 0 and self.model.num_timesteps >= self.next_save:
            self.save()
            self.next_save = self._next_multiple()

    def _on_step(self) -> bool:
        return True


class StopRequested(Exception):
    """Raised by `StopAtRolloutStart` to leave `learn()` at a rollout start."""


class StopAtRolloutStart(BaseCallback):
    """Leaves `learn()` at the first rollout start after `requested()` became true, by raising `StopRequested`.

    The same point as CheckpointCallback's: the update in progress is complete and no step of the next rollout
    has been taken, so a checkpoint written there resumes exactly like a periodic one (and PPO's budget stays a
    whole number of rollouts). The wait is at most one rollout and its update.
    """

    def __init__(self, requested: Callable[[], bool]) -> None:
        super().__init__()
        self.requested = requested

    def _on_rollout_start(self) -> None:
        if self.requested():
            raise StopRequested

    def _on_step(self) -> bool:
        return True


class EvalRecorder(BaseCallback):
    """Appends one eval.csv row per evaluation of its parent EvalCallback (raw returns, from the eval env's Monitor)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)

    def _on_step(self) -> bool:
        parent = self.parent
        rundir.append_eval_row(self.run_dir, self.num_timesteps, parent.evaluations_results[-1], parent.evaluations_length[-1])
        return True


class SaveBestVecNormalize(BaseCallback):
    """Saves the VecNormalize statistics that belong to best_model.zip."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def _on_step(self) -> bool:
        vecnormalize = self.model.get_vec_normalize_env()
        if vecnormalize is not None:
            vecnormalize.save(str(self.path))
        return True


def make_eval_callback(
    eval_env: Any, run_dir: Path, options: dict[str, Any], *, n_envs: int, deterministic: bool, masked: bool = False
) -> EvalCallback:
    """SB3's EvalCallback; with `masked` (an algorithm that acts under action masks) sb3-contrib's, which passes the
    eval env's masks of every step to the agent."""
    # The eval env is always a DummyVecEnv (it must be able to render); SB3 warns when training uses another backend.
    warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
    evaluation_class = EvalCallback
    if masked:
        from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback

        evaluation_class = MaskableEvalCallback
    return evaluation_class(
        eval_env,
        callback_on_new_best=SaveBestVecNormalize(Path(run_dir) / rundir.BEST_VECNORMALIZE),
        callback_after_eval=EvalRecorder(run_dir),
        n_eval_episodes=options["eval_episodes"],
        eval_freq=max(options["eval_freq"] // n_envs, 1),
        log_path=str(run_dir),  # writes evaluations.npz
        best_model_save_path=str(run_dir),
        deterministic=deterministic,
        verbose=0,
    )


def continue_eval_history(callback: EvalCallback, run_dir: Path, steps: int, n_envs: int, history: dict[str, Any]) -> None:
    """On resume: keep the evaluation cadence in absolute steps, the best reward so far and evaluations.npz's rows."""
    callback.n_calls = steps // n_envs
    if not steps:
        return
    best = rundir.best_eval_mean(run_dir)
    if best is not None:
        callback.best_mean_reward = best
    if "timesteps" in history:
        callback.evaluations_timesteps = [int(step) for step in history["timesteps"]]
        callback.evaluations_results = [list(row) for row in history.get("results", [])]
        callback.evaluations_length = [list(row) for row in history.get("ep_lengths", [])]
        if "successes" in history:
            callback.evaluations_successes = [list(row) for row in history["successes"]]


def progress_wanted(requested: bool) -> bool:
    """Show a bar only when asked for and stderr is a terminal (never in logs, pipes or batch jobs)."""
    return requested and sys.stderr.isatty()


class ProgressBarCallback(BaseCallback):
    """tqdm bar over the whole budget, starting at the resumed step count, with fps and the recent mean return."""

    def __init__(self, total_timesteps: int) -> None:
        super().__init__()
        self.total_timesteps = total_timesteps
        self.bar: Any = None
        self._last_postfix = 0.0
        self._start_steps = 0
        self._start_time = 0.0

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        self._start_steps = self.model.num_timesteps
        self._start_time = time.time()
        self.bar = tqdm(total=self.total_timesteps, initial=self._start_steps, unit="step", dynamic_ncols=True)

    def _advance(self) -> None:
        # PPO and A2C step whole rollouts, so they may end past a budget that is not a multiple of n_steps x n_envs:
        # the bar stops at the budget (100%), never beyond it.
        self.bar.update(min(self.model.num_timesteps, self.total_timesteps) - self.bar.n)

    def _on_step(self) -> bool:
        self._advance()
        now = time.time()
        if now - self._last_postfix >= POSTFIX_PERIOD_S:
            self._last_postfix = now
            self.bar.set_postfix(self._postfix(now), refresh=False)
        return True

    def _postfix(self, now: float) -> dict[str, str]:
        fps = (self.model.num_timesteps - self._start_steps) / max(now - self._start_time, 1e-9)
        postfix = {"fps": f"{fps:.0f}"}
        episodes = self.model.ep_info_buffer
        if episodes:
            postfix["ep_rew_mean"] = f"{np.mean([info['r'] for info in episodes]):.2f}"
        return postfix

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self._advance()
            self.bar.close()
