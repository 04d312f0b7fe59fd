"""report.md: the Markdown rendering of a benchmark summary (summary.json's dict), section by section."""

from __future__ import annotations

from typing import Any

import numpy as np

from rl_selfdistill.benchmark.aggregate import METRIC_NAMES


def render_markdown(summary: dict[str, Any]) -> str:
    sections = [
        _md_header(summary),
        _md_aggregate(summary),
        _md_improvement(summary),
        _md_paired(summary),
        _md_cost(summary),
        _md_per_env(summary),
        _md_figures(summary),
        _md_runs(summary),
        _md_diverged(summary),
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
    return "\n".join(lines + _md_tuning_seeds(summary.get("tuning_seeds", [])))


def _md_tuning_seeds(seeds: list[int]) -> list[str]:
    """Runs on tuning seeds (a --reference benchmark, `--allow-tuning-seeds`) are not a held-out result: say so."""
    if not seeds:
        return []
    listed = ", ".join(map(str, seeds))
    return [
        "",
        f"**Not a held-out result**: seeds {listed} are tuning seeds (or within the margin around them), on which a "
        "study may have chosen its setting (docs/tuning.md).",
    ]


def _md_pooled_folders(benchmarks: list[dict[str, Any]]) -> list[str]:
    """With several folders, say which each is: their SD overrides may differ, and that matters to the comparison."""
    if len(benchmarks) < 2:
        return []
    lines = ["This report pools the runs of several benchmark folders:", ""]
    for bench in benchmarks:
        overrides = ", ".join(f"`{key}: {value}`" for key, value in bench["sd_params"].items()) or "none"
        line = f"- `{bench['folder']}`: benchmark `{bench['benchmark_id']}`, SD overrides (`-params`): {overrides}"
        env_kwargs = ", ".join(f"`{key}: {value}`" for key, value in (bench.get("env_kwargs") or {}).items())
        lines.append(line + (f"; env keyword arguments (`--env-kwargs`): {env_kwargs}" if env_kwargs else ""))
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
    columns = ["env", "X", "Y", "pairs", "median X - Y [95% CI]", "mean X - Y", "sign-flip p"]
    table = []
    for row in rows:
        interval = f"{row['median']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
        p_value = f"{row['p_value']:.3f}" + ("" if row["exact"] else " (MC)")
        table.append([row["env_id"], row["algo"], row["base"], str(row["n_pairs"]), interval, f"{row['mean']:.2f}", p_value])
    return _pairs_section("Paired by seed (SD - base, raw returns)", columns, table, summary["paired"]["definition"])


def _md_cost(summary: dict[str, Any]) -> str:
    rows = summary.get("cost", {}).get("per_env", [])
    if not rows:
        return ""
    columns = ["env", "X", "Y", "pairs", "wall-clock X / Y: median [range]", "CPU time X / Y: median [range]"]
    table = [
        [row["env_id"], row["algo"], row["base"], _cost_pairs(row), _ratio(row["wall_clock"]), _cpu_ratio(row)] for row in rows
    ]
    return _pairs_section("Cost, paired by seed (SD / base)", columns, table, summary["cost"]["definition"])


def _pairs_section(title: str, columns: list[str], table: list[list[str]], definition: str) -> str:
    """A section of per-env rows comparing each SD algo with its base, followed by the definition of its numbers."""
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    return "\n".join([*lines, "", definition])


def _cost_pairs(row: dict[str, Any]) -> str:
    """The pairs behind a cost row, and those left out because a resume changed their speed settings."""
    mixed = row.get("mixed_speed_seeds") or []
    return str(len(row["seeds"])) + (f" + {len(mixed)} left out (threads or device changed)" if mixed else "")


def _cpu_ratio(row: dict[str, Any]) -> str:
    """The CPU-time ratio, with the number of pairs behind it when only some of the row's pairs recorded CPU time."""
    text = _ratio(row["cpu_time"])
    n_pairs = len(row["cpu_time_seeds"])
    if row["cpu_time"] is not None and n_pairs < len(row["seeds"]):
        text += f" ({n_pairs} pair{'s' if n_pairs != 1 else ''})"
    return text


def _ratio(summary: dict[str, float] | None) -> str:
    if summary is None:
        return "not recorded"
    return f"{summary['median']:.2f}x [{summary['min']:.2f}, {summary['max']:.2f}]"


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
        "| algo | env | seed | status | steps done / budget | wall-clock (s) | CPU time (s) | score | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        steps = f"{_fmt(run['timesteps_done'], 'd')} / {_fmt(run['n_timesteps'], 'd')}"
        lines.append(
            f"| {run['algo']} | {run['env_id']} | {run['seed']} | {run['status']} | {steps} | "
            f"{_fmt(run['wall_clock_s'], '.0f')} | {_fmt(run.get('cpu_time_s'), '.0f')} | {_fmt(run['score'], '.1f')} | "
            f"{run['problem'] or ''} |"
        )
    total = sum(run["wall_clock_s"] or 0.0 for run in summary["runs"])
    lines += ["", f"Total training wall-clock over all runs: {total:.0f} s ({total / 3600:.2f} h)."]
    return "\n".join(lines)


def _md_diverged(summary: dict[str, Any]) -> str:
    """Runs the divergence guard stopped: named on their own, since a NaN run is a result about its settings."""
    diverged = [run for run in summary["runs"] if run["status"] == "diverged"]
    if not diverged:
        return ""
    lines = [
        "## Diverged runs",
        "",
        f"{len(diverged)} run(s) stopped because a loss, a trained parameter or the action distribution became "
        "non-finite (the divergence guard); they have no score and no final model:",
        "",
    ]
    for run in diverged:
        lines.append(f"- `{run['algo']}/{run['env_id']}/seed{run['seed']}` in `{run['run_dir']}`: {run['problem']}")
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
