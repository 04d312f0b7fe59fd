"""`rl-selfdistill tune`: hyperparameter search with Optuna (TPE + median or successive-halving pruning).

Every trial trains ordinary runs (STUDY_DIR/trials/trial_<N>/runs/<algo>/<env>/seed<K>) on tuning seeds, the
study lives in STUDY_DIR/study.journal, and rerunning the same command resumes it. See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from rl_selfdistill.cli.common import add_command, add_gym_packages
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import check_writable_folder
from rl_selfdistill.tune.seeds import TUNING_SEED_START

HELP = "tune hyperparameters with Optuna on tuning seeds; resumable, several workers, summary with the best command"
EXAMPLES = """examples:
  rl-selfdistill tune --algo sd_ppo --envs CartPole-v1 --seeds 2 -n 50000 --n-trials 30 -o studies/cartpole
  rl-selfdistill tune --algo sd_ppo --suite classic -n 200000 --workers 2 -o studies/classic   # normalised objective
  rl-selfdistill tune --algo sd_ppo --print-space > space.yaml          # edit, then pass --space space.yaml
  rl-selfdistill tune ... -o studies/cartpole --summary                 # rewrite summary.md only
  rl-selfdistill tune ... -o studies/cartpole --summary --reference bench/ppo-tuning-seeds   # PPO's objective beside
