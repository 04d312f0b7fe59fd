"""`rl-selfdistill benchmark`: an algo x env x seed grid of training runs, on a local process pool or Ray."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rl_selfdistill.benchmark import grid
from rl_selfdistill.benchmark.grid import EnvBudget, Manifest, RunSpec, RunState
from rl_selfdistill.cli.common import add_command, add_gym_packages, add_hyperparams, key_values
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import check_writable_folder

HELP = "run an algo x env x seed grid of training runs (local process pool or Ray)"
DESCRIPTION = (
    "Each cell is one `train` run in OUT/runs/<algo>/<env_id>/seed<N>. Re-running the same command "
    "skips finished runs and resumes interrupted ones."
)


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "benchmark", help=HELP, description=DESCRIPTION)
    envs = parser.add_mutually_exclusive_group(required=True)
    envs.add_argument("--suite", help="suite name from envs/*.yaml (classic, atari5, mujoco5, ...)")
    envs.add_argument("--envs", nargs="+", metavar="ENV_ID", help="explicit env ids (budgets: -n or a suite that lists them)")
    parser.add_argument("--algos", nargs="+", default=["ppo", "sd_ppo"], metavar="ALGO", help="algorithm names")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds per (algo, env)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--allow-tuning-seeds", action="store_true", help="accept seeds of the tuning range (docs/tuning.md)")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="budget for every env (default: the suite's)")
    add_hyperparams(parser, "hyperparameter overrides for the SD algos")
    parser.add_argument(
        "--env-kwargs",
        nargs="+",
        default=[],
        metavar="KEY:VALUE",
        help="keyword arguments of every env, over the presets', for every algo (e.g. schedule_seed:1)",
    )
    parser.add_argument("--backend", choices=("local", "ray"), default="local", help="where the runs execute")
    parser.add_argument(
        "--workers", type=int, default=1, help="runs at a time (local pool size; size of a local Ray instance)"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (`auto` for a running one) (default: start a local Ray)"
    )
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        help="Ray num_cpus per task, and torch threads per run (default: 1 with Ray, cores / workers locally)",
    )
    parser.add_argument("--gpus-per-run", type=float, default=0, help="Ray num_gpus per task")
    parser.add_argument("--device", default=None, help="torch device for every run (default: train's default)")
    parser.add_argument("--vec-env", default=None, help="env backend for every run: dummy | subproc | envpool")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel envs per run (default: the preset's)")
    parser.add_argument("--eval-freq", type=int, default=None, help="evaluate every N env steps (default: train's)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default: train's)")
    parser.add_argument("--save-freq", type=int, default=None, help="checkpoint every N env steps (default: train's)")
    parser.add_argument(
        "--save-replay-buffer",
        action="store_true",
        help="off-policy runs keep their replay buffer in every checkpoint, so an interrupted run resumes exactly "
        "(hundreds of MB per checkpoint for a 1M-transition buffer); without it a resumed run refills an empty buffer",
    )
    parser.add_argument("--wandb-project", "--wandb-project-name", default=None, help="W&B project (default: train's)")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity")
    parser.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default=None, help="W&B mode")
    parser.add_argument("--benchmark-id", default=None, help="W&B group and tag (default: generated once per OUT)")
    add_gym_packages(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the grid and print what the same command would do with each run (skip, resume from its newest "
        "checkpoint, start) and the env steps left; trains nothing and writes nothing",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="benchmark folder")
    parser.set_defaults(func=run_benchmark_command)


def resolve_envs(suite: str | None, env_ids: list[str] | None, n_timesteps: int | None) -> list[EnvBudget]:
    """Budgets: -n if given, else the suite's (for --envs, the first suite listing the env)."""
    from rl_selfdistill.envs import list_suites, load_suite, resolve

    for env_id in env_ids or []:
        resolve(env_id)  # an unknown id is a one-line error now, not a failed run per seed later
    if n_timesteps is not None and n_timesteps <= 0:
        raise UsageError(f"-n must be positive, got {n_timesteps}")
    if suite:
        return [EnvBudget(env.env_id, n_timesteps or env.n_timesteps) for env in load_suite(suite).envs]
    suite_budgets: dict[str, int] = {}
    for name in reversed(list_suites()):
        suite_budgets.update({env.env_id: env.n_timesteps for env in load_suite(name).envs})
    budgets = []
    for env_id in env_ids or []:
        budget = n_timesteps or suite_budgets.get(env_id)
        if budget is None:
            raise UsageError(f"{env_id} is in no suite, so it has no default budget; pass -n TIMESTEPS")
        budgets.append(EnvBudget(env_id, budget))
    return budgets


