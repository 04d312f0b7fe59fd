"""`rl-selfdistill evaluate`: returns of a trained agent, and optionally an MP4 of it playing."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_selfdistill.errors import UsageError

HELP = "Evaluate a trained agent (run directory or model .zip): mean/std return, optional MP4 video."
DEFAULT_VIDEO_FPS = 30
# Bounds the file size and the time spent rendering long Atari episodes.
DEFAULT_MAX_FRAMES = 1000


@dataclass
class Agent:
    """Where a trained agent's pieces are: its run config, weights and VecNormalize statistics."""

    config: dict[str, Any]
    model_path: Path
    vecnormalize_path: Path | None


def _find_run_dir(path: Path) -> Path | None:
    for candidate in (path, *path.parents[:3]):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def locate_agent(source: Path, *, best: bool = False) -> Agent:
    """Resolve RUN_DIR (final, best or newest checkpointed model) or a model .zip inside a run directory."""
    from rl_selfdistill.train import list_checkpoints, read_config

    source = Path(source)
    if not source.exists():
        raise UsageError(f"{str(source)!r} does not exist; pass a run directory (logs/<algo>/<env>_<N>) or a model .zip")
    run_dir = _find_run_dir(source if source.is_dir() else source.parent)
    if run_dir is None:
        raise UsageError(f"no config.yaml in or above {str(source)!r}; pass a run directory written by rl-selfdistill train")
    config = read_config(run_dir)
    if source.is_file():
        if source.suffix != ".zip":
            raise UsageError(f"{str(source)!r} is not a model .zip; pass a run directory or a .zip saved by training")
        stats = source.with_name("best_vecnormalize.pkl" if source.name == "best_model.zip" else "vecnormalize.pkl")
        return Agent(config, source, stats if stats.exists() else None)
    candidates = [(run_dir / "best_model.zip", run_dir / "best_vecnormalize.pkl")] if best else []
    candidates.append((run_dir / "model.zip", run_dir / "vecnormalize.pkl"))
    candidates.extend((ckpt / "model.zip", ckpt / "vecnormalize.pkl") for ckpt in reversed(list_checkpoints(run_dir)))
    for model_path, stats in candidates:
        if model_path.is_file():
            return Agent(config, model_path, stats if stats.exists() else None)
    raise UsageError(f"run {str(run_dir)!r} has no model.zip and no complete checkpoint yet; train or --resume it first")


def load_agent(agent: Agent, *, render: bool = False, seed: int = 0, device: str = "auto") -> tuple[Any, Any]:
    """(model, env): one evaluation env, with frozen VecNormalize statistics and raw (unnormalised) rewards."""
    from stable_baselines3.common.vec_env import VecNormalize

    from rl_selfdistill.train import algo_class, make_env

    config = agent.config
    env = make_env(config["env_id"], config["hyperparams"], n_envs=1, backend="dummy", seed=seed, render=render)
    if agent.vecnormalize_path is not None:
        env = VecNormalize.load(str(agent.vecnormalize_path), env)
        env.training = False
        env.norm_reward = False
    model = algo_class(config["algo"]).load(agent.model_path, env=env, device=device)
    return model, env


def default_deterministic(config: dict[str, Any]) -> bool:
    from rl_selfdistill.config import env_family

    # The RL Zoo's convention: Atari agents are evaluated with their stochastic policy.
    return env_family(config["env_id"]) != "atari"


def evaluate_agent(
    source: Path, *, episodes: int = 10, deterministic: bool | None = None, best: bool = False, seed: int = 0
) -> tuple[float, float, list[float]]:
    """Mean and std of the raw episode returns, and the returns themselves."""
    from stable_baselines3.common.evaluation import evaluate_policy

    if episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {episodes}")
    agent = locate_agent(source, best=best)
    model, env = load_agent(agent, seed=seed)
    deterministic = default_deterministic(agent.config) if deterministic is None else deterministic
    try:
        returns, _lengths = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
        )
    finally:
        env.close()
    return float(np.mean(returns)), float(np.std(returns)), [float(value) for value in returns]


def record_video(
    source: Path,
    output: Path,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    deterministic: bool | None = None,
    best: bool = False,
    seed: int = 0,
) -> Path:
    """Play one episode (at most `max_frames` frames) and write it as an H.264 MP4; returns the path."""
    import imageio.v2 as imageio

    # Rendering needs no display; without this SDL complains on headless machines.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    agent = locate_agent(source, best=best)
    model, env = load_agent(agent, render=True, seed=seed)
    deterministic = default_deterministic(agent.config) if deterministic is None else deterministic
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    fps = int(env.get_attr("metadata")[0].get("render_fps") or DEFAULT_VIDEO_FPS)
    try:
        with imageio.get_writer(temp, fps=min(fps, 60), codec="libx264", macro_block_size=2) as writer:
            _play(model, env, writer, max_frames=max_frames, deterministic=deterministic)
    finally:
        env.close()
    os.replace(temp, output)
    return output


def _play(model: Any, env: Any, writer: Any, *, max_frames: int, deterministic: bool) -> None:
    obs = env.reset()
    state, episode_start = None, np.ones((1,), dtype=bool)
    for _ in range(max_frames):
        frame = env.render()
        if frame is None:
            raise UsageError("this environment cannot render rgb_array frames, so no video can be recorded")
        writer.append_data(np.asarray(frame))
        action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic)
        obs, _reward, done, _info = env.step(action)
        episode_start = done
        if done[0]:
            break


def register(subparsers: Any) -> None:
    from rl_selfdistill.train_cli import HelpFormatter, _one_line_error

    parser = subparsers.add_parser("evaluate", help=HELP, description=HELP, formatter_class=HelpFormatter)
    parser.error = _one_line_error(parser)  # type: ignore[method-assign]
    parser.add_argument("source", type=Path, metavar="RUN_DIR_OR_MODEL", help="run directory or model .zip inside one")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="greedy actions (default: deterministic, except stochastic for Atari as in the RL Zoo)",
    )
    mode.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions from the policy")
    parser.add_argument("--best", action="store_true", help="use best_model.zip (best evaluation during training)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation env")
    parser.add_argument("--video", action="store_true", help="also write an MP4 of one episode")
    parser.add_argument("--video-path", type=Path, help="where to write the MP4 (default: RUN_DIR/videos/<model>.mp4)")
    parser.add_argument("--video-length", type=int, default=DEFAULT_MAX_FRAMES, help="maximum frames in the video")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.video_length < 1:
        raise UsageError(f"--video-length must be >= 1, got {args.video_length}")
    mean, std, returns = evaluate_agent(
        args.source, episodes=args.episodes, deterministic=args.deterministic, best=args.best, seed=args.seed
    )
    print(f"mean_reward={mean:.2f} +/- {std:.2f} over {len(returns)} episodes")
    if args.video:
        agent = locate_agent(args.source, best=args.best)
        run_dir = _find_run_dir(agent.model_path.parent)
        path = args.video_path or run_dir / "videos" / f"{agent.model_path.stem}.mp4"
        video = record_video(
            args.source, path, max_frames=args.video_length, deterministic=args.deterministic, best=args.best, seed=args.seed
        )
        print(f"video: {video}")
    return 0
