"""The study summary: STUDY_DIR/summary.md, summary.json and objective.png, rewritten after every trial.

- the best trials as a table with their parameters;
- objective vs trial number (complete trials, pruned trials at their last reported value, best so far);
- Optuna's parameter importances (`optuna.importance.get_param_importances`), from 2 complete trials on;
- the exact `rl-selfdistill train` commands that reproduce the best trial, one per env and seed;
- each run's score for the best trials (and the references), linked to its run folder, so a reader sees which env
  and seed moved an objective and can open the run behind each number;
- with `--reference BENCH_DIR ...`, the other algorithms' runs in those benchmark folders scored like a trial
  (e.g. the base algorithm on the same tuning seeds), so a trial's objective can be read against them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from rl_selfdistill.run import rundir

SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
OBJECTIVE_PNG = "objective.png"
TOP_TRIALS = 10
MIN_TRIALS_FOR_IMPORTANCE = 2


def trial_rows(study: Any) -> list[dict[str, Any]]:
    from rl_selfdistill.tune.trial import RETRY_ATTR

    rows = []
    for trial in study.get_trials(deepcopy=False):
        last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "last_intermediate": last,
                "n_intermediate": len(trial.intermediate_values),
                "params": trial.params,
                "retry_of": trial.user_attrs.get(RETRY_ATTR),
            }
        )
    return rows


def importances(study: Any) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's parameter importances (its default evaluator), or None and the reason they cannot be computed yet."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials, the study has {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "few trials per regime": the summary states how many trials there are
            values = optuna.importance.get_param_importances(study)
        # Ties in Optuna's order follow set iteration (string hashing differs per process): sort them by name too,
        # so the same study always gives the same summary.
        return dict(sorted(values.items(), key=lambda item: (-item[1], item[0]))), None
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return None, f"Optuna could not compute them: {error}"


def best_commands(study: Any, settings: Any) -> list[str]:
    """`rl-selfdistill train` commands that rerun the best trial's runs exactly (same seeds, same params)."""
    from rl_selfdistill.tune.trial import train_command

    best = study.best_trial
    hyperparams = {**settings.space.fixed, **best.params}
    return [
        train_command(settings.plan, env, seed, hyperparams, None)
        for env in settings.plan.envs
        for seed in settings.plan.seeds
    ]


def reference_objectives(settings: Any) -> list[dict[str, Any]]:
    """Each algorithm in the --reference folders scored like a trial: the mean over the study's envs and seeds of its
    finished runs' (normalised) scores. Incomplete when a run is missing, unfinished or has another budget."""
    from rl_selfdistill.benchmark.grid import RUNS_DIR

    entries = []
    for folder in settings.references:
        algos = sorted(path.name for path in (Path(folder) / RUNS_DIR).iterdir() if path.is_dir())
        found = [entry for algo in algos if (entry := _reference_entry(settings.plan, Path(folder), algo))["present"]]
        entries += found or [{"folder": str(folder), "algo": None, "objective": None, "runs": 0, "missing": []}]
    return entries


def _reference_entry(plan: Any, folder: Path, algo: str) -> dict[str, Any]:
    from rl_selfdistill.benchmark.grid import run_dir_for
    from rl_selfdistill.tune.trial import run_score

    values, missing, present, scores = [], [], 0, {}
    for env in plan.envs:
        for seed in plan.seeds:
            run_dir = run_dir_for(folder, algo, env.env_id, seed)
            present += run_dir.is_dir()
            info = rundir.read_run_info(run_dir) or {}
            score = None
            if info.get("status") == "finished" and info.get("n_timesteps") == env.n_timesteps:
                score = run_score(run_dir, env.env_id, env.n_timesteps)
            if score is None:
                missing.append(f"{env.env_id} seed{seed}")
            else:
                values.append(env.normalise(score))
                scores[run_key(env.env_id, seed)] = {"score": score, "run_dir": str(run_dir)}
    objective = sum(values) / len(values) if values and not missing else None
    entry = {"folder": str(folder), "algo": algo, "objective": objective, "runs": len(values), "missing": missing}
    return {**entry, "present": present, "scores": scores}


def run_key(env_id: str, seed: int) -> str:
    return f"{env_id} seed{seed}"


