"""`rl-selfdistill report OUT`: summary.json, report.md and PNG figures for a benchmark folder."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from rl_selfdistill.benchmark import aggregate, paired, plots
from rl_selfdistill.benchmark.aggregate import SCORE_FRACTION, Reference, RunResult, ScoreMatrices
from rl_selfdistill.benchmark.grid import Manifest, load_manifest
from rl_selfdistill.benchmark.report_markdown import render_markdown
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.rundir import PROGRAM, format_command
from rl_selfdistill.tune.seeds import RESERVED_FOR_TUNING

SCORE_DEFINITION = (
    f"Score of a run: mean of the evaluation returns (`mean_reward` in `eval.csv`) logged in the final "
    f"{SCORE_FRACTION:.0%} of its budget (timesteps >= {1 - SCORE_FRACTION:.1f} x n_timesteps). "
    "Normalised score: (score - random_score) / (reference_score - random_score), with the suite's per-env values. "
    "Aggregates (IQM, mean, median, optimality gap at 1.0) pool the normalised scores of all runs and envs; "
    "95% confidence intervals come from rliable's stratified bootstrap over runs. "
    "P(X > Y) is the probability that a run of X beats a run of Y on the same env, averaged over envs. "
    "Continual envs (Continual-*) are scored on all their evaluations instead: the mean return over the whole "
    "level sequence. The floor of a normalised score is the suite's floor: the larger of its random and "
    "do-nothing scores."
)
_REPORT_PACKAGES = ("rl-selfdistill", "stable-baselines3", "torch", "gymnasium", "numpy", "rliable", "ray")


@dataclass(frozen=True)
class ReportFiles:
    summary: Path
    markdown: Path
    figures: dict[str, Path]


@dataclass
class Analysis:
    """Everything the report shows, computed once."""

    results: list[RunResult]
    references: dict[str, Reference]
    groups: list[ScoreMatrices]
    estimates: dict[str, dict[str, dict[str, float]]]
    improvement: dict[str, dict[str, float]]
    env_rows: list[dict[str, Any]]
    # Each benchmark folder with its benchmark.json (None for a bare runs/ folder), read once.
    benchmarks: list[tuple[Path, Manifest | None]]
    # (run directory, reason) of the runs an --exclude path left out: listed, never dropped silently.
    left_out: list[tuple[str, str]]
    # Each SD algo against its base, per env, seeds as pairs (benchmark/paired.py).
    paired_stats: list[paired.PairedResult] = field(default_factory=list)
    paired_costs: list[paired.PairedCost] = field(default_factory=list)

    @property
    def scores(self) -> dict[str, np.ndarray]:
        return {algo: matrix for group in self.groups for algo, matrix in group.scores.items()}

    @property
    def excluded(self) -> list[tuple[str, str]]:
        return [item for group in self.groups for item in group.excluded] + self.left_out


def load_references(suite: str | None, env_ids: list[str]) -> dict[str, Reference]:
    """Reference scores for `env_ids` from the named suite, or from any suite listing the env."""
    from rl_selfdistill.envs import load_suite

    references: dict[str, Reference] = {}
    for name in [suite] if suite else _suite_names():
        for entry in _suite_entries(load_suite(name)):
            if entry.env_id in env_ids and entry.env_id not in references and _has_reference(entry):
                # The floor (random, or doing nothing where that scores higher) is what 0 means
                floor = getattr(entry, "floor_score", entry.random_score)
                references[entry.env_id] = Reference(float(floor), float(entry.reference_score))
    return references


def _suite_names() -> list[str]:
    from rl_selfdistill.paths import data_dir

    return sorted(path.stem for path in data_dir("envs").glob("*.yaml"))


def _suite_entries(suite: Any) -> list[Any]:
    return list(getattr(suite, "envs", suite))


def _has_reference(entry: Any) -> bool:
    random_score, reference_score = getattr(entry, "random_score", None), getattr(entry, "reference_score", None)
    return random_score is not None and reference_score is not None and reference_score != random_score


def analyse(
    outs: Path | Sequence[Path],
    references: dict[str, Reference] | None = None,
    suite: str | None = None,
    reps: int = 2000,
    exclude: Sequence[Path] = (),
) -> Analysis:
    """Score every run of one benchmark folder, or of several pooled into one comparison.

    Runs at or under an `exclude` path (e.g. `OUT/runs/ppo/Pendulum-v1`) are left out and listed as such.
    """
    folders = as_folders(outs)
    manifests = [load_manifest(out) for out in folders]
    results, left_out = _collect_all(folders, manifests, [Path(path) for path in exclude])
    if references is None:
        references = load_references(suite or _common_suite(manifests), sorted({r.env_id for r in results}))
    groups = aggregate.grouped_score_matrices(results, references)
    scores = {algo: matrix for group in groups for algo, matrix in group.scores.items()}
    estimates = aggregate.interval_estimates(scores, reps=reps) if scores else {}
    pairs = aggregate.improvement_pairs(sorted(scores))
    improvement = aggregate.probability_of_improvement(scores, pairs, reps=reps)
    env_rows = aggregate.per_env_table(results, references)
    benchmarks = list(zip(folders, manifests))
    pairs = aggregate.improvement_pairs(sorted({r.algo for r in results}))
    paired_stats = paired.paired_statistics(results, pairs)
    costs = paired.paired_costs(results, pairs)
    return Analysis(results, references, groups, estimates, improvement, env_rows, benchmarks, left_out, paired_stats, costs)


def as_folders(outs: Path | Sequence[Path]) -> list[Path]:
    return [Path(outs)] if isinstance(outs, str | Path) else [Path(out) for out in outs]


def _collect_all(
    folders: list[Path], manifests: list[Manifest | None], exclude: list[Path]
) -> tuple[list[RunResult], list[tuple[str, str]]]:
    """The runs of every folder, and the (run, reason) of those `exclude` leaves out.

    A cell found in two folders would be counted twice, so it is refused unless one copy is excluded.
    """
    results: list[RunResult] = []
    left_out: list[tuple[str, str]] = []
    used: set[Path] = set()
    origin: dict[str, Path] = {}
    for out, manifest in zip(folders, manifests):
        found = aggregate.collect_runs(out, manifest.specs() if manifest else [])
        _attach_failures(found, manifest)
        if not found:
            raise UsageError(f"{out} holds no benchmark runs; run `rl-selfdistill benchmark -o {out} ...` first")
        for result in found:
            rule = _excluding_path(result.run_dir, exclude)
            if rule is not None:
                used.add(rule)
                left_out.append((result.run_dir.as_posix(), f"left out by --exclude {rule.as_posix()}"))
                continue
            if result.label in origin:
                raise UsageError(
                    f"{result.label} is in both {origin[result.label]} and {out}; report each cell from one folder only"
                )
            origin[result.label] = out
            results.append(result)
    unused = [path for path in exclude if path not in used]
    if unused:
        raise UsageError(f"--exclude {unused[0]} matches no run of these folders; give a path under OUT/runs/")
    return results, left_out


def _excluding_path(run_dir: Path, exclude: list[Path]) -> Path | None:
    """The first `exclude` path that is `run_dir` or one of its parents."""
    resolved = run_dir.resolve()
    return next((path for path in exclude if resolved.is_relative_to(path.resolve())), None)


def _attach_failures(results: list[RunResult], manifest: Manifest | None) -> None:
    """A run that failed before writing anything says why, instead of 'never started'."""
    errors = {f["run"]: f["error"] for inv in (manifest.invocations if manifest else []) for f in inv.get("failures", [])}
    for result in results:
        if result.status == "missing" and result.label in errors:
            result.problem = f"failed: {errors[result.label]}"


def _common_suite(manifests: list[Manifest | None]) -> str | None:
    """The suite all folders were run from; with none or a mix, every suite's references are searched."""
    suites = {manifest.suite if manifest else None for manifest in manifests}
    return suites.pop() if len(suites) == 1 else None


