"""`rl-selfdistill throughput`: paired A B A B fps comparison of two algos or env backends on one env."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rl_selfdistill.algos import registry
from rl_selfdistill.cli.common import add_command, add_hyperparams, key_values
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import check_writable_folder

HELP = "paired A B A B fps comparison of two algos or env backends on one env"
DESCRIPTION = (
    "Trains A and B with identical hyperparameters in one process, alternating timed trials, and "
    "prints every trial's fps, the median of each and the ratio B/A. SPEC is ALGO[@BACKEND], e.g. sd_ppo@envpool."
)


def register(subparsers: Any) -> None:
    from rl_selfdistill.benchmark.throughput import ThroughputSettings

    defaults = ThroughputSettings()
    parser = add_command(subparsers, "throughput", help=HELP, description=DESCRIPTION)
    parser.add_argument("--env", required=True, help="env id")
    parser.add_argument("--a", default="ppo", metavar="SPEC", help="baseline A")
    parser.add_argument("--b", default="sd_ppo", metavar="SPEC", help="candidate B")
    parser.add_argument("--pairs", type=int, default=5, help="number of A B rounds")
    parser.add_argument("-n", "--timesteps", type=int, default=defaults.timesteps, help="env steps per timed trial")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: past the first teacher refresh)"
    )
    parser.add_argument("--n-envs", type=int, default=defaults.n_envs, help="parallel envs")
    parser.add_argument("--device", default="auto", help="torch device")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of both models and envs")
    parser.add_argument("--threads", "--num-threads", type=int, default=None, help="torch threads (default: torch's own)")
    ppo = parser.add_argument_group("on-policy (PPO, A2C, TRPO, MaskablePPO, RecurrentPPO)")
    ppo.add_argument("--n-steps", type=int, default=defaults.n_steps, help="rollout length per env")
    ppo.add_argument("--n-epochs", type=int, default=defaults.n_epochs, help="epochs per rollout")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="PPO minibatch / DQN batch")
    dqn = parser.add_argument_group("off-policy (DQN, QR-DQN, SAC, TD3)")
    dqn.add_argument("--train-freq", type=int, default=defaults.train_freq, help="env steps between updates")
    dqn.add_argument("--gradient-steps", type=int, default=defaults.gradient_steps, help="gradient steps per update")
    dqn.add_argument("--learning-starts", type=int, default=defaults.learning_starts, help="steps before learning")
    dqn.add_argument("--buffer-size", type=int, default=defaults.buffer_size, help="replay buffer size")
    dqn.add_argument(
        "--target-update-interval",
        type=int,
        default=defaults.target_update_interval,
        help="env steps between target copies (DQN, QR-DQN; SAC keeps its Polyak update every gradient step)",
    )
    sd = parser.add_argument_group("self-distillation (applied to SD specs only)")
    sd.add_argument("--distill-coef", type=float, default=defaults.distill_coef, help="weight of the KL term")
    sd.add_argument("--teacher-update-interval", type=int, default=defaults.teacher_update_interval, help="env steps")
    add_hyperparams(
        sd, "further distillation options of the SD spec, e.g. teacher_mode:lagged teacher_update_unit:gradient_steps"
    )
    parser.add_argument(
        "--shared-params",
        nargs="+",
        default=[],
        metavar="KEY:VALUE",
        help="further settings given to both A and B, e.g. policy_kwargs:'{n_quantiles: 10}'",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the result as JSON")
    parser.set_defaults(func=run_throughput_command)


def throughput_settings(args: argparse.Namespace) -> Any:
    from rl_selfdistill.benchmark.throughput import ThroughputSettings

    positive = {"-n": args.timesteps, "--n-envs": args.n_envs, "--n-steps": args.n_steps, "--batch-size": args.batch_size}
    if args.threads is not None:
        positive["--threads"] = args.threads
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be at least 0, got {args.warmup}")
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
        sd_params=_sd_params(args),
        shared_params=_shared_params(args),
    )


def _shared_params(args: argparse.Namespace) -> dict[str, Any]:
    """--shared-params: settings both models get (checked for each with its class's schema before any trial); those
    with a flag of their own, and the distillation options (`-params`), are refused here."""
    from rl_selfdistill.benchmark.throughput import ThroughputSettings
    from rl_selfdistill.config import META_KEYS
    from rl_selfdistill.distill.config import DistillConfig

    params = key_values(args.shared_params, "--shared-params")
    for key in params:
        if key in ThroughputSettings.__dataclass_fields__ or key == "n_timesteps":
            flag = "-n" if key in ("timesteps", "n_timesteps") else "--" + key.replace("_", "-")
            raise UsageError(f"--shared-params {key!r} has its own option; use {flag}")
        if key in META_KEYS and key != "policy_kwargs":
            raise UsageError(f"--shared-params {key!r} is a run setting, not one of the models'; it has no effect here")
        if key in DistillConfig.names():
            raise UsageError(f"--shared-params {key!r} is a distillation option; pass it with -params (SD spec only)")
    return params


def _sd_params(args: argparse.Namespace) -> dict[str, Any]:
    """-params for the SD spec: distillation options only (A and B share every other setting), validated."""
    from rl_selfdistill.config import parse_params, validate_hyperparams
    from rl_selfdistill.distill.config import DistillConfig

    params = parse_params(args.hyperparams)
    other = sorted(set(params) - set(DistillConfig.names()))
    if other:
        raise UsageError(f"-params {other[0]!r} is not a distillation option; throughput gives A and B the same settings")
    sd_algo = next(
        (spec.partition("@")[0] for spec in (args.b, args.a) if registry.is_distilling(spec.partition("@")[0])), None
    )
    if params and sd_algo is None:
        raise UsageError("-params applies to a self-distilling spec; pass one as --a or --b")
    return validate_hyperparams(sd_algo, params, what="-params") if params else {}


def check_model_settings(spec: Any, settings: Any) -> None:
    """The constructor arguments `spec`'s model will get, checked like a preset's (ranges, SB3's asserts) before any trial."""
    from rl_selfdistill.benchmark.throughput import algo_kwargs
    from rl_selfdistill.config import validate_hyperparams

    # The shared settings as given (registry names), checked before algo_kwargs builds them for the constructor.
    unbuilt = dataclasses.replace(settings, shared_params={})
    kwargs = {key: value for key, value in algo_kwargs(spec, unbuilt).items() if key not in ("seed", "device", "verbose")}
    kwargs.update(settings.shared_params)
    validate_hyperparams(spec.algo, {**kwargs, "n_envs": settings.n_envs}, what=f"the settings of {spec.label}")


def run_throughput_command(args: argparse.Namespace) -> int:
    from rl_selfdistill.benchmark.throughput import AlgoSpec, check_pair, format_result, measure_throughput

    a, b = AlgoSpec.parse(args.a), AlgoSpec.parse(args.b)
    check_pair(a, b, args.pairs)
    settings = throughput_settings(args)
    for spec in (a, b):
        check_model_settings(spec, settings)
    if args.json is not None:
        check_writable_folder(args.json.parent, "--json's folder")
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
