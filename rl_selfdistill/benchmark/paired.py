"""The paired statistic: each self-distilling run set against its base run of the same seed.

rliable's intervals and P(X > Y) treat the runs of two algorithms as independent samples. They are not:
a self-distilling agent and its base with the same seed share their initial network, their environment
seeds and every random draw until the first teacher refresh, so they are identical up to that point. Pairing
them by seed removes that shared variation, and with 5 seeds it is the more sensitive comparison.

Per env, with d_i = score(SD, seed i) - score(base, seed i) over the seeds both have scored:

- the median paired difference, with a 95% percentile-bootstrap interval: pairs resampled with replacement
  (`reps` resamples, seeded generator, so a report is reproducible);
- a two-sided paired sign-flip permutation test of "no difference" (each d_i equally likely +-|d_i| under the
  null), on the mean difference: exact over all 2^n sign patterns when n <= EXACT_MAX_PAIRS, else a seeded Monte
  Carlo estimate (1 + hits) / (1 + reps). The smallest exact p-value is 2 / 2^n: 0.0625 with 5 seeds, so 5
  seeds can never reach p < 0.05 with this test, and 6 is the minimum for that.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

CONFIDENCE = 0.95
EXACT_MAX_PAIRS = 16  # 65,536 sign patterns
BOOTSTRAP_REPS = 10_000
DEFINITION = (
    "Paired statistic: runs of an SD algo and its base with the same seed are identical until the first teacher "
    "refresh, so they are compared as pairs. Per env, d = score(SD, seed) - score(base, seed) over the seeds both "
    "have scored; shown: the median d with a 95% percentile-bootstrap CI over pairs, and the two-sided p-value of a "
    f"paired sign-flip permutation test on the mean d (exact for up to {EXACT_MAX_PAIRS} pairs). With n pairs the "
    "smallest possible p is 2/2^n (0.0625 for 5 seeds)."
)


@dataclass(frozen=True)
class PairedResult:
    env_id: str
    algo: str
    base: str
    seeds: list[int]
    differences: list[float]
    median: float
    low: float
    high: float
    mean: float
    p_value: float
    exact: bool

    @property
    def n_pairs(self) -> int:
        return len(self.seeds)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_pairs": self.n_pairs}


def median_bootstrap_ci(
    differences: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median, resampling the pairs with replacement."""
    diffs = np.asarray(differences, dtype=float)
    if diffs.size == 0:
        raise ValueError("no paired differences")
    rng = np.random.default_rng(seed)
    resamples = diffs[rng.integers(0, diffs.size, size=(reps, diffs.size))]
    medians = np.median(resamples, axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(medians, [tail, 100.0 - tail])
    return float(low), float(high)


def sign_flip_p_value(differences: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> tuple[float, bool]:
    """Two-sided p-value of the paired sign-flip permutation test on the mean; (p, whether it is exact)."""
    diffs = np.asarray(differences, dtype=float)
    if diffs.size == 0:
        raise ValueError("no paired differences")
    observed = abs(diffs.mean())
    # A flipped statistic equal to the observed one up to rounding counts as at least as extreme
    tolerance = 1e-12 * max(1.0, float(np.abs(diffs).max()))
    if diffs.size <= EXACT_MAX_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=diffs.size)))
        statistics = np.abs(signs @ diffs) / diffs.size
        return float(np.mean(statistics >= observed - tolerance)), True
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(reps, diffs.size))
    hits = int(np.sum(np.abs(signs @ diffs) / diffs.size >= observed - tolerance))
    return (1 + hits) / (1 + reps), False


def paired_result(
    env_id: str, algo: str, base: str, scores: dict[int, float], base_scores: dict[int, float], reps: int, seed: int
) -> PairedResult | None:
    """The statistic over the seeds both algos have scored on `env_id`; None without any common seed."""
    seeds = sorted(set(scores) & set(base_scores))
    if not seeds:
        return None
    diffs = np.array([scores[s] - base_scores[s] for s in seeds], dtype=float)
    low, high = median_bootstrap_ci(diffs, reps=reps, seed=seed)
    p_value, exact = sign_flip_p_value(diffs, reps=reps, seed=seed)
    return PairedResult(
        env_id=env_id,
        algo=algo,
        base=base,
        seeds=seeds,
        differences=[float(d) for d in diffs],
        median=float(np.median(diffs)),
        low=low,
        high=high,
        mean=float(diffs.mean()),
        p_value=p_value,
        exact=exact,
    )


