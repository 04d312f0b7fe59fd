"""The benchmark grid: algo x env x seed, where each run lives, and what is left to do.

A benchmark folder OUT holds `benchmark.json` (the manifest: id, grid, every invocation's
command and hardware) and one ordinary training run directory per cell under
`OUT/runs/<algo>/<env_id>/seed<N>`. The manifest is what lets a re-invoked benchmark keep
its id (and so its W&B group) and lets `report` list runs that never started.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from rl_selfdistill.algos import registry
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.rundir import read_run_info

MANIFEST_NAME = "benchmark.json"


class RunState(StrEnum):
    MISSING = "missing"  # no run directory yet
    INTERRUPTED = "interrupted"  # a run directory exists but training did not finish
    FINISHED = "finished"
    DIVERGED = "diverged"  # stopped by the divergence guard: a result like a finished run, never retried


@dataclass(frozen=True)
class EnvBudget:
    env_id: str
    n_timesteps: int


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    algo: str
    env_id: str
    seed: int
    n_timesteps: int

    def run_dir(self, out: Path) -> Path:
        return run_dir_for(out, self.algo, self.env_id, self.seed)

    @property
    def label(self) -> str:
        return f"{self.algo}/{self.env_id}/seed{self.seed}"


@dataclass
class Manifest:
    """What `benchmark.json` records; stable across re-invocations except `invocations`."""

    benchmark_id: str
    suite: str | None
    envs: list[EnvBudget]
    algos: list[str]
    seeds: list[int]
    sd_params: dict[str, Any]
    git_commit: str | None
    created_at: str
    invocations: list[dict[str, Any]] = field(default_factory=list)
    # Cells that cannot run (e.g. DQN on a continuous action space): {"algo", "env_id", "reason"}.
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Env keyword arguments over the presets', for every algo (--env-kwargs); absent from older benchmark.json files.
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def specs(self) -> list[RunSpec]:
        """Seed-major order: a benchmark stopped half-way still has every algo on its first seeds."""
        excluded = {(cell["algo"], cell["env_id"]) for cell in self.skipped}
        return [
            RunSpec(algo, env.env_id, seed, env.n_timesteps)
            for seed in self.seeds
            for env in self.envs
            for algo in self.algos
            if (algo, env.env_id) not in excluded
        ]


def incompatibility(algo: str, env_id: str) -> str | None:
    """Why `algo` cannot train on `env_id`, or None. Only a discrete- or continuous-action need is known up front."""
    entry = registry.get(algo)
    if not (entry.discrete_only or entry.continuous_only):
        return None
    try:
        import gymnasium

        env = gymnasium.make(env_id)
    except Exception:  # noqa: BLE001 - ids gymnasium cannot build (EnvPool-only, ...) are left to the run itself
        return None
    space = env.action_space
    env.close()
    if entry.discrete_only and not isinstance(space, gymnasium.spaces.Discrete):
        return f"{algo} needs a discrete action space, {env_id} has {type(space).__name__}"
    if entry.continuous_only and not isinstance(space, gymnasium.spaces.Box):
        return f"{algo} needs a continuous (Box) action space, {env_id} has {type(space).__name__}"
    return None


RUNS_DIR = "runs"  # OUT/runs/<algo>/<env_id>/seed<N>: a benchmark's runs (a tune trial's folder has the same layout)


def run_dir_for(out: Path, algo: str, env_id: str, seed: int) -> Path:
    return Path(out) / RUNS_DIR / algo / env_id / f"seed{seed}"


def run_state(run_dir: Path) -> RunState:
    if not run_dir.exists():
        return RunState.MISSING
    info = read_run_info(run_dir)
    if info is not None and info.get("status") in (RunState.FINISHED, RunState.DIVERGED):
        return RunState(info["status"])
    return RunState.INTERRUPTED


def diverged_note(run_dir: Path) -> str:
    """One line on a diverged run from its run.json: where it diverged, on what, and the checkpoint it kept."""
    record = (read_run_info(run_dir) or {}).get("divergence") or {}
    kept = "no good checkpoint"
    if record.get("checkpoint"):
        kept = f"last good checkpoint at step {record['checkpoint_step']}"
    return f"diverged at step {record.get('step', '?')}: {record.get('quantity', '?')} not finite; {kept}"


def validate_algos(algos: list[str]) -> None:
    """Every name must be registered (an unknown one is a one-line error naming the closest)."""
    for algo in algos:
        registry.get(algo)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_benchmark_id(suite: str | None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{suite or 'custom'}-{stamp}-{uuid.uuid4().hex[:6]}"


def hardware_info() -> dict[str, Any]:
    """Enough to tell two machines' timings apart: CPU model and count, memory, GPUs."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
    }
    info["gpus"] = _gpu_names()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpu_names() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def manifest_to_json(manifest: Manifest) -> dict[str, Any]:
    return asdict(manifest)


def manifest_from_json(data: dict[str, Any]) -> Manifest:
    envs = [EnvBudget(**env) for env in data["envs"]]
    return Manifest(**{**data, "envs": envs})


def load_manifest(out: Path) -> Manifest | None:
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return manifest_from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UsageError(f"{path} is not a benchmark manifest ({error}); pass a fresh -o folder") from error


def save_manifest(out: Path, manifest: Manifest) -> None:
    """Write atomically so an interrupted benchmark never leaves half a manifest."""
    path = Path(out) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest_to_json(manifest), indent=2) + "\n")
    tmp.replace(path)


def merge_manifest(existing: Manifest | None, requested: Manifest) -> Manifest:
    """Keep the id of an earlier invocation on the same folder; refuse a changed experiment.

    Adding envs, algos or seeds extends the grid. Changing a budget, the SD overrides or the env
    keyword arguments would mix incomparable runs in one report, so it is an error.
    """
    if existing is None:
        return requested
    if existing.sd_params != requested.sd_params:
        raise UsageError(
            f"-params {requested.sd_params} differ from this benchmark's {existing.sd_params}; use a new -o folder"
        )
    if existing.env_kwargs != requested.env_kwargs:
        raise UsageError(
            f"--env-kwargs {requested.env_kwargs} differ from this benchmark's {existing.env_kwargs}; use a new -o folder"
        )
    budgets = {env.env_id: env.n_timesteps for env in existing.envs}
    for env in requested.envs:
        if budgets.get(env.env_id, env.n_timesteps) != env.n_timesteps:
            raise UsageError(
                f"{env.env_id}: -n {env.n_timesteps} differs from this benchmark's {budgets[env.env_id]}; use a new -o folder"
            )
    envs = existing.envs + [env for env in requested.envs if env.env_id not in budgets]
    return Manifest(
        benchmark_id=existing.benchmark_id,
        suite=existing.suite or requested.suite,
        envs=envs,
        algos=_union(existing.algos, requested.algos),
        seeds=sorted(set(existing.seeds) | set(requested.seeds)),
        sd_params=existing.sd_params,
        git_commit=existing.git_commit,
        created_at=existing.created_at,
        invocations=list(existing.invocations),
        skipped=existing.skipped + [cell for cell in requested.skipped if cell not in existing.skipped],
        env_kwargs=existing.env_kwargs,
    )


def _union(first: list[str], second: list[str]) -> list[str]:
    return first + [item for item in second if item not in first]


def pending(specs: list[RunSpec], out: Path) -> tuple[list[RunSpec], list[RunSpec]]:
    """Split the grid into (runs still to do, runs already finished)."""
    todo = [spec for spec in specs if run_state(spec.run_dir(out)) is not RunState.FINISHED]
    done = [spec for spec in specs if spec not in todo]
    return todo, done
