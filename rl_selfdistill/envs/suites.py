"""Benchmark suites: YAML files in the `envs/` data folder (env ids, budgets, normalisation scores)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import data_dir

_REQUIRED = ("env_id", "n_timesteps", "random_score", "reference_score", "reference", "source")


@dataclass(frozen=True)
class SuiteEnv:
    """One environment of a suite.

    reference: what reference_score is ("human", "rl-zoo-ppo", "solved-threshold", ...);
    source: citation for both scores (and how the random score was measured when it was measured here).
    """

    env_id: str
    n_timesteps: int
    random_score: float
    reference_score: float
    reference: str
    source: str


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    envs: tuple[SuiteEnv, ...]

    @property
    def env_ids(self) -> list[str]:
        return [e.env_id for e in self.envs]

    def get(self, env_id: str) -> SuiteEnv:
        for env in self.envs:
            if env.env_id == env_id:
                return env
        raise UsageError(f"{env_id!r} is not in suite {self.name!r}; its envs: {', '.join(self.env_ids)}")


def list_suites() -> list[str]:
    """Names of the suites shipped in the envs/ data folder."""
    return sorted(p.stem for p in data_dir("envs").glob("*.yaml"))


def load_suite(name: str) -> Suite:
    """Load suite `name` (e.g. "atari5"); unknown names raise a UsageError listing the available suites."""
    path = data_dir("envs") / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise UsageError(f"unknown suite {name!r}; available suites: {', '.join(list_suites())}")
    return _parse_suite(path)


def _parse_suite(path: Path) -> Suite:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("envs"), list) or not data["envs"]:
        raise UsageError(f"suite file {path} must be a mapping with a non-empty 'envs' list; fix the file")
    envs = tuple(_parse_env(path, item) for item in data["envs"])
    return Suite(name=str(data.get("name", path.stem)), description=str(data.get("description", "")), envs=envs)


def _parse_env(path: Path, item: Any) -> SuiteEnv:
    if not isinstance(item, dict):
        raise UsageError(f"suite file {path}: every entry of 'envs' must be a mapping, got {item!r}")
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise UsageError(f"suite file {path}: env {item.get('env_id', '?')!r} lacks {', '.join(missing)}; add them")
    env = SuiteEnv(
        env_id=str(item["env_id"]),
        n_timesteps=int(item["n_timesteps"]),
        random_score=float(item["random_score"]),
        reference_score=float(item["reference_score"]),
        reference=str(item["reference"]),
        source=str(item["source"]).strip(),
    )
    if env.n_timesteps <= 0 or math.isclose(env.reference_score, env.random_score):
        raise UsageError(f"suite file {path}: {env.env_id} needs n_timesteps > 0 and reference_score != random_score")
    return env


def normalize_score(env: SuiteEnv, score: float) -> float:
    """(score - random) / (reference - random): 0 is a random policy, 1 the reference (human for Atari)."""
    return (float(score) - env.random_score) / (env.reference_score - env.random_score)