def trial_run_scores(study_dir: Path, number: int) -> dict[str, dict[str, Any]]:
    """The finished runs of one trial (its trial.json records): score and run folder, keyed by env and seed."""
    from rl_selfdistill.tune.trial import TRIAL_FILE, trial_dir

    path = trial_dir(study_dir, number) / TRIAL_FILE
    records = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    return {
        run_key(record["env_id"], record["seed"]): {"score": record["score"], "run_dir": str(study_dir / record["run_dir"])}
        for record in records
        if record.get("status") == "finished" and record.get("score") is not None
    }


def summary_data(study: Any, settings: Any) -> dict[str, Any]:
    from optuna.trial import TrialState

    rows = trial_rows(study)
    counts = {state.name: sum(row["state"] == state.name for row in rows) for state in TrialState}
    ranked = sorted((row for row in rows if row["state"] == "COMPLETE"), key=lambda row: row["value"], reverse=True)
    values, reason = importances(study)
    for row in ranked[:TOP_TRIALS]:
        row["runs"] = trial_run_scores(Path(settings.study_dir), row["number"])
    return {
        "study": settings.plan.study_name,
        "command": settings.command,
        "n_trials": settings.n_trials,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "counts": {name: count for name, count in counts.items() if count},
        "objective": objective_description(settings),
        "fixed": settings.space.fixed,
        "best": ranked[:TOP_TRIALS],
        "best_commands": best_commands(study, settings) if ranked else [],
        "importances": values,
        "importances_note": reason,
        "references": reference_objectives(settings),
        "expected_runs": len(settings.plan.envs) * len(settings.plan.seeds),
        "run_keys": [run_key(env.env_id, seed) for env in settings.plan.envs for seed in settings.plan.seeds],
        "study_dir": str(settings.study_dir),
        "trials": rows,
    }


