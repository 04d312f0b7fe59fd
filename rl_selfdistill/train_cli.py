"""`rl-selfdistill train`: argparse front end of rl_selfdistill.train (RL Zoo style options)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

from rl_selfdistill.config import ALGOS, parse_params
from rl_selfdistill.errors import UsageError

HELP = "Train one agent from a preset (agents/<algo>.yaml), tracked in W&B and resumable."
EXAMPLES = """examples:
  rl-selfdistill train --algo sd_ppo --env CartPole-v1
  rl-selfdistill train --algo sd_dqn --env PongNoFrameskip-v4 --seed 1 -params distill_coef:0.2 teacher_mode:ema
  rl-selfdistill train --resume logs/sd_ppo/CartPole-v1_1
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where there is a meaningful default; options without one explain it in their help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _one_line_error(parser: argparse.ArgumentParser) -> Any:
    def error(message: str) -> NoReturn:
        # argparse would print the whole usage block; one line that names the fix is easier to act on.
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    return error


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", help=f"algorithm: one of {', '.join(ALGOS)} (required unless --resume)")
    parser.add_argument("--env", dest="env_id", help="environment id, e.g. CartPole-v1 (required unless --resume)")
    parser.add_argument(
        "-n", "--n-timesteps", type=int, help="training budget in env steps (default: the preset's n_timesteps)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: drawn at random and recorded in config.yaml)")
    parser.add_argument("--vec-env", default="auto", help="vectorised env backend: auto, dummy, subproc or envpool")
    parser.add_argument("--n-envs", type=int, help="parallel environments (default: the preset's n_envs)")
    parser.add_argument("--device", default="auto", help="torch device for the networks: auto, cpu, cuda or cuda:N")
    parser.add_argument("-f", "--log-folder", type=Path, default=Path("logs"), help="runs go to LOG_FOLDER/<algo>/<env>_<N>")
    parser.add_argument("--run-dir", type=Path, help="use exactly this (new or empty) run directory instead of -f numbering")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every N env steps (0 disables)")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation")
    parser.add_argument("--save-freq", type=int, default=50_000, help="checkpoint every N env steps (0 disables)")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="keep the newest K checkpoints")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its newest complete checkpoint")
    parser.add_argument(
        "-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help="override preset keys, e.g. n_steps:256"
    )
    parser.add_argument("--conf-file", type=Path, help="preset file to use instead of agents/<algo>.yaml (same format)")
    parser.add_argument("--wandb-project", default="rl-selfdistill", help="W&B project")
    parser.add_argument("--wandb-entity", help="W&B entity (default: your default entity)")
    parser.add_argument("--wandb-group", help="W&B group (default: <algo>_<env>, shared by the seeds of a setting)")
    parser.add_argument(
        "--wandb-mode",
        default="auto",
        help="auto (online if an API key is configured, else offline), online, offline, disabled",
    )
    parser.add_argument("--tags", nargs="+", default=[], help="extra W&B tags")
    parser.add_argument("--video", action="store_true", help="record an MP4 of the final agent and log it to W&B")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it is only shown on a terminal anyway)")
    parser.add_argument("--verbose", type=int, default=1, help="0: quiet, 1: print SB3's log table when no progress bar")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help=HELP,
        description=HELP,
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.error = _one_line_error(parser)  # type: ignore[method-assign]
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> Any:
    from rl_selfdistill.train import TrainRequest

    if not args.algo or not args.env_id:
        raise UsageError("--algo and --env are required (or pass --resume RUN_DIR)")
    return TrainRequest(
        algo=args.algo,
        env_id=args.env_id,
        n_timesteps=args.n_timesteps,
        seed=args.seed,
        vec_env=args.vec_env,
        n_envs=args.n_envs,
        device=args.device,
        log_folder=args.log_folder,
        eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes,
        save_freq=args.save_freq,
        keep_checkpoints=args.keep_checkpoints,
        hyperparams=parse_params(args.hyperparams),
        conf_file=args.conf_file,
        wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
        wandb_group=args.wandb_group,
        wandb_mode=args.wandb_mode,
        tags=list(args.tags),
        progress=not args.no_progress,
        video=args.video,
        verbose=args.verbose,
        run_dir=args.run_dir,
        command=" ".join(shlex.quote(part) for part in ["rl-selfdistill", *sys.argv[1:]]),
    )


def run(args: argparse.Namespace) -> int:
    from rl_selfdistill.train import resume_training, run_training

    if args.resume is not None:
        if args.algo or args.env_id or args.hyperparams:
            raise UsageError("--resume takes its settings from RUN_DIR/config.yaml; drop --algo, --env and -params")
        run_dir = resume_training(args.resume)
    else:
        run_dir = run_training(request_from_args(args))
    print(f"finished: {run_dir}")
    return 0
