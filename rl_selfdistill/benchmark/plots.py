"""PNG figures for the report, drawn with matplotlib and rliable's plot helpers."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # report generation runs headless (clusters, CI)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402
from rliable import plot_utils  # noqa: E402

from rl_selfdistill.algos import registry  # noqa: E402
from rl_selfdistill.benchmark.aggregate import METRIC_NAMES, Curve  # noqa: E402

# Algorithms without a registered colour take these, in order, so that every figure still tells them apart.
_FALLBACK = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def colours_for(algos: list[str]) -> dict[str, str]:
    """The registry's colour of each algorithm (the same in every figure), else the next fallback colour."""
    taken = {registry.colour(name) for name in registry.names()}
    # An unregistered algorithm must not look like a registered one in the same figure.
    free = [colour for colour in _FALLBACK if colour not in taken] or list(_FALLBACK)
    extra = iter(free * (1 + len(algos)))
    return {algo: registry.colour(algo) or next(extra) for algo in algos}


def plot_learning_curves(curves: dict[str, dict[str, Curve]], path: Path) -> Path:
    """One panel per env: IQM over seeds (solid) with its 95% CI band, mean over seeds (dashed)."""
    envs = sorted(curves)
    n_cols = min(3, len(envs))
    n_rows = math.ceil(len(envs) / n_cols)
    # Constrained layout keeps a panel's title clear of the x label of the panel above it.
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5 * n_cols, 3.6 * n_rows), squeeze=False, layout="constrained")
    colours = colours_for(sorted({algo for per_algo in curves.values() for algo in per_algo}))
    for ax, env in zip(axes.ravel(), envs):
        for algo, curve in sorted(curves[env].items()):
            _draw_curve(ax, curve, f"{algo} (n={curve.n_runs})", colours[algo])
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        # 300000 written out collides with its neighbours; 300k does not.
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes.ravel()[len(envs) :]:
        ax.set_visible(False)
    title = "Learning curves: IQM over seeds with 95% bootstrap CI (solid, band), mean (dashed)"
    fig.suptitle(title, fontsize="medium")
    return _save(fig, path)


def _draw_curve(ax: plt.Axes, curve: Curve, label: str, colour: str) -> None:
    ax.plot(curve.timesteps, curve.iqm, color=colour, label=label)
    ax.fill_between(curve.timesteps, curve.low, curve.high, color=colour, alpha=0.2, linewidth=0)
    ax.plot(curve.timesteps, curve.mean, color=colour, linestyle="--", linewidth=0.9)


def plot_aggregate_intervals(estimates: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """rliable's interval plot: point estimate and 95% CI of each aggregate metric per algo."""
    algos = sorted(estimates)
    points = {algo: np.array([estimates[algo][name]["point"] for name in METRIC_NAMES]) for algo in algos}
    bounds = ("low", "high")
    intervals = {algo: np.array([[estimates[algo][m][b] for m in METRIC_NAMES] for b in bounds]) for algo in algos}
    fig, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=list(METRIC_NAMES),
        algorithms=algos,
        colors=colours_for(algos),
        xlabel="Normalized score",
        row_height=0.6,
        xlabel_y_coordinate=-0.25 if len(algos) < 3 else -0.1,
    )
    return _save(fig, path)


def plot_improvement(improvement: dict[str, dict[str, float]], path: Path) -> Path:
    """rliable's probability-of-improvement plot, one bar per (SD algo, base) pair."""
    points = {pair: value["point"] for pair, value in improvement.items()}
    intervals = {pair: np.array([value["low"], value["high"]]) for pair, value in improvement.items()}
    pair_colours = [colours_for([pair.split(",")[0] for pair in improvement])[pair.split(",")[0]] for pair in improvement]
    fig, ax = plt.subplots(figsize=(5, 1.2 + 0.8 * len(improvement)))
    plot_utils.plot_probability_of_improvement(points, intervals, ax=ax, colors=pair_colours, xticks=[0, 0.25, 0.5, 0.75, 1])
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0.0, 1.0)
    return _save(fig, path)


def plot_performance_profiles(
    profiles: dict[str, np.ndarray], profile_cis: dict[str, np.ndarray], taus: np.ndarray, path: Path
) -> Path:
    """Fraction of runs whose normalised score exceeds tau, with 95% CI bands."""
    algos = sorted(profiles)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        {algo: profiles[algo] for algo in algos},
        taus,
        performance_profile_cis={algo: profile_cis[algo] for algo in algos},
        colors=colours_for(algos),
        ax=ax,
        xlabel=r"Normalized score ($\tau$)",
        labelsize="large",
        ticklabelsize="medium",
    )
    ax.legend(loc="upper right")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
