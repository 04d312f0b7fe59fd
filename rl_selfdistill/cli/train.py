"""`rl-selfdistill train`: one run from a preset, RL Zoo style options (the Zoo's names work as aliases)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rl_selfdistill.cli.common import OneLineErrorParser, add_command, add_gym_packages, add_hyperparams, key_values
from rl_selfdistill.errors import UsageError

HELP = "Train one agent from a preset (agents/<algo>.yaml), tracked in W&B and resumable."
EXAMPLES = """examples:
  rl-selfdistill train --algo sd_ppo --env CartPole-v1
  rl-selfdistill train --algo sd_dqn --env PongNoFrameskip-v4 --seed 1 -params distill_coef:0.2 teacher_mode:ema
  rl-selfdistill train --resume logs/sd_ppo/CartPole-v1_1
  rl-selfdistill train --resume logs/sd_ppo/CartPole-v1_1 -n 200000   (extend its budget)
"""


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "train", help=HELP, epilog=EXAMPLES)
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", help="algorithm name from the registry, e.g. sd_ppo (required unless --resume)")
    parser.add_argument("--env", dest="env_id", help="environment id, e.g. CartPole-v1 (required unless --resume)")
    parser.add_argument(
        "-n", "--n-timesteps", type=int, help="training budget in env steps (default: the preset's n_timesteps)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: drawn at random and recorded in config.yaml)")
    parser.add_argument("--vec-env", default="auto", help="vectorised env backend: auto, dummy, subproc or envpool")
    parser.add_argument("--n-envs", type=int, help="parallel environments (default: the preset's n_envs)")
    parser.add_argument("--device", default="auto", help="torch device for the networks: auto, cpu, cuda or cuda:N")
    parser.add_argument("--num-threads", type=int, help="torch threads (default: the cores the env workers leave free)")
    parser.add_argument("-f", "--log-folder", type=Path, default=Path("logs"), help="runs go to LOG_FOLDER/<algo>/<env>_<N>")
    parser.add_argument("--run-dir", type=Path, help="use exactly this (new or empty) run directory instead of -f numbering")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every N env steps (0 disables)")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation")
    parser.add_argument("--n-eval-envs", type=int, default=1, help="evaluation envs stepped side by side")
    parser.add_argument("--save-freq", type=int, default=50_000, help="checkpoint every N env steps (0 disables)")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="keep the newest K checkpoints")
    parser.add_argument(
        "--save-replay-buffer",
        action="store_true",
        help="put the replay buffer of off-policy algorithms into every checkpoint (exact resume; GBs for Atari)",
    )
    parser.add_argument(
        "--no-divergence-guard",
        dest="divergence_guard",
        action="store_false",
        help="keep training when a loss, a parameter or the action distribution turns NaN/inf; without it such a run "
        "stops with exit 2, keeps its last good checkpoint and is marked diverged. Recorded in config.yaml: --resume keeps it",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its newest usable checkpoint (damaged ones are skipped, with a warning); only -n "
        "(a larger budget), --save-freq, --eval-freq, --device and --wandb-mode may be given with it",
    )
    parser.add_argument(
        "--restart-if-unrecoverable",
        action="store_true",
        help="with --resume, when every checkpoint of the run is damaged: move them to checkpoints/damaged-<time>/ and "
        "start the run over from step 0 (without it such a resume stops with an error and changes nothing)",
    )
    add_hyperparams(parser, "override preset keys, e.g. n_steps:256")
    parser.add_argument(
        "--env-kwargs", nargs="+", default=[], metavar="KEY:VALUE", help="keyword arguments of the env, over the preset's"
    )
    parser.add_argument(
        "--conf-file", "-conf", type=Path, help="preset file to use instead of agents/<algo>.yaml (same format)"
    )
    add_gym_packages(parser)
    _add_tracking_arguments(parser)
    parser.add_argument("--video", action="store_true", help="record an MP4 of the final agent and log it to W&B")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "-P", "--progress", dest="progress", action="store_true", default=True, help="progress bar (on a terminal only)"
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--verbose", type=int, default=1, help="0: quiet, 1: print SB3's log table when no progress bar")


def _add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wandb-project", "--wandb-project-name", default="rl-selfdistill", help="W&B project")
    parser.add_argument("--wandb-entity", help="W&B entity (default: your default entity)")
    parser.add_argument("--wandb-group", help="W&B group (default: <algo>_<env>, shared by the seeds of a setting)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--wandb-mode",
        default="auto",
        help="auto (online if an API key is configured, else offline), online, offline, disabled",
    )
    mode.add_argument("--track", dest="wandb_mode", action="store_const", const="online", help="same as --wandb-mode online")
    parser.add_argument("--tags", "-tags", "--wandb-tags", nargs="+", default=[], help="extra W&B tags")


def request_from_args(args: argparse.Namespace) -> Any:
    from rl_selfdistill.config import parse_params
    from rl_selfdistill.run import TrainRequest
    from rl_selfdistill.run.rundir import PROGRAM, format_command

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
        n_eval_envs=args.n_eval_envs,
        save_freq=args.save_freq,
        keep_checkpoints=args.keep_checkpoints,
        save_replay_buffer=args.save_replay_buffer,
        divergence_guard=args.divergence_guard,
        hyperparams=parse_params(args.hyperparams),
        env_kwargs=key_values(args.env_kwargs, "--env-kwargs"),
        conf_file=args.conf_file,
        gym_packages=list(args.gym_packages),
        num_threads=args.num_threads,
        wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
        wandb_group=args.wandb_group,
        wandb_mode=args.wandb_mode,
        tags=list(args.tags),
        progress=args.progress,
        video=args.video,
        verbose=args.verbose,
        run_dir=args.run_dir,
        command=format_command([PROGRAM, *args.argv]),
    )


def run(args: argparse.Namespace) -> int:
    from rl_selfdistill.run import prepare_run
    from rl_selfdistill.run.interrupts import RunInterrupted
    from rl_selfdistill.run.request import import_gym_packages
    from rl_selfdistill.run.rundir import PROGRAM, format_command

    import_gym_packages(args.gym_packages)  # before --algo and --env are looked up
    if args.resume is not None:
        command = format_command([PROGRAM, *args.argv])
        training = _prepare_resume(args, command)
    else:
        if args.restart_if_unrecoverable:
            raise UsageError("--restart-if-unrecoverable only applies to --resume RUN_DIR; drop it for a new run")
        training = prepare_run(request_from_args(args))
    try:
        with training:
            training.train()
            if training.options.get("video"):
                _record_final_video(training)
    except RunInterrupted as stop:
        resume = format_command([PROGRAM, "train", "--resume", stop.run_dir])
        print(f"{stop.signal_name}: stopped at step {stop.steps} with a checkpoint; continue with: {resume}", file=sys.stderr)
        return stop.exit_status
    print(finished_line(training.run_dir, int(training.model.num_timesteps)))
    return 0


def finished_line(run_dir: Path, steps: int) -> str:
    """The last line `train` prints: the steps done, the last evaluation's mean return and where the run is."""
    from rl_selfdistill.run import rundir

    last = rundir.last_evaluation(run_dir)
    if last is None:
        score = "no evaluation ran (--eval-freq 0 or above the budget)"
    else:
        score = (
            f"last evaluation at step {last['timesteps']:.0f}: mean return {last['mean_reward']:.2f} "
            f"+/- {last['std_reward']:.2f} over {last['n_episodes']:.0f} episodes"
        )
    return f"finished {steps} steps; {score}; run directory: {run_dir}"