def write_report(
    outs: Path | Sequence[Path],
    references: dict[str, Reference] | None = None,
    suite: str | None = None,
    reps: int = 2000,
    command: str | None = None,
    report_dir: Path | None = None,
    exclude: Sequence[Path] = (),
) -> ReportFiles:
    """Analyse the benchmark folder(s); write summary.json, report.md and figures/*.png into `report_dir`.

    `report_dir` defaults to the folder itself when there is one; pooling several folders
    (e.g. envs run in separate sessions) needs it, so no folder's own report is overwritten by accident.
    """
    folders = as_folders(outs)
    if report_dir is None:
        if len(folders) > 1:
            raise UsageError("a report over several benchmark folders needs -o DIR for its files")
        report_dir = folders[0]
    analysis = analyse(folders, references, suite, reps, exclude)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(analysis, report_dir / "figures", reps)
    command = command or format_command([PROGRAM, "report", *folders])
    summary = build_summary(analysis, figures, report_dir, command)
    summary_path = report_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    markdown_path = report_dir / "report.md"
    markdown_path.write_text(render_markdown(summary))
    return ReportFiles(summary_path, markdown_path, figures)


def draw_figures(analysis: Analysis, folder: Path, reps: int) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    curves = _curves(analysis.results, reps=min(reps, 500))
    if curves:
        figures["learning_curves"] = plots.plot_learning_curves(curves, folder / "learning_curves.png")
    scores = analysis.scores
    if analysis.estimates:
        figures["aggregate"] = plots.plot_aggregate_intervals(analysis.estimates, folder / "aggregate_intervals.png")
        taus = aggregate.profile_thresholds(scores)
        profiles, cis = aggregate.performance_profiles(scores, taus, reps=reps)
        figures["performance_profiles"] = plots.plot_performance_profiles(
            profiles, cis, taus, folder / "performance_profiles.png"
        )
    if analysis.improvement:
        figures["probability_of_improvement"] = plots.plot_improvement(
            analysis.improvement, folder / "probability_of_improvement.png"
        )
    return figures