def canonical_command(args: argparse.Namespace) -> str:
    """The command line equivalent to `args`, as recorded in the manifest and the report."""
    from rl_selfdistill.run.rundir import PROGRAM, format_command

    envs = {"--suite": args.suite} if args.suite else {"--envs": args.envs}
    options = {
        **envs,
        "--algos": args.algos,
        "--seeds": args.seeds,
        "--first-seed": args.first_seed or None,
        "--allow-tuning-seeds": args.allow_tuning_seeds,
        "-n": args.n_timesteps,
        "--backend": args.backend,
        "--workers": args.workers,
        "--address": args.address,
        "--device": args.device,
        "--vec-env": args.vec_env,
        "--n-envs": args.n_envs,
        "--eval-freq": args.eval_freq,
        "--eval-episodes": args.eval_episodes,
        "--save-freq": args.save_freq,
        "--save-replay-buffer": args.save_replay_buffer,
        "--wandb-project": args.wandb_project,
        "--wandb-entity": args.wandb_entity,
        "--wandb-mode": args.wandb_mode,
        "--benchmark-id": args.benchmark_id,
        "--cpus-per-run": args.cpus_per_run,
        "--gpus-per-run": (args.gpus_per_run or None) if args.backend == "ray" else None,
        "--gym-packages": args.gym_packages,
        "-params": args.hyperparams,
        "--env-kwargs": args.env_kwargs,
        "-o": args.output,
    }
    return format_command([PROGRAM, "benchmark"], options)


def requested_manifest(args: argparse.Namespace) -> Manifest:
    from rl_selfdistill.algos import registry
    from rl_selfdistill.config import parse_params
    from rl_selfdistill.run.rundir import git_commit
    from rl_selfdistill.tune.seeds import check_reporting_seeds

    grid.validate_algos(args.algos)
    if args.hyperparams and not any(registry.is_distilling(algo) for algo in args.algos):
        raise UsageError("-params applies to the self-distilling algorithms only, and --algos names none; drop -params")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    check_reporting_seeds(range(args.first_seed, args.first_seed + args.seeds), allow_tuning_seeds=args.allow_tuning_seeds)
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_run is not None and args.cpus_per_run <= 0:
        raise UsageError(f"--cpus-per-run must be positive, got {args.cpus_per_run}")
    if args.gpus_per_run < 0:
        raise UsageError(f"--gpus-per-run must be at least 0, got {args.gpus_per_run}")
    envs = resolve_envs(args.suite, args.envs, args.n_timesteps)
    algos = list(dict.fromkeys(args.algos))
    return Manifest(
        benchmark_id=args.benchmark_id or grid.new_benchmark_id(args.suite),
        suite=args.suite,
        envs=envs,
        algos=algos,
        seeds=list(range(args.first_seed, args.first_seed + args.seeds)),
        sd_params=parse_params(args.hyperparams),
        git_commit=git_commit(),
        created_at=grid.utc_now(),
        skipped=skipped_cells(algos, envs),
        env_kwargs=key_values(args.env_kwargs, "--env-kwargs"),
    )


def skipped_cells(algos: list[str], envs: list[EnvBudget]) -> list[dict[str, str]]:
    cells = []
    for env in envs:
        for algo in algos:
            reason = grid.incompatibility(algo, env.env_id)
            if reason:
                cells.append({"algo": algo, "env_id": env.env_id, "reason": reason})
    return cells


def requested_specs(args: argparse.Namespace, manifest: Manifest) -> list[RunSpec]:
    """This invocation's cells (a subset of the manifest's grid when an earlier call asked for more)."""
    env_ids = {env.env_id for env in resolve_envs(args.suite, args.envs, args.n_timesteps)}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    return [spec for spec in manifest.specs() if spec.env_id in env_ids and spec.algo in args.algos and spec.seed in seeds]


