"""From run directories to statistics: per-run scores, normalisation and rliable estimates.

Score of a run: the mean of `mean_reward` over the evaluations in `eval.csv` whose
`timesteps` lie in the final 10% of the run's budget (timesteps >= 0.9 * n_timesteps).
Averaging several late evaluations is less noisy than the last one alone and, unlike
the best one, is not biased upwards. Normalised score: (score - random) / (reference -
random) with the suite's per-env `random_score` and `reference_score`.

Aggregates follow Agarwal et al. (2021) through `rliable`: IQM, mean, median and
optimality gap over the normalised (runs x envs) matrix, with stratified-bootstrap 95%
confidence intervals; probability of improvement of each SD algorithm over its base.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_selfdistill.algos import registry
from rl_selfdistill.benchmark._compat import patch_pandas_deprecate_kwarg
from rl_selfdistill.benchmark.grid import RunSpec, RunState, diverged_note, run_state
from rl_selfdistill.run.rundir import EVAL_CSV, read_run_info

patch_pandas_deprecate_kwarg()  # before rliable imports arch

from rliable import library as rly  # noqa: E402
from rliable import metrics  # noqa: E402

SCORE_FRACTION = 0.1
METRIC_NAMES = ("IQM", "Mean", "Median", "Optimality Gap")
CONFIDENCE = 0.95


@dataclass
class RunResult:
    """One grid cell as found on disk; `score` is None when the run cannot be scored, and `problem` says why."""

    algo: str
    env_id: str
    seed: int
    run_dir: Path
    status: str
    n_timesteps: int | None = None
    timesteps_done: int | None = None
    wall_clock_s: float | None = None
    cpu_time_s: float | None = None  # recorded by runs since 2026-12-07; None in older run.json files
    # Settings that set the speed (torch threads, device) changed at a resume: the run's times mix two speeds.
    timing_changed: list[str] = field(default_factory=list)
    score: float | None = None
    problem: str | None = None
    evals: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.algo}/{self.env_id}/seed{self.seed}"


@dataclass(frozen=True)
class Reference:
    random_score: float  # the suite's floor_score: its random score, or its do-nothing score where that is higher
    reference_score: float

    def normalise(self, score: float) -> float:
        return (score - self.random_score) / (self.reference_score - self.random_score)


@dataclass
class ScoreMatrices:
    """Normalised scores per algo, shape (runs x envs), over `envs` shared by every algo."""

    envs: list[str]
    scores: dict[str, np.ndarray]
    excluded: list[tuple[str, str]]  # (run label or env, reason) left out of the aggregate


def final_window_score(evals: pd.DataFrame, n_timesteps: int, fraction: float = SCORE_FRACTION) -> float | None:
    """The mean evaluation return over the final `fraction` of the budget. Evaluations past the budget (PPO finishes
    its last rollout, DQN its last `train_freq`, so a run may train a little longer) do not count: runs whose
    settings overshoot by different amounts are scored on the same window."""
    timesteps = evals["timesteps"]
    window = evals[(timesteps >= (1.0 - fraction) * n_timesteps) & (timesteps <= n_timesteps)]
    if window.empty:
        return None
    return float(window["mean_reward"].mean())


def score_fraction(env_id: str) -> float:
    """Continual envs are scored on every evaluation (the mean over the whole level sequence); others on the final 10%."""
    from rl_selfdistill.envs.continual import is_continual

    return 1.0 if is_continual(env_id) else SCORE_FRACTION


def read_evals(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / EVAL_CSV
    try:
        evals = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    if not {"timesteps", "mean_reward"} <= set(evals.columns):
        return None
    return evals.sort_values("timesteps").reset_index(drop=True)


# The resumable settings that change how fast a run trains (run.json's resumes record each change).
TIMING_SETTINGS = ("num_threads", "device")


def timing_settings_changed(info: dict[str, Any]) -> list[str]:
    """The speed-setting keys that a resume of this run changed (run.json ``resumes[*].changes``)."""
    changed = {key for resume in info.get("resumes") or [] for key in (resume.get("changes") or {})}
    return sorted(changed & set(TIMING_SETTINGS))


def load_run(out: Path, spec: RunSpec) -> RunResult:
    """Read one cell; every way it can be unusable ends up in `problem`, never in an exception."""
    run_dir = spec.run_dir(out)
    result = RunResult(spec.algo, spec.env_id, spec.seed, run_dir, run_state(run_dir).value, n_timesteps=spec.n_timesteps)
    if result.status == RunState.MISSING.value:
        result.problem = "never started"
        return result
    info = read_run_info(run_dir) or {}
    result.n_timesteps = int(info.get("n_timesteps") or spec.n_timesteps)
    result.timesteps_done = info.get("num_timesteps_done")
    result.wall_clock_s = info.get("wall_clock_s")
    result.cpu_time_s = info.get("cpu_time_s")
    result.timing_changed = timing_settings_changed(info)
    result.evals = read_evals(run_dir)
    result.score, result.problem = _score_or_problem(result)
    return result


def _score_or_problem(result: RunResult) -> tuple[float | None, str | None]:
    if result.status == RunState.DIVERGED.value:
        return None, diverged_note(result.run_dir)
    if result.status != RunState.FINISHED.value:
        done = result.timesteps_done if result.timesteps_done is not None else "?"
        return None, f"unfinished ({done}/{result.n_timesteps} steps)"
    if result.evals is None or result.evals.empty:
        return None, "no eval.csv"
    score = final_window_score(result.evals, int(result.n_timesteps or 0), score_fraction(result.env_id))
    if score is None:
        return None, f"no evaluation in the final {SCORE_FRACTION:.0%} of training"
    return score, None


# Gymnasium env ids have at most one namespace ("ALE/Breakout-v5"), so a run folder
# OUT/runs/<algo>/<env_id>/seed<N> sits three or four levels under OUT/runs.
RUN_DIR_PATTERNS = ("runs/*/*/seed*", "runs/*/*/*/seed*")


def discover_specs(out: Path) -> list[RunSpec]:
    """Cells present on disk under OUT/runs/<algo>/<env_id>/seed<N>, for runs not in the manifest."""
    runs_root = Path(out) / "runs"
    specs = []
    for seed_dir in sorted(path for pattern in RUN_DIR_PATTERNS for path in Path(out).glob(pattern)):
        suffix = seed_dir.name[len("seed") :]
        if not (seed_dir.is_dir() and suffix.isdigit()):
            continue
        info = read_run_info(seed_dir) or {}
        algo, *env_parts, _ = seed_dir.relative_to(runs_root).parts
        specs.append(RunSpec(algo, "/".join(env_parts), int(suffix), int(info.get("n_timesteps") or 0)))
    return specs


def specs_with_runs_on_disk(out: Path, expected: list[RunSpec]) -> list[RunSpec]:
    """Every expected cell plus any other run found on disk, each once."""
    seen = {(spec.algo, spec.env_id, spec.seed) for spec in expected}
    extra = [spec for spec in discover_specs(out) if (spec.algo, spec.env_id, spec.seed) not in seen]
    return [*expected, *extra]


def collect_runs(out: Path, expected: list[RunSpec]) -> list[RunResult]:
    """The loaded, scored runs of `specs_with_runs_on_disk`."""
    return [load_run(out, spec) for spec in specs_with_runs_on_disk(out, expected)]


def score_matrices(results: list[RunResult], references: dict[str, Reference]) -> ScoreMatrices:
    """Normalised (runs x envs) matrices on the envs every algo with a scored run has scored runs for.

    rliable's stratified bootstrap needs a rectangular matrix, so each algo keeps its
    first `k` seeds per env, k being its smallest per-env count; whatever this leaves out
    is listed in `excluded`.
    """
    scored = [r for r in results if r.score is not None]
    excluded = [(r.label, r.problem or "unscored") for r in results if r.score is None]
    # An algo with no scored run yet (a variant just started) has nothing to aggregate: it must not take every env
    # away from the algos of its comparison that do have scores. Its runs are listed as excluded above.
    algos = sorted({r.algo for r in scored})
    envs = sorted({r.env_id for r in results})
    usable_envs = []
    for env in envs:
        if env not in references:
            excluded.append((f"{env} ({', '.join(algos)})", "no reference score to normalise by"))
        elif any(not [r for r in scored if r.algo == algo and r.env_id == env] for algo in algos):
            excluded.append((f"{env} ({', '.join(algos)})", "not every algo of this comparison has a scored run on it"))
        else:
            usable_envs.append(env)
    matrices = {}
    for algo in algos:
        matrix, dropped = _algo_matrix(scored, algo, usable_envs, references)
        excluded.extend(dropped)
        if matrix.size:
            matrices[algo] = matrix
    return ScoreMatrices(usable_envs, matrices, excluded)


def comparison_groups(algos: set[str] | list[str]) -> list[list[str]]:
    """Algos compared on a common set of envs: each SD algo with its base (ppo, sd_ppo), others alone.

    PPO and DQN families may cover different envs (DQN cannot run on continuous actions), so
    each family is aggregated over the envs it has in full rather than over the intersection.
    """
    groups: dict[str, list[str]] = {}
    for algo in sorted(algos, key=lambda name: (_base(name), _base(name) != name, name)):
        groups.setdefault(_base(algo), []).append(algo)
    return list(groups.values())


def _base(algo: str) -> str:
    """The registry's base of `algo`; a name no longer registered (an old benchmark folder) stands alone."""
    return registry.base_name(algo) if algo in registry.names() else algo


