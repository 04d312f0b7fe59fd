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
    do_nothing_score: return of always doing nothing (zero torque / no-op), when the task has such an action and
    it was measured (rl_selfdistill.envs.floors); None otherwise.
    """

    env_id: str
    n_timesteps: int
    random_score: float
    reference_score: float
    reference: str
    source: str
    do_nothing_score: float | None = None

    @property
    def floor_score(self) -> float:
        """The larger of the random and do-nothing scores: a normalised score of 0 means no better than either."""
        if self.do_nothing_score is None:
            return self.random_score
        return max(self.random_score, self.do_nothing_score)


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
        do_nothing_score=None if item.get("do_nothing_score") is None else float(item["do_nothing_score"]),
    )
    if env.n_timesteps <= 0 or math.isclose(env.reference_score, env.floor_score):
        raise UsageError(f"suite file {path}: {env.env_id} needs n_timesteps > 0 and reference_score != its floor score")
    return env


def normalize_score(env: SuiteEnv, score: float) -> float:
    """(score - floor) / (reference - floor): 0 is the better of a random and a do-nothing policy, 1 the reference.

    The floor is `env.floor_score`: the random score unless doing nothing scores higher (Ant-v5: random -64,
    standing still +995), so that standing still is never read as progress.
    """
    return (float(score) - env.floor_score) / (env.reference_score - env.floor_score)