"""
DEFAULT_EVALUATIONS = 20  # as the RL Zoo's --n-evaluations


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "tune", help=HELP, epilog=EXAMPLES)
    parser.add_argument("--algo", required=True, help="algorithm to tune (its distillation options; --tune-base for more)")
    envs = parser.add_mutually_exclusive_group()
    envs.add_argument("--suite", help="tune on every env of this suite, objective normalised with its reference scores")
    envs.add_argument("--envs", nargs="+", metavar="ENV_ID", help="env ids; several are normalised with their suite scores")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per env in every trial (the same seeds in all trials)")
    parser.add_argument(
        "--first-seed", type=int, default=TUNING_SEED_START, help="first tuning seed (inside the tuning range)"
    )
    parser.add_argument("-n", "--n-timesteps", type=int, help="budget of every run (default: the suite's)")
    parser.add_argument("--n-trials", type=int, default=20, help="finished trials (complete + pruned) the study ends with")
    parser.add_argument("--space", type=Path, metavar="FILE", help="search space YAML replacing the built-in one")
    parser.add_argument("--tune-base", action="store_true", help="also tune the base algorithm's hyperparameters (Zoo ranges)")
    parser.add_argument("--print-space", action="store_true", help="print the search space as YAML and exit")
    parser.add_argument("--enqueue", type=Path, metavar="FILE", help="YAML list of parameter sets to evaluate first")
    parser.add_argument("--pruner", choices=("median", "halving", "none"), default="median", help="early stopping of trials")
    parser.add_argument(
        "--n-startup-trials", type=int, default=10, help="random trials before TPE; unpruned trials before median"
    )
    parser.add_argument(
        "--n-warmup-evals",
        type=int,
        help="median pruner: first evaluations of each run never pruned (default: a third of a run's)",
    )
    parser.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the study")
    parser.add_argument("--eval-freq", type=int, help=f"evaluate every N steps (default: budget / {DEFAULT_EVALUATIONS})")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation")
    parser.add_argument("--save-freq", type=int, default=0, help="checkpoint every N steps (0: none; trials restart)")
    parser.add_argument("--device", default="auto", help="torch device of every run")
    parser.add_argument("--vec-env", default="auto", help="env backend of every run")
    parser.add_argument("--n-envs", type=int, help="parallel envs per run (default: the preset's)")
    parser.add_argument("--wandb-project", default="rl-selfdistill", help="W&B project")
    parser.add_argument("--wandb-entity", help="W&B entity")
    parser.add_argument("--wandb-mode", default="auto", help="auto, online, offline or disabled")
    parser.add_argument("--study-name", help="Optuna study name and W&B group (default: the STUDY_DIR folder name)")
    parser.add_argument("--summary", action="store_true", help="only rewrite the study's summary from its storage")
    parser.add_argument(
        "--reference",
        type=Path,
        nargs="+",
        default=[],
        metavar="BENCH_DIR",
        help="benchmark folders with other algorithms' runs on these envs and tuning seeds (e.g. the base algorithm's): "
        "the summary scores them like a trial, beside the best trials",
    )
    add_gym_packages(parser)
    parser.add_argument("-o", "--output", type=Path, metavar="STUDY_DIR", help="study folder (required unless --print-space)")
    parser.set_defaults(func=run_tune_command)


def _say_if_busy(workers: int) -> None:
    """Each worker's runs use the threads set in the environment, else the cores shared out (`studies.work`)."""
    from rl_selfdistill.envs.device import available_cores, explicit_torch_threads, say_if_busy

    say_if_busy((explicit_torch_threads() or max(1, available_cores() // workers)) * workers)


def run_tune_command(args: argparse.Namespace) -> int:
    from rl_selfdistill.run.request import import_gym_packages
    from rl_selfdistill.tune.space import load_space

    import_gym_packages(args.gym_packages)
    space = load_space(args.algo, args.space, tune_base=args.tune_base)
    if args.print_space:
        import yaml

        print(yaml.safe_dump(space.to_yaml(), sort_keys=False, default_flow_style=None), end="")
        return 0
    if args.output is None:
        raise UsageError("-o STUDY_DIR is required; it holds the study journal, the trials' runs and the summary")
    if importlib.util.find_spec("optuna") is None:
        raise UsageError("tune needs Optuna; pip install 'rl-selfdistill[tune]'")
    check_writable_folder(args.output, "-o")
    settings = tune_settings(args, space)
    from rl_selfdistill.tune import study as studies
    from rl_selfdistill.tune.summary import write_summary

    if args.summary and not (args.output / studies.JOURNAL).is_file():
        raise UsageError(f"no study in {str(args.output)!r} yet; run the command without --summary first")
    study = studies.open_study(settings)  # refuses another study's folder before anything is written
    if args.summary:  # reads the study: its study.json (the command that runs it, --n-trials) stays as it is
        print(f"wrote {write_summary(study, studies.as_recorded(settings))}")
        return 0
    studies.write_study_file(settings)
    _say_if_busy(settings.workers)
    status = studies.run_workers(settings)
    path = write_summary(studies.open_study(settings), settings)
    print(f"study {settings.plan.study_name}: see {path}")
    return status


def tune_settings(args: argparse.Namespace, space: Any) -> Any:
    """Everything checked before the study folder is touched: a bad option never costs a trial."""
    from rl_selfdistill.tune.seeds import tuning_seeds
    from rl_selfdistill.tune.space import first_point
    from rl_selfdistill.tune.study import TuneSettings
    from rl_selfdistill.tune.trial import TrialPlan, check_plan

    for flag, value, minimum in (
        ("--n-trials", args.n_trials, 1),
        ("--workers", args.workers, 1),
        ("--eval-episodes", args.eval_episodes, 1),
        ("--n-startup-trials", args.n_startup_trials, 0),
        ("--save-freq", args.save_freq, 0),
        ("--n-warmup-evals", args.n_warmup_evals or 0, 0),
        ("--sampler-seed", args.sampler_seed or 0, 0),
    ):
        if value < minimum:
            raise UsageError(f"{flag} must be at least {minimum}, got {value}")
    if (args.sampler_seed or 0) >= 2**32:
        raise UsageError(f"--sampler-seed must be below 2**32, got {args.sampler_seed}")
    if not args.suite and not args.envs:
        raise UsageError("name the envs to tune on: --envs ENV_ID ... or --suite NAME")
    envs = env_targets(args.suite, args.envs, args.n_timesteps)
    shortest = min(env.n_timesteps for env in envs)
    eval_freq = args.eval_freq if args.eval_freq is not None else max(1, shortest // DEFAULT_EVALUATIONS)
    if not 0 < eval_freq <= shortest:
        raise UsageError(f"--eval-freq must lie in 1..{shortest} (the shortest budget), got {eval_freq}")
    warmup = args.n_warmup_evals if args.n_warmup_evals is not None else shortest // eval_freq // 3
    plan = TrialPlan(
        algo=args.algo,
        envs=tuple(envs),
        seeds=tuple(tuning_seeds(args.first_seed, args.seeds)),
        eval_freq=eval_freq,
        eval_episodes=args.eval_episodes,
        train_options=_train_options(args),
        study_name=args.study_name or args.output.resolve().name,
    )
    check_plan(plan, first_point(space))
    return TuneSettings(
        study_dir=args.output,
        plan=plan,
        space=space,
        n_trials=args.n_trials,
        pruner=args.pruner,
        n_startup_trials=args.n_startup_trials,
        pruner_warmup=warmup,
        sampler_seed=args.sampler_seed,
        enqueue=tuple(read_candidates(args.enqueue, space)) if args.enqueue else (),
        workers=args.workers,
        command=canonical_command(args),
        references=tuple(_reference_folders(args.reference)),
    )


def _reference_folders(folders: list[Path]) -> list[Path]:
    from rl_selfdistill.benchmark.grid import RUNS_DIR

    for folder in folders:
        if not (folder / RUNS_DIR).is_dir():
            raise UsageError(f"--reference {str(folder)!r} holds no {RUNS_DIR}/ folder; pass a benchmark's output folder")
    return folders


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    from rl_selfdistill.config import WANDB_MODES

    if args.wandb_mode not in WANDB_MODES:
        raise UsageError(f"unknown --wandb-mode {args.wandb_mode!r}; choose one of {', '.join(WANDB_MODES)}")
    options = {
        "device": args.device,
        "vec_env": args.vec_env,
        "n_envs": args.n_envs,
        "save_freq": args.save_freq,
        "wandb_project": args.wandb_project,
        "wandb_entity": args.wandb_entity,
        "wandb_mode": args.wandb_mode,
    }
    if args.gym_packages:
        options["gym_packages"] = list(args.gym_packages)
    return options


def env_targets(suite: str | None, env_ids: list[str] | None, n_timesteps: int | None) -> list[Any]:
    """Budgets as `benchmark` resolves them; suite reference scores when the objective is normalised.

    The objective is normalised when several envs are tuned together or a --suite is named: raw returns
    of different envs cannot be averaged. A single env is tuned on its raw return.
    """
    from rl_selfdistill.cli.benchmark import resolve_envs
    from rl_selfdistill.envs import list_suites, load_suite
    from rl_selfdistill.tune.trial import EnvTarget

    budgets = resolve_envs(suite, env_ids, n_timesteps)
    if len({env.env_id for env in budgets}) < len(budgets):
        raise UsageError("an env is named twice in --envs; name each once")
    if suite is None and len(budgets) == 1:
        return [EnvTarget(budgets[0].env_id, budgets[0].n_timesteps)]
    references = {}
    for name in [suite] if suite else reversed(list_suites()):
        references.update({env.env_id: env for env in load_suite(name).envs})
    targets = []
    for budget in budgets:
        reference = references.get(budget.env_id)
        if reference is None:
            raise UsageError(f"{budget.env_id} is in no suite, so its score cannot be normalised; tune it on its own")
        targets.append(EnvTarget(budget.env_id, budget.n_timesteps, reference))
    return targets


def read_candidates(path: Path, space: Any) -> list[dict[str, Any]]:
    """--enqueue FILE: a YAML list of parameter mappings, each checked against the space."""
    from rl_selfdistill.config.presets import load_yaml_text, read_text_file
    from rl_selfdistill.tune.space import check_candidate

    what = f"candidates file {str(path)!r}"
    data = load_yaml_text(read_text_file(path, what="candidates file"), what)
    if not isinstance(data, list) or not data:
        raise UsageError(f"{what} must hold a non-empty YAML list of parameter mappings")
    return [check_candidate(space, item, what=what) for item in data]


def canonical_command(args: argparse.Namespace) -> str:
    """The command line equivalent to `args` (recorded in study.json and the summary): rerun it to resume."""
    from rl_selfdistill.run.rundir import PROGRAM, format_command

    envs = {"--suite": args.suite} if args.suite else {"--envs": args.envs}
    options = {
        "--algo": args.algo,
        **envs,
        "--seeds": args.seeds,
        "--first-seed": args.first_seed if args.first_seed != TUNING_SEED_START else None,
        "-n": args.n_timesteps,
        "--n-trials": args.n_trials,
        "--space": args.space,
        "--tune-base": args.tune_base,
        "--enqueue": args.enqueue,
        "--pruner": args.pruner,
        "--n-startup-trials": args.n_startup_trials,
        "--n-warmup-evals": args.n_warmup_evals,
        "--sampler-seed": args.sampler_seed,
        "--workers": args.workers if args.workers > 1 else None,
        "--eval-freq": args.eval_freq,
        "--eval-episodes": args.eval_episodes,
        "--save-freq": args.save_freq or None,
        "--device": args.device if args.device != "auto" else None,
        "--vec-env": args.vec_env if args.vec_env != "auto" else None,
        "--n-envs": args.n_envs,
        "--wandb-project": args.wandb_project,
        "--wandb-entity": args.wandb_entity,
        "--wandb-mode": args.wandb_mode,
        "--study-name": args.study_name,
        "--reference": args.reference or None,
        "--gym-packages": args.gym_packages,
        "-o": args.output,
    }
    return format_command([PROGRAM, "tune"], options)
