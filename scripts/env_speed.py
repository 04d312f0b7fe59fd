"""Environment measurements: random-policy scores for the suites, and backend throughput (paired A B A B runs).

python scripts/env_speed.py random-scores HalfCheetah-v5 Hopper-v5 --episodes 100
python scripts/env_speed.py raw ALE/Pong-v5 --n-envs 8 --backends dummy subproc envpool
python scripts/env_speed.py collect ALE/Pong-v5 --n-envs 8
python scripts/env_speed.py train ALE/Pong-v5 --a subproc --b envpool --timesteps 8192 --repeats 3
python scripts/env_speed.py threads ALE/Pong-v5 --backend subproc --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from rl_selfdistill.benchmark import throughput
from rl_selfdistill.envs import resolve, speed


def _ppo_kwargs(env_id: str) -> dict:
    return throughput.ATARI_PPO_KWARGS if resolve(env_id).family == "atari" else throughput.MUJOCO_PPO_KWARGS


def random_scores(args: argparse.Namespace) -> None:
    for env_id in args.env_ids:
        start = time.perf_counter()
        mean, std = speed.random_policy_score(env_id, n_episodes=args.episodes, seed=args.seed)
        print(
            f"{env_id}: random_score {mean:.2f} (std {std:.2f}, {args.episodes} episodes, seed {args.seed}, "
            f"{time.perf_counter() - start:.0f}s)",
            flush=True,
        )


def _interleaved(name: str, runs: dict[str, Callable[[], float]], repeats: int) -> None:
    """Round-robin over the variants `repeats` times; print each run, then medians and ratios to the first variant."""

    def report(key: str, _round: int, value: float) -> None:
        print(f"  {name} {key}: {value:.0f} steps/s", flush=True)

    results = throughput.alternate(runs, repeats, report)
    first = next(iter(results))
    for key, values in results.items():
        ratio = statistics.median(values) / statistics.median(results[first])
        print(
            f"{name} {key}: median {statistics.median(values):.0f} steps/s over {[round(v) for v in values]}, ratio to "
            f"{first} {ratio:.2f} (median per-round ratio {throughput.median_paired_ratio(results[first], values):.2f})",
            flush=True,
        )


def raw(args: argparse.Namespace) -> None:
    runs = {b: (lambda b=b: speed.raw_step_fps(args.env_id, b, args.n_envs, args.steps)) for b in args.backends}
    _interleaved(f"raw {args.env_id} x{args.n_envs}", runs, args.repeats)


def collect(args: argparse.Namespace) -> None:
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    runs = {
        b: (
            lambda b=b: throughput.collection_fps(args.env_id, b, args.n_envs, args.steps, ppo_kwargs=_ppo_kwargs(args.env_id))
        )
        for b in args.backends
    }
    _interleaved(f"collect {args.env_id} x{args.n_envs}", runs, args.repeats)


def train(args: argparse.Namespace) -> None:
    def run(backend: str) -> Callable[[], float]:
        return lambda: throughput.training_fps(
            args.env_id,
            backend,
            args.n_envs,
            args.timesteps,
            ppo_kwargs=_ppo_kwargs(args.env_id),
            torch_threads=args.torch_threads,
        )

    runs = {args.a: run(args.a), args.b: run(args.b)}
    _interleaved(f"train {args.env_id} x{args.n_envs} ({args.timesteps} steps)", runs, args.repeats)


def threads(args: argparse.Namespace) -> None:
    runs = {
        f"threads={n}": (
            lambda n=n: throughput.training_fps(
                args.env_id, args.backend, args.n_envs, args.timesteps, ppo_kwargs=_ppo_kwargs(args.env_id), torch_threads=n
            )
        )
        for n in args.threads
    }
    _interleaved(f"train {args.env_id} {args.backend} x{args.n_envs}", runs, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("random-scores")
    p.add_argument("env_ids", nargs="+")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=random_scores)
    for name, func in (("raw", raw), ("collect", collect), ("train", train), ("threads", threads)):
        p = sub.add_parser(name)
        p.add_argument("env_id")
        p.add_argument("--n-envs", type=int, default=8)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--steps", type=int, default=256, help="steps per env (raw, collect)")
        p.add_argument("--timesteps", type=int, default=8192, help="total steps (train, threads)")
        p.add_argument("--backends", nargs="+", default=["dummy", "subproc", "envpool"])
        p.add_argument("--a", default="subproc")
        p.add_argument("--b", default="envpool")
        p.add_argument("--backend", default="subproc")
        p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
        p.add_argument("--torch-threads", type=int, default=None)
        p.set_defaults(func=func)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
