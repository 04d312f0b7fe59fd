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
from rl_selfdistill.benchmark.aggregate import METRIC_NAMES, SCORE_FRACTION, Reference, RunResult, ScoreMatrices
from rl_selfdistill.benchmark.grid import Manifest, load_manifest
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.rundir import PROGRAM, format_command

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
    paired_stats = paired.paired_statistics(results, aggregate.improvement_pairs(sorted({r.algo for r in results})))
    return Analysis(results, references, groups, estimates, improvement, env_rows, benchmarks, left_out, paired_stats)


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
        "per_env": analysis.env_rows,
        "references": {env: vars(ref) for env, ref in sorted(analysis.references.items())},
        "runs": [_run_entry(result, report_dir) for result in analysis.results],
        "excluded": [{"what": what, "reason": reason} for what, reason in analysis.excluded],
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


def render_markdown(summary: dict[str, Any]) -> str:
    sections = [
        _md_header(summary),
        _md_aggregate(summary),
        _md_improvement(summary),
        _md_paired(summary),
        _md_per_env(summary),
        _md_figures(summary),
        _md_runs(summary),
        _md_excluded(summary),
        _md_provenance(summary),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _md_header(summary: dict[str, Any]) -> str:
    lines = [f"# Benchmark report: {summary['benchmark_id'] or 'unnamed'}", ""]
    if summary["suite"]:
        lines.append(f"Suite: `{summary['suite']}`. ")
    lines += _md_pooled_folders(summary.get("benchmarks", []))
    lines += ["## Commands", "", "```bash"]
    lines += [invocation["command"] for invocation in summary["invocations"]]
    lines += [summary["report_command"], "```", "", "## Score", "", summary["score_definition"]]
    return "\n".join(lines)


def _md_pooled_folders(benchmarks: list[dict[str, Any]]) -> list[str]:
    """With several folders, say which each is: their SD overrides may differ, and that matters to the comparison."""
    if len(benchmarks) < 2:
        return []
    lines = ["This report pools the runs of several benchmark folders:", ""]
    for bench in benchmarks:
        overrides = ", ".join(f"`{key}: {value}`" for key, value in bench["sd_params"].items()) or "none"
        lines.append(f"- `{bench['folder']}`: benchmark `{bench['benchmark_id']}`, SD overrides (`-params`): {overrides}")
    return [*lines, ""]


def _ci(value: dict[str, float]) -> str:
    return f"{value['point']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def _md_aggregate(summary: dict[str, Any]) -> str:
    if not summary["aggregate"]:
        return "## Aggregate\n\nNo env has a scored run for every algo with a reference score: nothing to aggregate."
    lines = [
        "## Aggregate (normalised scores, 95% stratified-bootstrap CIs)",
        "",
        "| algo | envs | runs per env | " + " | ".join(METRIC_NAMES) + " |",
        "|---|---|---|" + "---|" * len(METRIC_NAMES),
    ]
    for comparison in summary["comparisons"]:
        for algo in comparison["algos"]:
            cells = " | ".join(_ci(summary["aggregate"][algo][name]) for name in METRIC_NAMES)
            envs = ", ".join(comparison["envs"])
            lines.append(f"| {algo} | {envs} | {comparison['runs_per_env'][algo]} | {cells} |")
    lines += [
        "",
        "Higher is better for all but the optimality gap (lower is better). Each SD algo is aggregated with its base "
        "over the envs where both have scored runs; PPO and DQN rows may cover different envs and are not comparable.",
    ]
    return "\n".join(lines)


def _md_improvement(summary: dict[str, Any]) -> str:
    if not summary["probability_of_improvement"]:
        return ""
    lines = ["## Probability of improvement", "", "| X | Y | P(X > Y) [95% CI] |", "|---|---|---|"]
    for pair, value in summary["probability_of_improvement"].items():
        x, y = pair.split(",")
        lines.append(f"| {x} | {y} | {_ci(value)} |")
    lines += ["", "0.5 means no difference; a CI that excludes 0.5 is a difference at the 95% level."]
    return "\n".join(lines)


def _md_paired(summary: dict[str, Any]) -> str:
    rows = summary.get("paired", {}).get("per_env", [])
    if not rows:
        return ""
    lines = [
        "## Paired by seed (SD - base, raw returns)",
        "",
        "| env | X | Y | pairs | median X - Y [95% CI] | mean X - Y | sign-flip p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        interval = f"{row['median']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
        p_value = f"{row['p_value']:.3f}" + ("" if row["exact"] else " (MC)")
        cells = [row["env_id"], row["algo"], row["base"], str(row["n_pairs"]), interval, f"{row['mean']:.2f}", p_value]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", summary["paired"]["definition"]])


def _md_per_env(summary: dict[str, Any]) -> str:
    lines = [
        "## Per environment (raw returns)",
        "",
        "| env | algo | scored / expected | mean ± std | IQM | normalised mean | floor / reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["per_env"]:
        ref = summary["references"].get(row["env_id"])
        ref_cell = f"{ref['random_score']:g} / {ref['reference_score']:g}" if ref else "none"
        if row["n_scored"]:
            stats = f"{row['mean']:.1f} ± {row['std']:.1f} | {row['iqm']:.1f} | {_fmt(row.get('normalised_mean'), '.3f')}"
        else:
            stats = "- | - | -"
        lines.append(f"| {row['env_id']} | {row['algo']} | {row['n_scored']} / {row['n_expected']} | {stats} | {ref_cell} |")
    return "\n".join(lines)


def _md_figures(summary: dict[str, Any]) -> str:
    titles = {
        "learning_curves": "Learning curves",
        "aggregate": "Aggregate metrics",
        "probability_of_improvement": "Probability of improvement",
        "performance_profiles": "Performance profiles",
    }
    lines = ["## Figures", ""]
    lines += [f"### {titles.get(name, name)}\n\n![{name}]({path})\n" for name, path in summary["figures"].items()]
    return "\n".join(lines) if summary["figures"] else ""


def _md_runs(summary: dict[str, Any]) -> str:
    lines = [
        "## Runs",
        "",
        "| algo | env | seed | status | steps done / budget | wall-clock (s) | score | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        steps = f"{_fmt(run['timesteps_done'], 'd')} / {_fmt(run['n_timesteps'], 'd')}"
        lines.append(
            f"| {run['algo']} | {run['env_id']} | {run['seed']} | {run['status']} | {steps} | "
            f"{_fmt(run['wall_clock_s'], '.0f')} | {_fmt(run['score'], '.1f')} | {run['problem'] or ''} |"
        )
    total = sum(run["wall_clock_s"] or 0.0 for run in summary["runs"])
    lines += ["", f"Total training wall-clock over all runs: {total:.0f} s ({total / 3600:.2f} h)."]
    return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return format(int(value) if spec == "d" else value, spec)


def _md_excluded(summary: dict[str, Any]) -> str:
    lines = ["## Left out of the aggregate", ""]
    if not summary["excluded"]:
        lines.append("Nothing: every expected run was scored and aggregated.")
    lines += [f"- `{item['what']}`: {item['reason']}" for item in summary["excluded"]]
    lines += [f"- `{cell['algo']}/{cell['env_id']}`: not run, {cell['reason']}" for cell in summary["not_run"]]
    return "\n".join(lines)


def _md_provenance(summary: dict[str, Any]) -> str:
    lines = ["## Provenance", "", f"Git commit(s) of the runs: {', '.join(summary['git_commits']) or 'unknown'}.", ""]
    for invocation in summary["invocations"]:
        hardware = invocation.get("hardware", {})
        gpus = ", ".join(hardware.get("gpus") or []) or "none"
        finished = invocation.get("finished_at") or "interrupted"
        lines.append(
            f"- `{invocation['command']}`: {invocation.get('started_at')} to {finished}, "
            f"backend {invocation.get('backend')}, {invocation.get('workers')} worker(s); {hardware.get('cpu_model')}, "
            f"{hardware.get('cpu_count')} CPUs, {hardware.get('memory_gb')} GB, GPUs: {gpus}"
        )
    lines += ["", "Versions recorded by the runs:", ""]
    lines += [f"- {package}: {', '.join(values)}" for package, values in summary["versions"]["runs"].items()]
    lines += ["", "Versions of this report:", ""]
    lines += [f"- {package}: {version}" for package, version in summary["versions"]["report"].items()]
    return "\n".join(lines)