def build_jobs(args: argparse.Namespace, manifest: Manifest, specs: list[RunSpec]) -> list[Any]:
    from rl_selfdistill.algos import registry
    from rl_selfdistill.benchmark.runners import RunJob, threads_per_worker

    out = args.output.resolve()
    if args.cpus_per_run is not None:
        threads = max(1, int(args.cpus_per_run))
    else:
        threads = 1 if args.backend == "ray" else threads_per_worker(args.workers)
    train_options = {
        "device": args.device,
        "vec_env": args.vec_env,
        "n_envs": args.n_envs,
        "eval_freq": args.eval_freq,
        "eval_episodes": args.eval_episodes,
        "save_freq": args.save_freq,
        "save_replay_buffer": args.save_replay_buffer or None,  # None: train's default, and no flag in command.txt
        "wandb_project": args.wandb_project,
        "wandb_entity": args.wandb_entity,
        "wandb_mode": args.wandb_mode,
        # Each worker is a fresh process: it imports these itself before the algo and env are looked up.
        "gym_packages": list(args.gym_packages) or None,
    }
    commit = (manifest.git_commit or "unknown")[:12]
    return [
        RunJob(
            spec=spec,
            run_dir=spec.run_dir(out),
            hyperparams=dict(manifest.sd_params) if registry.is_distilling(spec.algo) else {},
            env_kwargs=dict(manifest.env_kwargs),
            train_options=train_options,
            wandb_group=manifest.benchmark_id,
            tags=(manifest.benchmark_id, spec.algo, spec.env_id, f"seed{spec.seed}", f"commit-{commit}"),
            torch_threads=threads,
        )
        for spec in specs
    ]


def run_benchmark_command(args: argparse.Namespace) -> int:
    from rl_selfdistill.benchmark import runners
    from rl_selfdistill.run.request import import_gym_packages

    import_gym_packages(args.gym_packages)  # before --algos and --envs are looked up
    out: Path = args.output
    check_writable_folder(out, "-o")
    manifest = grid.merge_manifest(grid.load_manifest(out), requested_manifest(args))
    specs = requested_specs(args, manifest)
    _check_budgets(out, specs)
    check_cells(build_jobs(args, manifest, specs))  # a bad -params fails now, not after the first cells trained
    if args.dry_run:
        print_dry_run(manifest, specs, out)
        return 0
    invocation = {
        "command": canonical_command(args),
        "started_at": grid.utc_now(),
        "finished_at": None,
        "backend": args.backend,
        "workers": args.workers,
        "hardware": grid.hardware_info(),
    }
    manifest.invocations.append(invocation)
    grid.save_manifest(out, manifest)
    todo, done = grid.pending(specs, out)
    _print_plan(manifest, todo, done, out)
    jobs = build_jobs(args, manifest, todo)
    if jobs and args.backend == "local":  # Ray places its tasks by --cpus-per-run itself
        from rl_selfdistill.envs.device import say_if_busy

        say_if_busy(jobs[0].torch_threads * min(args.workers, len(jobs)))
    if args.backend == "ray":
        outcomes = runners.run_ray(jobs, args.address, args.workers, args.cpus_per_run or 1.0, args.gpus_per_run)
    else:
        outcomes = runners.run_local(jobs, args.workers)
    invocation["failures"] = []
    failures = _report_outcomes(outcomes, len(jobs), lambda error: _record_failure(out, manifest, invocation, error))
    invocation["finished_at"] = grid.utc_now()
    grid.save_manifest(out, manifest)
    print(f"benchmark {manifest.benchmark_id}: {len(jobs) - failures}/{len(jobs)} runs ok; next: rl-selfdistill report {out}")
    return 1 if failures else 0


def check_cells(jobs: list[Any]) -> None:
    """Resolve each (algo, env) cell's configuration as its run will: every key and combination checked up front."""
    import dataclasses

    from rl_selfdistill.benchmark.runners import build_train_request
    from rl_selfdistill.run.request import resolve_config

    checked: set[tuple[str, str]] = set()
    for job in jobs:
        cell = (job.spec.algo, job.spec.env_id)
        if cell in checked:
            continue
        checked.add(cell)
        # run_dir=None: a cell may exist already (it is resumed); its folder's writability was checked with -o.
        request = dataclasses.replace(build_train_request(job), run_dir=None, log_folder=job.run_dir.parent)
        try:
            resolve_config(request)
        except UsageError as error:
            raise UsageError(f"{job.spec.algo} on {job.spec.env_id}: {error}") from None