def paired_statistics(
    results: list[Any], pairs: list[tuple[str, str]], reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> list[PairedResult]:
    """One PairedResult per (SD algo, base) pair and env, from scored runs (objects with algo/env_id/seed/score)."""
    out = []
    for env_id, algo, base, mine, theirs in scored_runs_by_seed(results, pairs):
        result = paired_result(env_id, algo, base, _scores(mine), _scores(theirs), reps, seed)
        if result is not None:
            out.append(result)
    return out


def scored_runs_by_seed(
    results: list[Any], pairs: list[tuple[str, str]]
) -> Iterator[tuple[str, str, str, dict[int, Any], dict[int, Any]]]:
    """(env, SD algo, base, the SD algo's scored runs by seed, the base's) for each pair and each env the SD algo
    has scored runs on: what both the paired statistic and the paired cost compare."""
    scored = [r for r in results if r.score is not None]
    for algo, base in pairs:
        for env_id in sorted({r.env_id for r in scored if r.algo == algo}):
            mine = {r.seed: r for r in scored if r.algo == algo and r.env_id == env_id}
            theirs = {r.seed: r for r in scored if r.algo == base and r.env_id == env_id}
            yield env_id, algo, base, mine, theirs


def _scores(runs: dict[int, Any]) -> dict[int, float]:
    return {seed: float(run.score) for seed, run in runs.items()}


COST_DEFINITION = (
    "Cost paired by seed: per env, the ratio SD / base of each seed pair's training wall-clock and of the training "
    "process's CPU time (envs in subprocesses not counted), over the scored pairs (for CPU time, those whose two runs "
    "recorded it); shown: the median ratio and the range. Wall-clock swings with other load on a shared machine; CPU "
    "time is the steadier figure. A pair is left out when either run was resumed with other torch threads or another "
    "device (its times mix two speeds); the pairs column counts them after a +."
)


@dataclass(frozen=True)
class PairedCost:
    env_id: str
    algo: str
    base: str
    seeds: list[int]
    wall_clock_ratios: list[float]
    cpu_time_seeds: list[int]  # the pairs whose two runs both recorded their CPU time (older run.json files lack it)
    cpu_time_ratios: list[float]
    mixed_speed_seeds: list[int] = field(default_factory=list)  # left out: threads or device changed at a resume

    def as_dict(self) -> dict[str, Any]:
        summaries = {"wall_clock": _ratio_summary(self.wall_clock_ratios), "cpu_time": _ratio_summary(self.cpu_time_ratios)}
        return {**asdict(self), **summaries}


def _ratio_summary(ratios: list[float]) -> dict[str, float] | None:
    if not ratios:
        return None
    return {"median": float(np.median(ratios)), "min": float(min(ratios)), "max": float(max(ratios))}


def _ratios(mine: dict[int, Any], theirs: dict[int, Any], key: str) -> tuple[list[int], list[float]]:
    """(seeds, ratios) over the seed pairs where both runs recorded `key`."""
    seeds = [s for s in sorted(set(mine) & set(theirs)) if getattr(mine[s], key) and getattr(theirs[s], key)]
    return seeds, [float(getattr(mine[s], key)) / float(getattr(theirs[s], key)) for s in seeds]


def paired_costs(results: list[Any], pairs: list[tuple[str, str]]) -> list[PairedCost]:
    """Per (SD algo, base) pair and env, the cost ratios of the seed pairs where both runs were scored."""
    out = []
    for env_id, algo, base, mine, theirs in scored_runs_by_seed(results, pairs):
        mixed = sorted(s for s in set(mine) & set(theirs) if mine[s].timing_changed or theirs[s].timing_changed)
        comparable = {seed: run for seed, run in mine.items() if seed not in mixed}
        seeds, wall = _ratios(comparable, theirs, "wall_clock_s")
        if seeds or mixed:
            out.append(PairedCost(env_id, algo, base, seeds, wall, *_ratios(comparable, theirs, "cpu_time_s"), mixed))
    return out