def objective_description(settings: Any) -> str:
    from rl_selfdistill.benchmark.aggregate import score_fraction

    plan = settings.plan
    normalised = any(env.suite_env is not None for env in plan.envs)
    envs = ", ".join(f"{env.env_id} ({env.n_timesteps} steps)" for env in plan.envs)
    score = "suite-normalised score" if normalised else "score"
    episodes = f"{plan.eval_episodes} episode" + ("s" if plan.eval_episodes != 1 else "")
    fractions = {score_fraction(env.env_id) for env in plan.envs}
    window = " / ".join(
        "its whole run" if fraction == 1.0 else f"the final {fraction:.0%} of its budget" for fraction in sorted(fractions)
    )
    return (
        f"mean {score} over {envs} x seeds {', '.join(map(str, plan.seeds))}; a run's score is the mean evaluation "
        f"return over {window} ({episodes} every {plan.eval_freq} steps)"
    )


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# Study {data['study']}", "", f"Command: `{data['command']}`", "", f"Objective: {data['objective']}.", ""]
    counts = ", ".join(f"{count} {name.lower()}" for name, count in data["counts"].items())
    lines += [f"Trials: {data['finished']} of {data['n_trials']} finished (complete + pruned); {counts}.", ""]
    if data["fixed"]:
        lines += ["Fixed in every trial: " + ", ".join(f"`{k}={v}`" for k, v in data["fixed"].items()), ""]
    lines += ["## Best trials", ""]
    if data["best"]:
        keys = sorted({key for row in data["best"] for key in row["params"]})
        lines += ["| rank | trial | objective | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
        for rank, row in enumerate(data["best"], start=1):
            cells = [_cell(row["params"].get(key, "")) for key in keys]
            lines.append(f"| {rank} | {row['number']} | {row['value']:.4g} | " + " | ".join(cells) + " |")
        lines += ["", "Reproduce the best trial (each run of it):", "", "```", *data["best_commands"], "```", ""]
    else:
        lines += ["No complete trial yet.", ""]
    lines += _reference_lines(data)
    lines += _run_score_lines(data)
    lines += ["## Objective vs trial", "", f"![objective vs trial]({OBJECTIVE_PNG})", "", "## Parameter importances", ""]
    if data["importances"]:
        lines += ["| parameter | importance (Optuna's get_param_importances) |", "|---|---|"]
        lines += [f"| {key} | {value:.3f} |" for key, value in data["importances"].items()]
    else:
        lines.append(f"Not computed: {data['importances_note']}.")
    return "\n".join(lines) + "\n"


def _reference_lines(data: dict[str, Any]) -> list[str]:
    if not data["references"]:
        return []
    lines = ["## References (--reference: scored like a trial, same envs, seeds and budgets)", ""]
    lines += ["| algo | folder | objective | runs |", "|---|---|---|---|"]
    for entry in data["references"]:
        if entry["algo"] is None:
            lines.append(f"| - | {entry['folder']} | no runs on these envs and seeds | 0 |")
            continue
        objective = f"{entry['objective']:.4g}" if entry["objective"] is not None else "incomplete"
        runs = f"{entry['runs']} / {data['expected_runs']}"
        lines.append(f"| {entry['algo']} | {entry['folder']} | {objective} | {runs} |")
    missing = [f"{entry['algo']}: {', '.join(entry['missing'])}" for entry in data["references"] if entry["missing"]]
    if missing:
        lines += ["", "Not finished at this budget (no objective until they are): " + "; ".join(missing) + "."]
    return [*lines, ""]


def _run_score_lines(data: dict[str, Any]) -> list[str]:
    """One row per best trial and per reference: each run's raw score, linked to its folder (relative to the study's
    folder, where summary.md lies); blank where a run has not finished."""
    rows = [(f"trial {row['number']}", row["value"], row.get("runs", {})) for row in data["best"]]
    rows += [(entry["algo"], entry["objective"], entry["scores"]) for entry in data["references"] if entry["algo"]]
    if not rows:
        return []
    lines = ["## Run scores (raw; the objective normalises and averages them)", ""]
    lines += ["| | objective | " + " | ".join(data["run_keys"]) + " |", "|---" * (2 + len(data["run_keys"])) + "|"]
    for label, objective, scores in rows:
        cells = [_linked_score(scores.get(key), data["study_dir"]) for key in data["run_keys"]]
        value = f"{objective:.4g}" if objective is not None else "incomplete"
        lines.append(f"| {label} | {value} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _linked_score(entry: dict[str, Any] | None, study_dir: str) -> str:
    if entry is None:
        return ""
    return f"[{entry['score']:.4g}]({Path(os.path.relpath(entry['run_dir'], study_dir)).as_posix()})"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_objective(rows: list[dict[str, Any]], path: Path, references: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_selfdistill.algos import registry

    complete = [(row["number"], row["value"]) for row in rows if row["state"] == "COMPLETE"]
    pruned = [(row["number"], row["last_intermediate"]) for row in rows if row["state"] == "PRUNED" and row["n_intermediate"]]
    figure, axes = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    if complete:
        axes.scatter(*zip(*complete), label="complete", color="#1f77b4")
        best, running = [], float("-inf")
        for number, value in sorted(complete):
            running = max(running, value)
            best.append((number, running))
        axes.step(*zip(*best), where="post", label="best so far", color="#ff7f0e")
    if pruned:
        axes.scatter(*zip(*pruned), marker="x", label="pruned (last reported value)", color="#7f7f7f")
    scored = [entry for entry in references or [] if entry["objective"] is not None]
    for entry in scored:  # each in its report colour (ppo's blue in the benchmark figures), grey for an unknown one
        color = registry.colour(entry["algo"]) or "#7f7f7f"
        axes.axhline(entry["objective"], linestyle="--", linewidth=1, color=color, label=f"{entry['algo']} (reference)")
    axes.set_xlabel("trial")
    axes.set_ylabel("objective")
    if complete or pruned or scored:
        axes.legend(fontsize="small")
    temp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    os.replace(temp, path)


def write_summary(study: Any, settings: Any) -> Path:
    """Write summary.json, summary.md and objective.png into the study folder; returns summary.md."""
    data = summary_data(study, settings)
    folder = Path(settings.study_dir)
    rundir.atomic_write_text(folder / SUMMARY_JSON, json.dumps(data, indent=2, default=str) + "\n")
    plot_objective(data["trials"], folder / OBJECTIVE_PNG, data["references"])
    rundir.atomic_write_text(folder / SUMMARY_MD, markdown(data))
    return folder / SUMMARY_MD
