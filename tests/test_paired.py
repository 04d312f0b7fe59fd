"""The paired statistic: seeds as pairs, median difference with a bootstrap CI, sign-flip permutation p-value."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rl_selfdistill.benchmark import paired
from rl_selfdistill.benchmark.aggregate import Reference
from rl_selfdistill.benchmark.report import write_report


def test_exact_p_value_by_hand():
    # 8 sign patterns of (1, 2, 3); |mean| >= 2 only for all-plus and all-minus: p = 2/8
    assert paired.sign_flip_p_value(np.array([1.0, 2.0, 3.0])) == (0.25, True)
    # (1, -1): every pattern has |mean| >= 0: p = 1
    assert paired.sign_flip_p_value(np.array([1.0, -1.0])) == (1.0, True)
    # Five seeds all in the same direction: the smallest p five pairs can give, 2/32
    assert paired.sign_flip_p_value(np.array([0.5, 1.0, 2.0, 3.0, 9.0]))[0] == pytest.approx(0.0625)


@pytest.mark.parametrize("n", [4, 7, 10])
def test_exact_p_value_matches_scipy(n):
    diffs = np.random.default_rng(n).normal(0.4, 1.0, size=n)
    expected = stats.permutation_test(
        (diffs,), np.mean, permutation_type="samples", alternative="two-sided", n_resamples=np.inf
    ).pvalue
    p_value, exact = paired.sign_flip_p_value(diffs)
    assert exact and p_value == pytest.approx(expected)


def test_monte_carlo_p_value_beyond_the_exact_limit_is_close_to_the_exact_one():
    diffs = np.random.default_rng(3).normal(0.3, 1.0, size=paired.EXACT_MAX_PAIRS + 2)
    exact = stats.permutation_test(
        (diffs,), np.mean, permutation_type="samples", alternative="two-sided", n_resamples=np.inf
    ).pvalue
    p_value, is_exact = paired.sign_flip_p_value(diffs, reps=20_000, seed=1)
    assert not is_exact and p_value == pytest.approx(exact, abs=0.01)
    assert paired.sign_flip_p_value(diffs, reps=20_000, seed=1)[0] == p_value  # seeded: reproducible


def test_median_bootstrap_ci_by_hand_and_its_properties():
    diffs = np.array([-1.0, 2.0, 3.0, 4.0, 10.0])
    low, high = paired.median_bootstrap_ci(diffs, reps=5000, seed=7)
    # The same resampling written out: medians of 5000 resamples of the pairs, their 2.5% and 97.5% percentiles
    rng = np.random.default_rng(7)
    medians = np.median(diffs[rng.integers(0, 5, size=(5000, 5))], axis=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(medians, [2.5, 97.5])))
    assert low <= np.median(diffs) <= high and -1.0 <= low and high <= 10.0
    assert paired.median_bootstrap_ci(diffs, reps=5000, seed=7) == (low, high)
    assert paired.median_bootstrap_ci(np.full(4, 2.5)) == (2.5, 2.5)  # no spread, no width


def test_the_interval_narrows_with_more_pairs_and_covers_the_true_shift():
    rng = np.random.default_rng(0)
    few = paired.median_bootstrap_ci(rng.normal(5.0, 1.0, size=5), seed=0)
    many = paired.median_bootstrap_ci(rng.normal(5.0, 1.0, size=200), seed=0)
    assert many[1] - many[0] < few[1] - few[0]
    assert many[0] < 5.0 < many[1]


def run(algo, env_id, seed, score):
    return SimpleNamespace(algo=algo, env_id=env_id, seed=seed, score=score)


def test_runs_are_paired_by_seed_and_unpaired_seeds_are_left_out():
    results = [
        run("sd_ppo", "EnvA-v0", 0, 12.0),
        run("ppo", "EnvA-v0", 0, 10.0),
        run("sd_ppo", "EnvA-v0", 1, 9.0),
        run("ppo", "EnvA-v0", 1, 10.0),
        run("sd_ppo", "EnvA-v0", 2, 30.0),  # no base run with seed 2
        run("ppo", "EnvA-v0", 3, 10.0),  # no SD run with seed 3
        run("sd_ppo", "EnvA-v0", 4, None),  # unscored
        run("ppo", "EnvA-v0", 4, 10.0),
        run("sd_ppo", "EnvB-v0", 0, 1.0),  # an env the base never ran
    ]
    (result,) = paired.paired_statistics(results, [("sd_ppo", "ppo")], reps=500)
    assert (result.env_id, result.algo, result.base, result.seeds) == ("EnvA-v0", "sd_ppo", "ppo", [0, 1])
    assert result.differences == [2.0, -1.0] and result.median == 0.5 and result.mean == 0.5
    assert result.p_value == 1.0 and result.exact  # |+-2 +-1| / 2 >= 0.5 for every pattern


def write_run(out, algo, env_id, seed, final_return, n_timesteps=1000, wall_clock_s=1.0, cpu_time_s=None, resumes=()):
    run_dir = out / "runs" / algo / env_id / f"seed{seed}"
    run_dir.mkdir(parents=True)
    steps = np.linspace(100, n_timesteps, 10).astype(int)
    rewards = np.linspace(0.0, final_return, 10)
    frame = {"timesteps": steps, "mean_reward": rewards, "std_reward": 0.0, "mean_ep_length": 10.0, "n_episodes": 5}
    pd.DataFrame(frame).to_csv(run_dir / "eval.csv", index=False)
    info = {"status": "finished", "algo": algo, "env_id": env_id, "seed": seed, "n_timesteps": n_timesteps}
    info |= {"num_timesteps_done": n_timesteps, "wall_clock_s": wall_clock_s}
    if cpu_time_s is not None:
        info["cpu_time_s"] = cpu_time_s
    if resumes:
        info["resumes"] = list(resumes)
    (run_dir / "run.json").write_text(json.dumps(info))


def test_report_shows_the_paired_statistic_beside_rliable(tmp_path):
    out = tmp_path / "bench"
    for seed in range(6):  # SD ahead by 5 + seed on every seed: all six differences positive
        write_run(out, "ppo", "EnvA-v0", seed, 100.0 + 10 * seed)
        write_run(out, "sd_ppo", "EnvA-v0", seed, 105.0 + 11 * seed)
    files = write_report(out, references={"EnvA-v0": Reference(0.0, 200.0)}, reps=200)
    summary = json.loads(files.summary.read_text())
    (row,) = summary["paired"]["per_env"]
    assert (row["algo"], row["base"], row["n_pairs"], row["exact"]) == ("sd_ppo", "ppo", 6, True)
    # Scores average the evaluations at 900 and 1000 steps: (8/9 + 1) / 2 of the final return
    expected = [(8 / 9 + 1) / 2 * (5.0 + seed) for seed in range(6)]
    assert row["differences"] == pytest.approx(expected)
    assert row["p_value"] == pytest.approx(2 / 2**6)
    assert row["low"] <= row["median"] <= row["high"] and row["low"] > 0
    assert "probability_of_improvement" in summary and summary["paired"]["definition"] == paired.DEFINITION
    markdown = files.markdown.read_text()
    assert "## Paired by seed" in markdown and "| EnvA-v0 | sd_ppo | ppo | 6 |" in markdown and "0.031" in markdown


def test_report_gives_the_cost_of_each_seed_pair(tmp_path):
    out = tmp_path / "bench"
    for seed, (wall, cpu) in enumerate([(10.0, 8.0), (20.0, 9.0), (30.0, 10.0)]):
        write_run(out, "ppo", "EnvA-v0", seed, 100.0, wall_clock_s=wall, cpu_time_s=cpu)
        write_run(out, "sd_ppo", "EnvA-v0", seed, 110.0, wall_clock_s=wall * (1.5 + seed), cpu_time_s=cpu * 1.2)
    write_run(out, "ppo", "EnvB-v0", 0, 100.0, wall_clock_s=10.0)  # an older run.json without CPU time
    write_run(out, "sd_ppo", "EnvB-v0", 0, 100.0, wall_clock_s=12.0, cpu_time_s=5.0)
    write_run(out, "ppo", "EnvC-v0", 0, 100.0, wall_clock_s=10.0)  # CPU time in one of two pairs only
    write_run(out, "sd_ppo", "EnvC-v0", 0, 100.0, wall_clock_s=10.0)
    write_run(out, "ppo", "EnvC-v0", 1, 100.0, wall_clock_s=10.0, cpu_time_s=4.0)
    write_run(out, "sd_ppo", "EnvC-v0", 1, 100.0, wall_clock_s=20.0, cpu_time_s=5.0)
    refs = {env: Reference(0.0, 200.0) for env in ("EnvA-v0", "EnvB-v0", "EnvC-v0")}
    summary = json.loads(write_report(out, references=refs, reps=100).summary.read_text())
    by_env = {row["env_id"]: row for row in summary["cost"]["per_env"]}
    assert by_env["EnvA-v0"]["wall_clock_ratios"] == pytest.approx([1.5, 2.5, 3.5])
    assert by_env["EnvA-v0"]["wall_clock"] == pytest.approx({"median": 2.5, "min": 1.5, "max": 3.5})
    assert by_env["EnvA-v0"]["cpu_time"] == pytest.approx({"median": 1.2, "min": 1.2, "max": 1.2})
    assert by_env["EnvB-v0"]["cpu_time"] is None and by_env["EnvB-v0"]["wall_clock"]["median"] == pytest.approx(1.2)
    assert (by_env["EnvC-v0"]["seeds"], by_env["EnvC-v0"]["cpu_time_seeds"]) == ([0, 1], [1])
    assert by_env["EnvC-v0"]["cpu_time_ratios"] == pytest.approx([1.25])
    markdown = (out / "report.md").read_text()
    assert "| EnvA-v0 | sd_ppo | ppo | 3 | 2.50x [1.50, 3.50] | 1.20x [1.20, 1.20] |" in markdown
    assert "| EnvB-v0 | sd_ppo | ppo | 1 | 1.20x [1.20, 1.20] | not recorded |" in markdown
    assert "| EnvC-v0 | sd_ppo | ppo | 2 | 1.50x [1.00, 2.00] | 1.25x [1.25, 1.25] (1 pair) |" in markdown


def test_a_pair_resumed_with_other_threads_is_left_out_of_the_cost(tmp_path):
    """A run resumed with another torch thread count mixes two speeds: its pair leaves the ratios, and says so."""
    out = tmp_path / "bench"
    threads_changed = [{"step": 500, "at": "2026-12-07T17:36:35+00:00", "changes": {"num_threads": 1}}]
    same_settings = [{"step": 300, "at": "2026-12-07T12:00:00+00:00", "changes": {}}]
    write_run(out, "ppo", "EnvA-v0", 0, 100.0, wall_clock_s=20.0, cpu_time_s=30.0, resumes=threads_changed)
    write_run(out, "sd_ppo", "EnvA-v0", 0, 100.0, wall_clock_s=10.0, cpu_time_s=10.0)
    write_run(out, "ppo", "EnvA-v0", 1, 100.0, wall_clock_s=10.0, cpu_time_s=10.0, resumes=same_settings)
    write_run(out, "sd_ppo", "EnvA-v0", 1, 100.0, wall_clock_s=11.0, cpu_time_s=12.0)
    write_run(out, "ppo", "EnvB-v0", 0, 100.0, wall_clock_s=10.0, cpu_time_s=10.0)
    write_run(out, "sd_ppo", "EnvB-v0", 0, 100.0, wall_clock_s=11.0, cpu_time_s=12.0, resumes=threads_changed)
    refs = {env: Reference(0.0, 200.0) for env in ("EnvA-v0", "EnvB-v0")}
    summary = json.loads(write_report(out, references=refs, reps=100).summary.read_text())
    by_env = {row["env_id"]: row for row in summary["cost"]["per_env"]}
    assert (by_env["EnvA-v0"]["seeds"], by_env["EnvA-v0"]["mixed_speed_seeds"]) == ([1], [0])
    assert by_env["EnvA-v0"]["cpu_time_ratios"] == pytest.approx([1.2])
    assert (by_env["EnvB-v0"]["seeds"], by_env["EnvB-v0"]["cpu_time"]) == ([], None)
    markdown = (out / "report.md").read_text()
    left_out = "+ 1 left out (threads or device changed)"
    assert f"| EnvA-v0 | sd_ppo | ppo | 1 {left_out} | 1.10x [1.10, 1.10] | 1.20x [1.20, 1.20] |" in markdown
    assert f"| EnvB-v0 | sd_ppo | ppo | 0 {left_out} | not recorded | not recorded |" in markdown
