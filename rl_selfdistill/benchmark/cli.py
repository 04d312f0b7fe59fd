"""`rl-selfdistill benchmark | report | throughput`: argument parsing and the three handlers."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from rl_selfdistill.benchmark import grid
from rl_selfdistill.benchmark.grid import EnvBudget, Manifest, RunSpec, RunState
from rl_selfdistill.errors import UsageError

_FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def register(subparsers: Any) -> None:
    _register_benchmark(subparsers)
    _register_report(subparsers)
    _register_throughput(subparsers)


# --------------------------------------------------------------------------- benchmark


def _register_benchmark(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="run an algo x env x seed grid of training runs (local process pool or Ray)",
        description="Each cell is one `train` run in OUT/runs/<algo>/<env_id>/seed<N>. Re-running the same command "
        "skips finished runs and resumes interrupted ones.",
        formatter_class=_FORMATTER,
    )
    envs = parser.add_mutually_exclusive_group(required=True)
    envs.add_argument("--suite", help="suite name from envs/*.yaml (classic, atari5, mujoco5, ...)")
    envs.add_argument("--envs", nargs="+", metavar="ENV_ID", help="explicit env ids (budgets: -n or a suite that lists them)")
    parser.add_argument("--algos", nargs="+", default=["ppo", "sd_ppo"], choices=grid.KNOWN_ALGOS, metavar="ALGO")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds per (algo, env)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="budget for every env (default: the suite's)")
    parser.add_argument(
        "-params", "--params", nargs="+", default=[], metavar="KEY:VALUE", help="hyperparameter overrides for the SD algos"
    )
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument(
        "--workers", type=int, default=1, help="runs at a time (local pool size; size of a local Ray instance)"
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (`auto` for a running one); default: start one")
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        help="Ray num_cpus per task (default 1) and torch threads per run (default: cores / workers locally)",
    )
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray num_gpus per task")
    parser.add_argument("--device", default=None, help="torch device for every run (default: train's default)")
    parser.add_argument("--vec-env", default=None, help="env backend for every run: dummy | subproc | envpool")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel envs per run (default: the preset's)")
    parser.add_argument("--eval-freq", type=int, default=None, help="evaluate every N env steps (default: train's)")
    parser.add_argument("--eval-episodes", type=int, default=None)
    parser.add_argument("--save-freq", type=int, default=None, help="checkpoint every N env steps (default: train's)")
    parser.add_argument("--wandb-project", default=None)
    parser.add_argument("--wandb-entity", default=None)
    parser.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default=None)
    parser.add_argument("--benchmark-id", default=None, help="W&B group and tag (default: generated once per OUT)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="benchmark folder")
    parser.set_defaults(func=run_benchmark_command)


def parse_params(items: list[str]) -> dict[str, Any]:
    """KEY:VALUE pairs, values read as YAML scalars/lists (data, never evaluated as code)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise UsageError(f"-params entry {item!r} is not KEY:VALUE; write e.g. distill_coef:0.1")
        try:
            params[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise UsageError(f"-params {key}: cannot read {value!r} ({error.__class__.__name__}); quote it") from error
    return params


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
    words = ["rl-selfdistill", "benchmark"]
    words += ["--suite", args.suite] if args.suite else ["--envs", *args.envs]
    words += ["--algos", *args.algos, "--seeds", str(args.seeds)]
    optional = {
        "--first-seed": args.first_seed or None,
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
        "--wandb-project": args.wandb_project,
        "--wandb-entity": args.wandb_entity,
        "--wandb-mode": args.wandb_mode,
        "--benchmark-id": args.benchmark_id,
    }
    optional["--cpus-per-run"] = args.cpus_per_run
    if args.backend == "ray":
        optional["--gpus-per-run"] = args.gpus_per_run or None
    for flag, value in optional.items():
        if value is not None:
            words += [flag, str(value)]
    if args.params:
        words += ["-params", *args.params]
    return shlex.join([*words, "-o", str(args.output)])


def requested_manifest(args: argparse.Namespace) -> Manifest:
    grid.validate_algos(args.algos)
    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    envs = resolve_envs(args.suite, args.envs, args.n_timesteps)
    algos = list(dict.fromkeys(args.algos))
    return Manifest(
        benchmark_id=args.benchmark_id or grid.new_benchmark_id(args.suite),
        suite=args.suite,
        envs=envs,
        algos=algos,
        seeds=list(range(args.first_seed, args.first_seed + args.seeds)),
        sd_params=parse_params(args.params),
        git_commit=grid.git_commit(),
        created_at=grid.utc_now(),
        skipped=skipped_cells(algos, envs),
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
        "wandb_project": args.wandb_project,
        "wandb_entity": args.wandb_entity,
        "wandb_mode": args.wandb_mode,
    }
    commit = (manifest.git_commit or "unknown")[:12]
    return [
        RunJob(
            spec=spec,
            run_dir=spec.run_dir(out),
            hyperparams=dict(manifest.sd_params) if grid.is_sd_algo(spec.algo) else {},
            train_options=train_options,
            wandb_group=manifest.benchmark_id,
            tags=(manifest.benchmark_id, spec.algo, spec.env_id, f"seed{spec.seed}", f"commit-{commit}"),
            torch_threads=threads,
        )
        for spec in specs
    ]


def run_benchmark_command(args: argparse.Namespace) -> int:
    from rl_selfdistill.benchmark import runners

    out: Path = args.output
    manifest = grid.merge_manifest(grid.load_manifest(out), requested_manifest(args))
    specs = requested_specs(args, manifest)
    _check_budgets(out, specs)
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


def _check_budgets(out: Path, specs: list[RunSpec]) -> None:
    """An existing run trained for another budget would be resumed with the wrong target: refuse."""
    for spec in specs:
        info = grid.read_run_info(spec.run_dir(out))
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


# --------------------------------------------------------------------------- report


def _register_report(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="aggregate a benchmark folder with rliable: summary.json, report.md, PNG figures",
        formatter_class=_FORMATTER,
    )
    parser.add_argument(
        "outputs", type=Path, nargs="+", metavar="OUT", help="benchmark folder(s) (the -o of `benchmark`); several are pooled"
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, metavar="DIR", help="report folder (default: OUT; needed with several)"
    )
    parser.add_argument("--suite", default=None, help="suite whose reference scores normalise (default: the benchmark's)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    parser.add_argument(
        "--exclude",
        type=Path,
        nargs="+",
        default=[],
        metavar="PATH",
        help="leave out the runs under PATH (OUT/runs/ALGO[/ENV[/seedN]]), e.g. superseded ones; the report lists them",
    )
    parser.add_argument(
        "--publish",
        type=Path,
        default=None,
        metavar="DEST",
        help="copy OUT's benchmark.json and each run's run.json, eval.csv, progress.csv, config.yaml and command.txt "
        "(no models) to the new folder DEST and report there: DEST can be committed and regenerates its own report",
    )
    parser.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    from rl_selfdistill.benchmark.report import write_report

    for out in args.outputs:
        if not out.is_dir():
            raise UsageError(f"benchmark folder {out} does not exist; pass the -o folder of `rl-selfdistill benchmark`")
    if len(set(map(Path.resolve, args.outputs))) < len(args.outputs):
        raise UsageError("a benchmark folder is named twice; name each once")
    if args.reps < 100:
        raise UsageError(f"--reps {args.reps} is too few for a 95% interval; use at least 100")
    if args.publish is not None:
        args.outputs = [_published(args)]
    words = ["rl-selfdistill", "report", *map(str, args.outputs)]
    words += ["-o", str(args.output)] if args.output else []
    words += ["--suite", args.suite] if args.suite else []
    words += ["--reps", str(args.reps)] if args.reps != 2000 else []
    words += ["--exclude", *map(str, args.exclude)] if args.exclude else []
    files = write_report(
        args.outputs,
        suite=args.suite,
        reps=args.reps,
        command=shlex.join(words),
        report_dir=args.output,
        exclude=args.exclude,
    )
    print(f"wrote {files.markdown}, {files.summary} and {len(files.figures)} figures")
    summary = json.loads(files.summary.read_text())
    if summary["excluded"]:
        print(f"{len(summary['excluded'])} runs/envs left out of the aggregate: see 'Left out of the aggregate' in report.md")
    return 0


def _published(args: argparse.Namespace) -> Path:
    """Copy the one benchmark folder to --publish DEST, which the report then reads (and so records as its input)."""
    from rl_selfdistill.benchmark.publish import publish_results

    if len(args.outputs) > 1 or args.output is not None or args.exclude:
        raise UsageError("--publish DEST copies one benchmark folder and reports in DEST; drop -o, --exclude and other OUTs")
    copied = publish_results(args.outputs[0], args.publish)
    print(f"copied {len(copied)} files to {args.publish}")
    return args.publish


# --------------------------------------------------------------------------- throughput


def _register_throughput(subparsers: Any) -> None:
    from rl_selfdistill.benchmark.throughput import ThroughputSettings

    defaults = ThroughputSettings()
    parser = subparsers.add_parser(
        "throughput",
        help="paired A B A B fps comparison of two algos or env backends on one env",
        description="Trains A and B with identical hyperparameters in one process, alternating timed trials, and "
        "prints every trial's fps, the median of each and the ratio B/A. SPEC is ALGO[@BACKEND], e.g. sd_ppo@envpool.",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--env", required=True, help="env id")
    parser.add_argument("--a", default="ppo", metavar="SPEC", help="baseline A")
    parser.add_argument("--b", default="sd_ppo", metavar="SPEC", help="candidate B")
    parser.add_argument("--pairs", type=int, default=5, help="number of A B rounds")
    parser.add_argument("-n", "--timesteps", type=int, default=defaults.timesteps, help="env steps per timed trial")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: past the first teacher refresh)"
    )
    parser.add_argument("--n-envs", type=int, default=defaults.n_envs)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ppo = parser.add_argument_group("PPO")
    ppo.add_argument("--n-steps", type=int, default=defaults.n_steps)
    ppo.add_argument("--n-epochs", type=int, default=defaults.n_epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="PPO minibatch / DQN batch")
    dqn = parser.add_argument_group("DQN")
    dqn.add_argument("--train-freq", type=int, default=defaults.train_freq)
    dqn.add_argument("--gradient-steps", type=int, default=defaults.gradient_steps)
    dqn.add_argument("--learning-starts", type=int, default=defaults.learning_starts)
    dqn.add_argument("--buffer-size", type=int, default=defaults.buffer_size)
    dqn.add_argument("--target-update-interval", type=int, default=defaults.target_update_interval)
    sd = parser.add_argument_group("self-distillation (applied to SD specs only)")
    sd.add_argument("--distill-coef", type=float, default=defaults.distill_coef)
    sd.add_argument("--teacher-update-interval", type=int, default=defaults.teacher_update_interval)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the result as JSON")
    parser.set_defaults(func=run_throughput_command)


