"""Evaluating trained agents: find one in a run directory, load it, measure its returns, record an MP4.

No command-line code here: `rl_selfdistill.cli.evaluate` and `rl_selfdistill.cli.train` call these.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import rl_selfdistill.run.rundir as rundir
from rl_selfdistill.errors import UsageError

DEFAULT_VIDEO_FPS = 30
# Bounds the file size and the time spent rendering long Atari episodes.
DEFAULT_MAX_FRAMES = 1000


@dataclass
class Agent:
    """Where a trained agent's pieces are: its run config, weights and VecNormalize statistics.

    `kind` says which of the run's models it is: "final model", "best model", "newest checkpoint, the run has
    not finished" or "given file".
    """

    config: dict[str, Any]
    run_dir: Path
    model_path: Path
    vecnormalize_path: Path | None
    kind: str = "given file"


@dataclass
class Evaluation:
    """What was scored (which file, at which step, how actions were chosen) and the raw episode returns."""

    agent: Agent
    steps: int
    deterministic: bool
    returns: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def describe(self) -> str:
        actions = "deterministic (greedy) actions" if self.deterministic else "stochastic (sampled) actions"
        return f"{self.agent.model_path} ({self.agent.kind}, step {self.steps}), {actions}"


def _existing(stats: Path) -> Path | None:
    return stats if stats.exists() else None


def check_episodes(episodes: int) -> None:
    if episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {episodes}")


def locate_agent(source: Path, *, best: bool = False) -> Agent:
    """Resolve RUN_DIR (final, best or newest checkpointed model) or a model .zip inside a run directory.

    Never silently another model than asked for: `best` without a best_model.zip is an error, and a run
    without a final model gives its newest usable checkpoint with a `kind` that says so (damaged newer ones are
    skipped with a warning line each). A model .zip that cannot be read is an error.
    """
    agent = _locate(Path(source), best=best)
    _check_readable(agent.model_path)
    return agent


def _check_readable(model: Path) -> None:
    from rl_selfdistill.run.checkpoints import zip_problem

    problem = zip_problem(model)
    if problem is not None:
        raise UsageError(
            f"{str(model)!r} is damaged ({problem}) and cannot be loaded; "
            "evaluate another model of the run, e.g. a checkpoint's (RUN_DIR/checkpoints/ckpt_<step>/model.zip)"
        )


def _locate(source: Path, *, best: bool) -> Agent:
    from rl_selfdistill.run.checkpoints import newest_usable

    if not source.exists():
        raise UsageError(f"{str(source)!r} does not exist; pass a run directory (logs/<algo>/<env>_<N>) or a model .zip")
    run_dir = rundir.find_run_dir(source if source.is_dir() else source.parent)
    if run_dir is None:
        raise UsageError(f"no config.yaml in or above {str(source)!r}; pass a run directory written by rl-selfdistill train")
    config = rundir.read_config(run_dir)
    if source.is_file():
        if source.suffix != ".zip":
            raise UsageError(f"{str(source)!r} is not a model .zip; pass a run directory or a .zip saved by training")
        if best:
            raise UsageError(f"--best picks a model in a run directory, but {str(source)!r} is a file; drop one of them")
        stats = source.with_name(rundir.BEST_VECNORMALIZE if source.name == rundir.BEST_MODEL else rundir.VECNORMALIZE)
        return Agent(config, run_dir, source, _existing(stats))
    if best:
        if not (run_dir / rundir.BEST_MODEL).is_file():
            raise UsageError(
                f"run {str(run_dir)!r} has no {rundir.BEST_MODEL} (written by the evaluations during training, "
                "and this run has had none); drop --best to score its final model or newest checkpoint"
            )
        return Agent(config, run_dir, run_dir / rundir.BEST_MODEL, _existing(run_dir / rundir.BEST_VECNORMALIZE), "best model")
    if (run_dir / rundir.MODEL).is_file():
        return Agent(config, run_dir, run_dir / rundir.MODEL, _existing(run_dir / rundir.VECNORMALIZE), "final model")
    newest, damaged = newest_usable(run_dir)
    if newest is not None:
        stats = _existing(newest / rundir.VECNORMALIZE)
        kind = "newest usable checkpoint" if damaged else "newest checkpoint"
        return Agent(config, run_dir, newest / rundir.MODEL, stats, f"{kind}, the run has not finished")
    if damaged:
        raise UsageError(
            f"run {str(run_dir)!r} has no model.zip and all {len(damaged)} of its checkpoints are damaged (see above)"
        )
    raise UsageError(f"run {str(run_dir)!r} has no model.zip and no complete checkpoint yet; train or --resume it first")


def evaluation_env(config: dict[str, Any], *, seed: int, statistics: Any = None, render: bool = False) -> Any:
    """One env of the run's env id and preset, with frozen VecNormalize `statistics` (path or live) when given."""
    from rl_selfdistill.run.build import frozen_normalization, make_env

    env = make_env(config["env_id"], config["hyperparams"], n_envs=1, backend="dummy", seed=seed, render=render)
    return frozen_normalization(env, statistics) if statistics is not None else env


