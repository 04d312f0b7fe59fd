"""`rl-selfdistill evaluate`: returns of a trained agent, and optionally an MP4 of it playing."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rl_selfdistill.cli.common import add_command, add_gym_packages
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import check_writable_folder

HELP = "Evaluate a trained agent (run directory or model .zip): mean/std return, optional MP4 video."
DEFAULT_MAX_FRAMES = 1000  # rl_selfdistill.evaluation.DEFAULT_MAX_FRAMES, without importing numpy for --help


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "evaluate", help=HELP)
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
    parser.add_argument(
        "--best", action="store_true", help="use best_model.zip (best evaluation during training); an error if there is none"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation env")
    parser.add_argument("--video", action="store_true", help="also write an MP4 of one episode")
    parser.add_argument(
        "--video-path", type=Path, help="where to write the MP4; implies --video (default: RUN_DIR/videos/<model>.mp4)"
    )
    parser.add_argument("--video-length", type=int, default=DEFAULT_MAX_FRAMES, help="maximum frames in the video")
    add_gym_packages(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rl_selfdistill import evaluation
    from rl_selfdistill.run import rundir
    from rl_selfdistill.run.request import import_gym_packages

    import_gym_packages(args.gym_packages)
    if args.video_length < 1:
        raise UsageError(f"--video-length must be >= 1, got {args.video_length}")
    evaluation.check_episodes(args.episodes)  # before anything is looked up
    if args.video_path is not None:
        args.video = True
        check_video_path(args.video_path)
    agent = evaluation.locate_agent(args.source, best=args.best)
    if args.video and args.video_path is None:
        check_writable_folder(agent.run_dir, "the run directory (for its video)")
    result = evaluation.evaluate_agent(agent, episodes=args.episodes, deterministic=args.deterministic, seed=args.seed)
    print(f"scored: {result.describe()}")
    print(f"mean_reward={result.mean:.2f} +/- {result.std:.2f} over {len(result.returns)} episodes")
    if args.video:
        path = args.video_path or agent.run_dir / rundir.VIDEOS / f"{agent.model_path.stem}.mp4"
        video = evaluation.record_agent_video(
            agent, path, max_frames=args.video_length, deterministic=args.deterministic, seed=args.seed
        )
        print(f"video: {video}")
    return 0


def check_video_path(path: Path) -> None:
    """--video-path names a new or existing .mp4 file in a folder this process can write; checked before scoring."""
    if path.suffix.lower() != ".mp4":
        raise UsageError(f"--video-path {str(path)!r} must name an .mp4 file, e.g. videos/agent.mp4")
    if path.is_dir():
        raise UsageError(f"--video-path {str(path)!r} is a folder; name the .mp4 file inside it")
    check_writable_folder(path.parent, "--video-path's folder")
