"""The study summary: STUDY_DIR/summary.md, summary.json and objective.png, rewritten after every trial.

- the best trials as a table with their parameters;
- objective vs trial number (complete trials, pruned trials at their last reported value, best so far);
- Optuna's parameter importances (`optuna.importance.get_param_importances`), from 2 complete trials on;
- the exact `rl-selfdistill train` commands that reproduce the best trial, one per env and seed.
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
            return dict(optuna.importance.get_param_importances(study)), None
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


def summary_data(study: Any, settings: Any) -> dict[str, Any]:
    from optuna.trial import TrialState

    rows = trial_rows(study)
    counts = {state.name: sum(row["state"] == state.name for row in rows) for state in TrialState}
    ranked = sorted((row for row in rows if row["state"] == "COMPLETE"), key=lambda row: row["value"], reverse=True)
    values, reason = importances(study)
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
    lines += ["## Objective vs trial", "", f"![objective vs trial]({OBJECTIVE_PNG})", "", "## Parameter importances", ""]
    if data["importances"]:
        lines += ["| parameter | importance (Optuna's get_param_importances) |", "|---|---|"]
        lines += [f"| {key} | {value:.3f} |" for key, value in data["importances"].items()]
    else:
        lines.append(f"Not computed: {data['importances_note']}.")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_objective(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    axes.set_xlabel("trial")
    axes.set_ylabel("objective")
    if complete or pruned:
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
    plot_objective(data["trials"], folder / OBJECTIVE_PNG)
    rundir.atomic_write_text(folder / SUMMARY_MD, markdown(data))
    return folder / SUMMARY_MD