def load_agent(agent: Agent, *, render: bool = False, seed: int = 0, device: str = "auto") -> tuple[Any, Any]:
    """(model, env): one evaluation env, with frozen VecNormalize statistics and raw (unnormalised) rewards."""
    from rl_selfdistill.run.build import load_model

    env = evaluation_env(agent.config, seed=seed, statistics=agent.vecnormalize_path, render=render)
    return load_model(agent.config, agent.model_path, env, device=device), env


def _deterministic(config: dict[str, Any], requested: bool | None) -> bool:
    from rl_selfdistill.run.build import evaluates_deterministically

    return evaluates_deterministically(config["env_id"]) if requested is None else requested


def evaluate_agent(agent: Agent, *, episodes: int = 10, deterministic: bool | None = None, seed: int = 0) -> Evaluation:
    """The raw episode returns of `agent`, with the step it was saved at and how its actions were chosen."""
    check_episodes(episodes)
    evaluate_policy = _evaluate_policy(agent.config["algo"])
    model, env = load_agent(agent, seed=seed)
    chosen = _deterministic(agent.config, deterministic)
    try:
        returns, _lengths = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=chosen, return_episode_rewards=True
        )
    finally:
        env.close()
    return Evaluation(agent, int(model.num_timesteps), chosen, [float(value) for value in returns])


def _evaluate_policy(algo: str) -> Any:
    """SB3's evaluate_policy, or for an algorithm that acts under action masks sb3-contrib's, which passes the env's
    masks of every step to the agent."""
    from rl_selfdistill.algos import registry

    if registry.get(algo).needs_action_masks:
        from sb3_contrib.common.maskable.evaluation import evaluate_policy as masked_evaluate_policy

        return masked_evaluate_policy
    from stable_baselines3.common.evaluation import evaluate_policy

    return evaluate_policy


def record_video(
    model: Any,
    config: dict[str, Any],
    output: Path,
    *,
    statistics: Any = None,
    max_frames: int = DEFAULT_MAX_FRAMES,
    deterministic: bool | None = None,
    seed: int = 0,
) -> Path:
    """Play one episode of `model` (at most `max_frames` frames) on the run's env and write it as an H.264 MP4.

    `statistics` are the VecNormalize statistics the model expects (a path, or the live VecNormalize of training).
    """
    import imageio.v2 as imageio

    # Rendering needs no display; without this SDL complains on headless machines.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = evaluation_env(config, seed=seed, statistics=statistics, render=True)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    fps = int(env.get_attr("metadata")[0].get("render_fps") or DEFAULT_VIDEO_FPS)
    try:
        with imageio.get_writer(temp, fps=min(fps, 60), codec="libx264", macro_block_size=2) as writer:
            _play(model, env, writer, max_frames=max_frames, deterministic=_deterministic(config, deterministic))
    finally:
        env.close()
    os.replace(temp, output)
    return output


def record_agent_video(
    agent: Agent, output: Path, *, max_frames: int = DEFAULT_MAX_FRAMES, deterministic: bool | None = None, seed: int = 0
) -> Path:
    """record_video of a saved agent."""
    from rl_selfdistill.run.build import load_model

    model = load_model(agent.config, agent.model_path, None, device="auto")
    return record_video(
        model,
        agent.config,
        output,
        statistics=agent.vecnormalize_path,
        max_frames=max_frames,
        deterministic=deterministic,
        seed=seed,
    )


def _play(model: Any, env: Any, writer: Any, *, max_frames: int, deterministic: bool) -> None:
    obs = env.reset()
    state, episode_start = None, np.ones((1,), dtype=bool)
    masked = "action_masks" in inspect.signature(model.predict).parameters  # MaskablePPO's predict takes them
    for _ in range(max_frames):
        frame = env.render()
        if frame is None:
            raise UsageError("this environment cannot render rgb_array frames, so no video can be recorded")
        writer.append_data(np.asarray(frame))
        masks = _action_masks(env) if masked else {}
        action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic, **masks)
        obs, _reward, done, _info = env.step(action)
        episode_start = done
        if done[0]:
            break


def _action_masks(env: Any) -> dict[str, Any]:
    """The env's masks of this step, for a model that acts under masks: without them it would play actions the env
    forbids, unlike in training and evaluation."""
    from sb3_contrib.common.maskable.utils import get_action_masks

    return {"action_masks": get_action_masks(env)}