def grouped_score_matrices(results: list[RunResult], references: dict[str, Reference]) -> list[ScoreMatrices]:
    groups = comparison_groups({r.algo for r in results})
    return [score_matrices([r for r in results if r.algo in group], references) for group in groups]


def _algo_matrix(
    scored: list[RunResult], algo: str, envs: list[str], references: dict[str, Reference]
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    per_env = [sorted((r for r in scored if r.algo == algo and r.env_id == env), key=lambda r: r.seed) for env in envs]
    if not per_env:
        return np.zeros((0, 0)), []
    n_runs = min(len(runs) for runs in per_env)
    dropped = [(r.label, f"beyond the {n_runs} seeds {algo} has on every env") for runs in per_env for r in runs[n_runs:]]
    columns = [[references[env].normalise(r.score) for r in runs[:n_runs]] for env, runs in zip(envs, per_env)]
    return np.asarray(columns, dtype=float).T, dropped


@contextmanager
def _seeded_rliable(seed: int) -> Iterator[None]:
    """Make rliable's bootstrap reproducible without touching the caller's random state.

    rliable 1.2 draws its resampling indices from NumPy's global RNG (`np.random.choice` in
    `StratifiedBootstrap.update_indices`), so the `random_state` it takes does not fix the
    intervals. The global RNG is therefore seeded for the call and restored afterwards.
    rliable also passes arch the `random_state` argument arch deprecates; that warning is
    about rliable, not the caller, and is silenced.
    """
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
            yield
    finally:
        np.random.set_state(saved)


def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """IQM, mean, median, optimality gap (gamma = 1) of a normalised (runs x envs) matrix."""
    return np.array(
        [
            metrics.aggregate_iqm(scores),
            metrics.aggregate_mean(scores),
            metrics.aggregate_median(scores),
            metrics.aggregate_optimality_gap(scores, 1.0),
        ]
    )


def interval_estimates(
    matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """{algo: {metric: {point, low, high}}} with stratified-bootstrap 95% CIs."""
    with _seeded_rliable(seed):
        points, intervals = rly.get_interval_estimates(
            matrices,
            aggregate_metrics,
            reps=reps,
            confidence_interval_size=CONFIDENCE,
            random_state=np.random.RandomState(seed),
        )
    return {algo: _named(points[algo], intervals[algo], METRIC_NAMES) for algo in matrices}


def _named(points: np.ndarray, intervals: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {
        name: {"point": float(points[i]), "low": float(intervals[0][i]), "high": float(intervals[1][i])}
        for i, name in enumerate(names)
    }


def improvement_pairs(algos: list[str]) -> list[tuple[str, str]]:
    """(SD algo, its base) for every SD algo whose base is also in the benchmark."""
    return registry.comparison_pairs([algo for algo in algos if algo in registry.names()])


def probability_of_improvement(
    matrices: dict[str, np.ndarray], pairs: list[tuple[str, str]], reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """{"x,y": {point, low, high}}: P(X > Y) averaged over envs, independent bootstrap over each algo's runs."""
    pair_scores = {f"{x},{y}": [matrices[x], matrices[y]] for x, y in pairs if x in matrices and y in matrices}
    if not pair_scores:
        return {}
    with _seeded_rliable(seed):
        points, intervals = rly.get_interval_estimates(
            pair_scores,
            metrics.probability_of_improvement,
            reps=reps,
            confidence_interval_size=CONFIDENCE,
            random_state=np.random.RandomState(seed),
        )
    return {key: _interval(points[key], intervals[key]) for key in points}


def _interval(point: float, interval: np.ndarray) -> dict[str, float]:
    low, high = np.ravel(interval)  # rliable returns (2, 1) for a scalar metric
    return {"point": float(point), "low": float(low), "high": float(high)}


def profile_thresholds(matrices: dict[str, np.ndarray], n_points: int = 81) -> np.ndarray:
    """Thresholds tau from min(0, lowest score) to max(1, highest score)."""
    values = np.concatenate([matrix.ravel() for matrix in matrices.values()]) if matrices else np.zeros(1)
    return np.linspace(min(0.0, float(values.min())), max(1.0, float(values.max())), n_points)


def performance_profiles(
    matrices: dict[str, np.ndarray], taus: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fraction of runs with normalised score > tau, with bootstrap CIs (rliable score distributions)."""
    with _seeded_rliable(seed):
        return rly.create_performance_profile(matrices, taus, reps=reps, confidence_interval_size=CONFIDENCE)


@dataclass
class Curve:
    timesteps: np.ndarray
    iqm: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    n_runs: int


def learning_curve(evals: list[pd.DataFrame], reps: int = 500, seed: int = 0) -> Curve | None:
    """IQM over seeds of the evaluation return, with a 95% bootstrap band, and the mean.

    Runs are interpolated onto the union of their evaluation steps, up to the shortest
    run's last evaluation, so every point averages the same seeds.
    """
    evals = [frame for frame in evals if frame is not None and not frame.empty]
    if not evals:
        return None
    horizon = min(float(frame["timesteps"].max()) for frame in evals)
    grid = np.unique(np.concatenate([frame["timesteps"].to_numpy(dtype=float) for frame in evals]))
    grid = grid[grid <= horizon]
    runs = np.stack([np.interp(grid, frame["timesteps"], frame["mean_reward"]) for frame in evals])
    # rliable wants (runs x tasks x points): a single task per env here.
    with _seeded_rliable(seed):
        points, intervals = rly.get_interval_estimates(
            {"curve": runs[:, None, :]}, _iqm_per_point, reps=reps, random_state=np.random.RandomState(seed)
        )
    return Curve(grid, points["curve"], intervals["curve"][0], intervals["curve"][1], runs.mean(axis=0), len(evals))


def _iqm_per_point(scores: np.ndarray) -> np.ndarray:
    return np.array([metrics.aggregate_iqm(scores[..., point]) for point in range(scores.shape[-1])])


def per_env_table(results: list[RunResult], references: dict[str, Reference]) -> list[dict[str, Any]]:
    """Raw scores per (env, algo): seeds scored, mean, std, IQM, and the normalised mean when possible."""
    rows = []
    for env in sorted({r.env_id for r in results}):
        for algo in sorted({r.algo for r in results if r.env_id == env}):
            scores = np.array([r.score for r in results if r.env_id == env and r.algo == algo and r.score is not None])
            expected = sum(1 for r in results if r.env_id == env and r.algo == algo)
            rows.append(_env_row(env, algo, scores, expected, references.get(env)))
    return rows


def _env_row(env: str, algo: str, scores: np.ndarray, expected: int, reference: Reference | None) -> dict[str, Any]:
    row: dict[str, Any] = {"env_id": env, "algo": algo, "n_scored": int(scores.size), "n_expected": expected}
    if scores.size:
        row.update(
            mean=float(scores.mean()),
            std=float(scores.std(ddof=1)) if scores.size > 1 else 0.0,
            iqm=float(metrics.aggregate_iqm(scores)),
            scores=[float(s) for s in scores],
        )
        if reference is not None:
            row["normalised_mean"] = float(reference.normalise(float(scores.mean())))
    return row