def _prepare_resume(args: argparse.Namespace, command: str) -> Any:
    from rl_selfdistill.run import prepare_resume
    from rl_selfdistill.run.checkpoints import UnrecoverableCheckpoints

    try:
        return prepare_resume(
            args.resume,
            changes=resume_changes(args),
            command=command,
            restart_if_unrecoverable=args.restart_if_unrecoverable,
        )
    except UnrecoverableCheckpoints as error:
        raise UsageError(
            f"{error.problem}; to start it over from step 0, keeping them in checkpoints/damaged-<time>/, "
            "add --restart-if-unrecoverable"
        ) from None


def given_options(argv: list[str]) -> dict[str, str]:
    """The options written on the `train` command line (dest -> option name), whatever their values."""
    parser = OneLineErrorParser(prog="rl-selfdistill train", add_help=False)
    add_train_arguments(parser)
    words = argv[argv.index("train") + 1 :] if "train" in argv else argv
    written = {word.split("=", 1)[0] for word in words if word.startswith("-")}
    names: dict[str, str] = {}
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # what is not written stays out of the namespace
        for option in action.option_strings:
            if option in written:
                names.setdefault(action.dest, option)  # the spelling the user wrote (--track, not --wandb-mode)
    return {dest: names.get(dest, dest) for dest in vars(parser.parse_args(words))}


def resume_changes(args: argparse.Namespace) -> dict[str, Any]:
    """What `--resume` is asked to change: the budget, checkpoint and evaluation cadence, device, W&B mode, threads.

    Any other option would make another run (or is a display setting recorded with the run): refused, named.
    """
    from rl_selfdistill.run.request import RESUMABLE

    given = given_options(args.argv)
    # --gym-packages was imported already: it registers what the run needs, and changes nothing recorded.
    fixed = sorted(
        name
        for dest, name in given.items()
        if dest not in RESUMABLE and dest not in ("resume", "gym_packages", "restart_if_unrecoverable")
    )
    if fixed:
        allowed = ", ".join(RESUMABLE.values())
        raise UsageError(
            f"--resume keeps the run's settings from RUN_DIR/config.yaml; drop {', '.join(fixed)} (only {allowed} can change)"
        )
    return {dest: getattr(args, dest) for dest in given if dest in RESUMABLE}


def _record_final_video(training: Any) -> None:
    """One episode of the model just trained, as RUN_DIR/videos/final.mp4 and in the W&B run."""
    from rl_selfdistill.evaluation import record_video
    from rl_selfdistill.run import rundir

    video = record_video(
        training.model,
        training.config,
        training.run_dir / rundir.VIDEOS / "final.mp4",
        statistics=training.model.get_vec_normalize_env(),
    )
    training.log_video(video)