def _curves(results: list[RunResult], reps: int) -> dict[str, dict[str, aggregate.Curve]]:
    """Learning curves of finished runs only: a half-trained run would cut every point's horizon short."""
    curves: dict[str, dict[str, aggregate.Curve]] = {}
    for env in sorted({r.env_id for r in results}):
        for algo in sorted({r.algo for r in results if r.env_id == env}):
            evals = [r.evals for r in results if r.env_id == env and r.algo == algo and r.score is not None]
            curve = aggregate.learning_curve(evals, reps=reps)
            if curve is not None:
                curves.setdefault(env, {})[algo] = curve
    return curves


def build_summary(analysis: Analysis, figures: dict[str, Path], report_dir: Path, command: str) -> dict[str, Any]:
    known = [manifest for _, manifest in analysis.benchmarks if manifest]
    return {
        "benchmark_id": " + ".join(manifest.benchmark_id for manifest in known) or None,
        "suite": _common_suite([manifest for _, manifest in analysis.benchmarks]),
        "benchmarks": [_benchmark_entry(out, manifest, report_dir) for out, manifest in analysis.benchmarks],
        "score_definition": SCORE_DEFINITION,
        "comparisons": [
            {
                "algos": sorted(group.scores),
                "envs": group.envs,
                "runs_per_env": {a: int(m.shape[0]) for a, m in group.scores.items()},
            }
            for group in analysis.groups
        ],
        "aggregate": analysis.estimates,
        "probability_of_improvement": analysis.improvement,
        "paired": {"definition": paired.DEFINITION, "per_env": [result.as_dict() for result in analysis.paired_stats]},
        "cost": {"definition": paired.COST_DEFINITION, "per_env": [cost.as_dict() for cost in analysis.paired_costs]},
        "per_env": analysis.env_rows,
        "references": {env: vars(ref) for env, ref in sorted(analysis.references.items())},
        "runs": [_run_entry(result, report_dir) for result in analysis.results],
        "excluded": [{"what": what, "reason": reason} for what, reason in analysis.excluded],
        "tuning_seeds": sorted({r.seed for r in analysis.results if r.seed in RESERVED_FOR_TUNING}),
        "not_run": [cell for manifest in known for cell in manifest.skipped],
        "figures": {name: _relative(path, report_dir) for name, path in figures.items()},
        "invocations": [invocation for manifest in known for invocation in manifest.invocations],
        "report_command": command,
        "git_commits": sorted({c for c in _run_infos(analysis.results, "git_commit") if c}),
        "versions": _versions(analysis.results),
    }


def _benchmark_entry(out: Path, manifest: Manifest | None, report_dir: Path) -> dict[str, Any]:
    return {
        "folder": _relative(out, report_dir),
        "benchmark_id": manifest.benchmark_id if manifest else None,
        "suite": manifest.suite if manifest else None,
        "sd_params": manifest.sd_params if manifest else {},
        "env_kwargs": manifest.env_kwargs if manifest else {},
    }


def _relative(path: Path, start: Path) -> str:
    """Paths in the summary are relative to the report, so a copied report folder keeps working links."""
    return Path(os.path.relpath(path, start)).as_posix()


def _run_entry(result: RunResult, report_dir: Path) -> dict[str, Any]:
    return {
        "algo": result.algo,
        "env_id": result.env_id,
        "seed": result.seed,
        "status": result.status,
        "run_dir": _relative(result.run_dir, report_dir),
        "n_timesteps": result.n_timesteps,
        "timesteps_done": result.timesteps_done,
        "wall_clock_s": result.wall_clock_s,
        "cpu_time_s": result.cpu_time_s,
        "score": result.score,
        "problem": result.problem,
    }


def _run_infos(results: list[RunResult], key: str) -> list[Any]:
    from rl_selfdistill.run.rundir import read_run_info

    return [(read_run_info(r.run_dir) or {}).get(key) for r in results if r.status != "missing"]


def _versions(results: list[RunResult]) -> dict[str, Any]:
    """Versions the runs recorded (all distinct values) and those the report itself ran with."""
    recorded: dict[str, set[str]] = {}
    for versions in _run_infos(results, "versions"):
        for package, version in (versions or {}).items():
            recorded.setdefault(package, set()).add(str(version))
    return {
        "runs": {package: sorted(values) for package, values in sorted(recorded.items())},
        "report": {"python": sys.version.split()[0], **{name: _version(name) for name in _REPORT_PACKAGES}},
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