def _check_budgets(out: Path, specs: list[RunSpec]) -> None:
    """An existing run trained for another budget would be resumed with the wrong target: refuse."""
    from rl_selfdistill.run.rundir import read_run_info

    for spec in specs:
        info = read_run_info(spec.run_dir(out))
        if info and info.get("n_timesteps") not in (None, spec.n_timesteps):
            raise UsageError(
                f"{spec.label} was started with {info['n_timesteps']} steps, not {spec.n_timesteps}; use a new -o folder"
            )


def _print_plan(manifest: Manifest, todo: list[RunSpec], done: list[RunSpec], out: Path) -> None:
    resume = [spec for spec in todo if grid.run_state(spec.run_dir(out)) is RunState.INTERRUPTED]
    print(
        f"benchmark {manifest.benchmark_id}: {len(todo) + len(done)} runs, {len(done)} finished (skipped), "
        f"{len(resume)} to resume, {len(todo) - len(resume)} to start",
        flush=True,
    )
    for spec in done:
        print(f"  skip    {spec.label}", flush=True)
    for cell in manifest.skipped:
        print(f"  not run {cell['algo']}/{cell['env_id']}: {cell['reason']}", flush=True)


def print_dry_run(manifest: Manifest, specs: list[RunSpec], out: Path) -> None:
    """What the same command without --dry-run would do with each run, and the env steps it would train.

    A resumed run restarts from its newest complete checkpoint (not from run.json's last step: the steps after that
    checkpoint are trained again), and a run with no checkpoint starts over, so both are counted from there. A run
    that another process is training right now looks interrupted, so it is listed as one to resume.
    """
    decisions = [(spec, *dry_run_action(spec.run_dir(out))) for spec in specs]
    counts = ", ".join(
        f"{count} {name}" for name in DRY_RUN_ACTIONS if (count := sum(action == name for _, action, _ in decisions))
    )
    print(f"benchmark {manifest.benchmark_id} (dry run, nothing trained or written): {len(specs)} runs: {counts}")
    for spec, action, start in decisions:
        where = f" from step {start} of {spec.n_timesteps}" if action == "resume" else ""
        print(f"  {action:8s} {spec.label}{where}")
    left = sum(spec.n_timesteps - start for spec, action, start in decisions if action in ("resume", "start"))
    print(f"env steps left to train: {left} of {sum(spec.n_timesteps for spec in specs)}")


DRY_RUN_ACTIONS = ("skip", "diverged", "damaged", "resume", "start")


def dry_run_action(run_dir: Path) -> tuple[str, int]:
    """The runner's decision for one run folder (runners.execute_run) and the step training would start from."""
    from rl_selfdistill.run.checkpoints import checkpoint_step, newest_usable

    state = grid.run_state(run_dir)
    if state is RunState.FINISHED:
        return "skip", 0
    if state is RunState.DIVERGED:  # reported, not retrained
        return "diverged", 0
    if state is RunState.INTERRUPTED:
        newest, damaged = newest_usable(run_dir, warn=False)
        if newest is not None:
            return "resume", checkpoint_step(newest) or 0
        if damaged:  # the runner stops there and prints the command that starts the run over
            return "damaged", 0
    return "start", 0


def _report_outcomes(outcomes: Any, total: int, on_failure: Any) -> int:
    failures = 0
    for index, outcome in enumerate(outcomes, start=1):
        status = "ok" if outcome.ok else f"FAILED: {outcome.error}"
        print(f"  [{index}/{total}] {outcome.action:7s} {outcome.label} in {outcome.wall_s:.0f}s: {status}", flush=True)
        if not outcome.ok:
            failures += 1
            on_failure({"run": outcome.label, "error": outcome.error})
    return failures


def _record_failure(out: Path, manifest: Manifest, invocation: dict[str, Any], failure: dict[str, str]) -> None:
    """Saved at once, so the report can say why a run is missing even if this invocation is killed later."""
    invocation["failures"].append(failure)
    grid.save_manifest(out, manifest)