def throughput_settings(args: argparse.Namespace) -> Any:
    from rl_selfdistill.benchmark.throughput import ThroughputSettings

    positive = {"-n": args.timesteps, "--n-envs": args.n_envs, "--n-steps": args.n_steps, "--batch-size": args.batch_size}
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(f"{flag} must be positive, got {value}")
    return ThroughputSettings(
        n_envs=args.n_envs,
        timesteps=args.timesteps,
        warmup_timesteps=args.warmup,
        device=args.device,
        seed=args.seed,
        n_steps=args.n_steps,
        n_epochs=args.n_epochs,
        batch_size=args.batch_size,
        train_freq=args.train_freq,
        gradient_steps=args.gradient_steps,
        learning_starts=args.learning_starts,
        buffer_size=args.buffer_size,
        target_update_interval=args.target_update_interval,
        distill_coef=args.distill_coef,
        teacher_update_interval=args.teacher_update_interval,
    )


def run_throughput_command(args: argparse.Namespace) -> int:
    from rl_selfdistill.benchmark.throughput import AlgoSpec, check_pair, format_result, measure_throughput

    a, b = AlgoSpec.parse(args.a), AlgoSpec.parse(args.b)
    check_pair(a, b, args.pairs)
    settings = throughput_settings(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    def report(label: str, trial: int, fps: float) -> None:
        print(f"trial {trial + 1} {label}: {fps:.0f} fps", flush=True)

    result = measure_throughput(args.env, a, b, args.pairs, settings, report=report)
    print(format_result(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
