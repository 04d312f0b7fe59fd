"""Aggregation and report on synthetic scores and synthetic run directories (no training)."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rl_selfdistill.benchmark import aggregate
from rl_selfdistill.benchmark.aggregate import Reference
from rl_selfdistill.benchmark.grid import EnvBudget, Manifest, load_manifest, save_manifest
from rl_selfdistill.benchmark.report import write_report
from rl_selfdistill.cli import main

# 4 runs x 3 envs. Sorted, the 12 values are 0.0 0.1 0.2 | 0.4 0.5 0.5 0.5 0.5 0.6 | 0.9 1.5 3.0.
HAND_SCORES = np.array(
    [
        [0.0, 0.4, 0.5],
        [0.2, 0.6, 0.5],
        [0.9, 1.5, 0.5],
        [0.1, 3.0, 0.5],
    ]
)


def test_aggregate_metrics_match_hand_computed_values():
    iqm, mean, median, gap = aggregate.aggregate_metrics(HAND_SCORES)
    assert iqm == pytest.approx(3.0 / 6)  # middle six values: 0.4 0.5 0.5 0.5 0.5 0.6
    assert mean == pytest.approx(8.7 / 12)
    assert median == pytest.approx(0.5)  # per-env means 0.3, 1.375, 0.5
    assert gap == pytest.approx(1 - 6.2 / 12)  # scores clipped at 1 sum to 6.2


def test_bootstrap_ci_contains_the_true_value():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.6, 0.2, size=(40, 3))  # symmetric: true IQM = true mean = median = 0.6
    estimates = aggregate.interval_estimates({"algo": scores}, reps=1000)["algo"]
    for name in ("IQM", "Mean", "Median"):
        value = estimates[name]
        assert value["low"] < 0.6 < value["high"], (name, value)
        assert value["low"] <= value["point"] <= value["high"]
        assert value["high"] - value["low"] < 0.2  # 120 samples pin the mean down to about +-0.04


def test_bootstrap_intervals_are_reproducible_and_leave_the_global_rng_alone():
    rng = np.random.default_rng(2)
    matrices = {"ppo": rng.normal(0.5, 0.3, size=(5, 2)), "sd_ppo": rng.normal(0.6, 0.3, size=(5, 2))}
    taus = aggregate.profile_thresholds(matrices)
    evals = [pd.DataFrame({"timesteps": [1, 2, 3], "mean_reward": row}) for row in rng.random((5, 3))]

    def every_interval(seed=0):
        return (
            aggregate.interval_estimates(matrices, reps=200, seed=seed),
            aggregate.probability_of_improvement(matrices, [("sd_ppo", "ppo")], reps=200, seed=seed),
            aggregate.performance_profiles(matrices, taus, reps=200, seed=seed)[1]["ppo"].tolist(),
            aggregate.learning_curve(evals, reps=200, seed=seed).low.tolist(),
        )

    np.random.seed(123)
    expected_next_draw = np.random.random()
    np.random.seed(123)
    first, second = every_interval(), every_interval()
    assert first == second
    assert np.random.random() == expected_next_draw  # the caller's global NumPy stream is where it was
    # Another seed gives another bootstrap, so the equality above is not vacuous.
    other = every_interval(seed=1)
    assert all(a != b for a, b in zip(first, other))


def test_probability_of_improvement_of_identical_algorithms_is_one_half():
    rng = np.random.default_rng(1)
    scores = rng.normal(0.5, 0.2, size=(10, 2))
    same = aggregate.probability_of_improvement({"a": scores, "b": scores.copy()}, [("a", "b")], reps=500)
    assert same["a,b"]["point"] == pytest.approx(0.5)
    twins = aggregate.probability_of_improvement(
        {"a": rng.normal(0.5, 0.2, size=(30, 2)), "b": rng.normal(0.5, 0.2, size=(30, 2))}, [("a", "b")], reps=500
    )["a,b"]
    assert 0.35 < twins["point"] < 0.65
    assert twins["low"] < 0.5 < twins["high"]


def test_probability_of_improvement_has_the_right_direction():
    better, worse = np.full((5, 2), 1.0) + np.arange(5)[:, None] * 0.01, np.full((5, 2), 0.0)
    result = aggregate.probability_of_improvement({"sd_ppo": better, "ppo": worse}, [("sd_ppo", "ppo")], reps=200)
    assert result["sd_ppo,ppo"]["point"] == pytest.approx(1.0)


def test_improvement_pairs_match_each_sd_algo_with_its_base():
    assert aggregate.improvement_pairs(["dqn", "ppo", "sd_dqn", "sd_ppo"]) == [("sd_dqn", "dqn"), ("sd_ppo", "ppo")]
    assert aggregate.improvement_pairs(["ppo", "sd_dqn"]) == []


def test_final_window_score_averages_the_last_tenth():
    evals = pd.DataFrame({"timesteps": np.arange(0, 1001, 100), "mean_reward": np.arange(11.0)})
    assert aggregate.final_window_score(evals, 1000) == pytest.approx((9.0 + 10.0) / 2)  # steps 900 and 1000
    assert aggregate.final_window_score(evals[evals.timesteps < 800], 1000) is None


def test_evaluations_past_the_budget_are_not_scored():
    """PPO finishes its last rollout, so a run of 1000 steps with 512-step rollouts trains 1024 and may evaluate at
    1020: that evaluation is not in the window, or runs with other rollout sizes would be scored on other windows."""
    evals = pd.DataFrame({"timesteps": [900, 1000, 1020], "mean_reward": [1.0, 2.0, 100.0]})
    assert aggregate.final_window_score(evals, 1000) == pytest.approx(1.5)
    assert aggregate.final_window_score(evals, 1000, fraction=1.0) == pytest.approx(1.5)


def test_reference_normalisation():
    assert Reference(random_score=20.0, reference_score=500.0).normalise(260.0) == pytest.approx(0.5)


def write_fake_run(out, algo, env_id, seed, rewards, n_timesteps=1000, status="finished"):
    """A run directory as the training code writes it (run.json + eval.csv), with chosen returns."""
    run_dir = out / "runs" / algo / env_id / f"seed{seed}"
    run_dir.mkdir(parents=True)
    steps = np.linspace(n_timesteps / len(rewards), n_timesteps, len(rewards)).astype(int)
    pd.DataFrame(
        {"timesteps": steps, "mean_reward": rewards, "std_reward": 0.0, "mean_ep_length": 10.0, "n_episodes": 5}
    ).to_csv(run_dir / "eval.csv", index=False)
    info = {
        "status": status,
        "algo": algo,
        "env_id": env_id,
        "seed": seed,
        "n_timesteps": n_timesteps,
        "num_timesteps_done": n_timesteps if status == "finished" else n_timesteps // 2,
        "wall_clock_s": 12.5,
        "git_commit": "abc123",
        "versions": {"torch": "2.x"},
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


@pytest.fixture
def fake_benchmark(tmp_path):
    """2 algos x 2 envs x 3 seeds; sd_ppo seed 2 on EnvB is unfinished and ppo seed 1 on EnvB never started."""
    out = tmp_path / "bench"
    envs = [EnvBudget("EnvA-v0", 1000), EnvBudget("EnvB-v0", 1000)]
    manifest = Manifest("test-bench", None, envs, ["ppo", "sd_ppo"], [0, 1, 2], {}, "abc123", "now")
    manifest.invocations.append(
        {"command": "rl-selfdistill benchmark --envs EnvA-v0 EnvB-v0", "backend": "local", "failures": []}
    )
    manifest.invocations.append(
        {
            "command": "rl-selfdistill benchmark --envs EnvB-v0",
            "failures": [{"run": "ppo/EnvB-v0/seed1", "error": "Boom: bad"}],
        }
    )
    save_manifest(out, manifest)
    for env in envs:
        for seed in range(3):
            for algo, level in (("ppo", 100.0), ("sd_ppo", 150.0)):
                if (algo, env.env_id, seed) == ("ppo", "EnvB-v0", 1):
                    continue
                status = "running" if (algo, env.env_id, seed) == ("sd_ppo", "EnvB-v0", 2) else "finished"
                rewards = np.linspace(0.0, level + 10 * seed, 10)
                write_fake_run(out, algo, env.env_id, seed, rewards, status=status)
    return out


REFERENCES = {"EnvA-v0": Reference(0.0, 200.0), "EnvB-v0": Reference(0.0, 200.0)}


def test_unscored_runs_are_listed_not_dropped(fake_benchmark):
    results = aggregate.collect_runs(fake_benchmark, manifest_specs(fake_benchmark))
    problems = {r.label: r.problem for r in results if r.problem}
    assert problems == {"ppo/EnvB-v0/seed1": "never started", "sd_ppo/EnvB-v0/seed2": "unfinished (500/1000 steps)"}
    matrices = aggregate.score_matrices(results, REFERENCES)
    assert {algo: m.shape for algo, m in matrices.scores.items()} == {"ppo": (2, 2), "sd_ppo": (2, 2)}
    excluded = dict(matrices.excluded)
    assert set(excluded) == {"ppo/EnvB-v0/seed1", "sd_ppo/EnvB-v0/seed2", "ppo/EnvA-v0/seed2", "sd_ppo/EnvA-v0/seed2"}
    assert "beyond the 2 seeds" in excluded["ppo/EnvA-v0/seed2"]


def manifest_specs(out):
    return load_manifest(out).specs()


def test_report_writes_summary_markdown_and_figures(fake_benchmark):
    files = write_report(fake_benchmark, references=REFERENCES, reps=300)
    summary = json.loads(files.summary.read_text())
    assert summary["benchmark_id"] == "test-bench"
    # The final-10% window holds the evaluations at steps 900 and 1000: 8/9 and all of level + 10 * seed.
    ppo_a = next(row for row in summary["per_env"] if row["env_id"] == "EnvA-v0" and row["algo"] == "ppo")
    assert ppo_a["scores"] == pytest.approx([(8 / 9 + 1) / 2 * level for level in (100.0, 110.0, 120.0)])
    assert summary["aggregate"]["sd_ppo"]["Mean"]["point"] > summary["aggregate"]["ppo"]["Mean"]["point"]
    assert summary["probability_of_improvement"]["sd_ppo,ppo"]["point"] == pytest.approx(1.0)
    markdown = files.markdown.read_text()
    assert "`ppo/EnvB-v0/seed1`: failed: Boom: bad" in markdown  # the recorded failure, not "never started"
    for expected in ("rl-selfdistill benchmark --envs EnvA-v0 EnvB-v0", "unfinished", "| IQM |", "abc123"):
        assert expected in markdown
    assert set(files.figures) == {"learning_curves", "aggregate", "probability_of_improvement", "performance_profiles"}
    for path in files.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({path.relative_to(fake_benchmark)})" in markdown


def second_benchmark(tmp_path, env_id="EnvC-v0", seeds=(0, 1)):
    """Another folder, as if run in another session, with an SD override of its own."""
    out = tmp_path / f"bench-{env_id}"
    manifest = Manifest("second-bench", None, [EnvBudget(env_id, 1000)], ["ppo", "sd_ppo"], list(seeds), {}, "def456", "now")
    manifest.sd_params = {"distill_coef": 0.1}
    manifest.invocations.append({"command": f"rl-selfdistill benchmark --envs {env_id} -o {out}", "failures": []})
    save_manifest(out, manifest)
    for seed in seeds:
        for algo, level in (("ppo", 100.0), ("sd_ppo", 50.0)):
            write_fake_run(out, algo, env_id, seed, np.full(10, level + seed))
    return out


def test_a_report_pools_several_benchmark_folders(fake_benchmark, tmp_path):
    second = second_benchmark(tmp_path)
    references = {**REFERENCES, "EnvC-v0": Reference(0.0, 200.0)}
    report_dir = tmp_path / "pooled"
    files = write_report([fake_benchmark, second], references=references, reps=300, report_dir=report_dir)
    summary = json.loads(files.summary.read_text())
    assert summary["benchmark_id"] == "test-bench + second-bench"
    assert summary["comparisons"][0]["envs"] == ["EnvA-v0", "EnvB-v0", "EnvC-v0"]
    assert len(summary["runs"]) == 12 + 4
    assert all((report_dir / run["run_dir"]).is_dir() for run in summary["runs"] if run["status"] != "missing")
    commands = [invocation["command"] for invocation in summary["invocations"]]
    assert commands[-1] == f"rl-selfdistill benchmark --envs EnvC-v0 -o {second}" and len(commands) == 3
    assert [bench["sd_params"] for bench in summary["benchmarks"]] == [{}, {"distill_coef": 0.1}]
    # EnvC's scores enter the pooled aggregate: sd_ppo scores 0.25 there against ppo's 0.5, so P(sd_ppo > ppo) drops
    # from 1 (EnvA and EnvB) to 2/3 (averaged over the three envs).
    assert summary["probability_of_improvement"]["sd_ppo,ppo"]["point"] == pytest.approx(2 / 3)
    markdown = files.markdown.read_text()
    assert "pools the runs of several benchmark folders" in markdown and "`distill_coef: 0.1`" in markdown
    assert not (fake_benchmark / "report.md").exists() and not (second / "report.md").exists()
    for path in files.figures.values():
        assert path.parent == report_dir / "figures"


def test_a_cell_found_in_two_folders_is_refused(fake_benchmark, tmp_path, capsys):
    overlapping = second_benchmark(tmp_path, env_id="EnvA-v0", seeds=(0,))
    assert main(["report", str(fake_benchmark), str(overlapping), "-o", str(tmp_path / "pooled"), "--reps", "100"]) == 2
    assert "ppo/EnvA-v0/seed0 is in both" in capsys.readouterr().err
    assert not (tmp_path / "pooled").exists()


def test_exclude_leaves_superseded_runs_out_and_lists_them(fake_benchmark, tmp_path, capsys):
    # A rerun of EnvA in another folder supersedes fake_benchmark's EnvA runs: pooled, it counts in their place.
    rerun = second_benchmark(tmp_path, env_id="EnvA-v0", seeds=(0, 1, 2))
    superseded = fake_benchmark / "runs" / "ppo" / "EnvA-v0"
    report_dir = tmp_path / "pooled"
    command = ["report", str(fake_benchmark), str(rerun), "-o", str(report_dir), "--reps", "100"]
    command += ["--exclude", str(superseded), str(fake_benchmark / "runs" / "sd_ppo" / "EnvA-v0")]
    assert main(command) == 0
    summary = json.loads((report_dir / "summary.json").read_text())
    env_a = {row["algo"]: row["scores"] for row in summary["per_env"] if row["env_id"] == "EnvA-v0"}
    assert env_a == {"ppo": pytest.approx([100.0, 101.0, 102.0]), "sd_ppo": pytest.approx([50.0, 51.0, 52.0])}
    left_out = {item["what"]: item["reason"] for item in summary["excluded"] if "--exclude" in item["reason"]}
    assert sorted(left_out) == sorted(
        (superseded.parent.parent / a / "EnvA-v0" / f"seed{s}").as_posix() for a in ("ppo", "sd_ppo") for s in range(3)
    )
    assert left_out[(superseded / "seed0").as_posix()] == f"left out by --exclude {superseded.as_posix()}"
    markdown = (report_dir / "report.md").read_text()
    assert f"--exclude {superseded}" in markdown and f"`{(superseded / 'seed2').as_posix()}`: left out" in markdown
    # A path that matches no run is a typo, not a silent no-op.
    assert main([*command, str(fake_benchmark / "runs" / "ppo" / "EnvZ-v0")]) == 2
    assert "matches no run" in capsys.readouterr().err


def test_several_folders_need_a_report_folder(fake_benchmark, tmp_path, capsys):
    second = second_benchmark(tmp_path)
    assert main(["report", str(fake_benchmark), str(second)]) == 2
    assert "needs -o DIR" in capsys.readouterr().err
    assert main(["report", str(second), str(second), "-o", str(tmp_path / "x")]) == 2
    assert "named twice" in capsys.readouterr().err
    assert not (fake_benchmark / "report.md").exists() and not (second / "report.md").exists()


def test_learning_curve_interpolates_onto_the_shared_horizon():
    short = pd.DataFrame({"timesteps": [100, 200], "mean_reward": [1.0, 3.0]})
    long = pd.DataFrame({"timesteps": [150, 300], "mean_reward": [2.0, 4.0]})
    curve = aggregate.learning_curve([short, long], reps=50)
    assert list(curve.timesteps) == [100.0, 150.0, 200.0]
    # np.interp holds the first value before a run's first evaluation.
    assert curve.mean == pytest.approx([(1.0 + 2.0) / 2, (2.0 + 2.0) / 2, (3.0 + 2.0 + 2.0 * 50 / 150) / 2])


def test_each_family_is_aggregated_over_the_envs_it_covers():
    assert aggregate.comparison_groups({"sd_dqn", "ppo", "dqn", "sd_ppo"}) == [["dqn", "sd_dqn"], ["ppo", "sd_ppo"]]
    results = [
        aggregate.RunResult(algo, env, seed, None, "finished", score=100.0 + seed)
        for algo in ("ppo", "sd_ppo", "dqn", "sd_dqn")
        for env in ("EnvA-v0", "EnvB-v0")
        for seed in range(2)
        if not (algo.endswith("dqn") and env == "EnvB-v0")  # DQN cannot run on EnvB
    ]
    groups = aggregate.grouped_score_matrices(results, REFERENCES)
    assert [(sorted(g.scores), g.envs) for g in groups] == [
        (["dqn", "sd_dqn"], ["EnvA-v0"]),
        (["ppo", "sd_ppo"], ["EnvA-v0", "EnvB-v0"]),
    ]
    assert groups[1].scores["ppo"] == pytest.approx(np.array([[0.5, 0.5], [0.505, 0.505]]))


def test_a_variant_with_no_scored_run_yet_leaves_the_comparisons_envs_alone():
    """sd_ppo_snapshot has one unfinished run: PPO and SD-PPO are still aggregated over both envs."""
    results = [
        aggregate.RunResult(algo, env, seed, None, "finished", score=100.0 + seed)
        for algo in ("ppo", "sd_ppo")
        for env in ("EnvA-v0", "EnvB-v0")
        for seed in range(2)
    ]
    results.append(aggregate.RunResult("sd_ppo_snapshot", "EnvA-v0", 0, None, "running", problem="unfinished"))
    (group,) = aggregate.grouped_score_matrices(results, REFERENCES)
    assert sorted(group.scores) == ["ppo", "sd_ppo"] and group.envs == ["EnvA-v0", "EnvB-v0"]
    assert ("sd_ppo_snapshot/EnvA-v0/seed0", "unfinished") in group.excluded


def test_publish_copies_the_results_without_models_and_regenerates_the_same_report(fake_benchmark, tmp_path, capsys):
    run = fake_benchmark / "runs" / "ppo" / "EnvA-v0" / "seed0"
    (run / "model.zip").write_bytes(b"weights")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "rl_model_500_steps.zip").write_bytes(b"weights")
    (run / "config.yaml").write_text("algo: ppo\n")
    published = tmp_path / "docs" / "bench"
    assert main(["report", str(fake_benchmark), "--publish", str(published), "--reps", "100"]) == 0
    assert sorted(path.name for path in (published / run.relative_to(fake_benchmark)).iterdir()) == [
        "config.yaml",
        "eval.csv",
        "run.json",
    ]
    assert not list(published.rglob("*.zip")) and (published / "benchmark.json").is_file()
    summary = json.loads((published / "summary.json").read_text())
    assert summary["report_command"] == f"rl-selfdistill report {published} --reps 100"
    # The copy alone gives the same per-run statuses and scores as the original folder.
    assert main(["report", str(fake_benchmark), "--reps", "100"]) == 0
    original = json.loads((fake_benchmark / "summary.json").read_text())
    assert summary["runs"] == original["runs"] and summary["per_env"] == original["per_env"]
    # Nothing already there is overwritten.
    assert main(["report", str(fake_benchmark), "--publish", str(published), "--reps", "100"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["report", str(fake_benchmark), "--publish", str(tmp_path / "x"), "-o", str(tmp_path / "y")]) == 2


def test_publish_copies_runs_of_env_ids_with_a_namespace(tmp_path):
    """ALE/Breakout-v5 puts its run folders one level deeper (runs/ppo/ALE/Breakout-v5/seed0)."""
    out = tmp_path / "bench"
    env_id = "ALE/Breakout-v5"
    save_manifest(out, Manifest("atari", None, [EnvBudget(env_id, 1000)], ["ppo", "sd_ppo"], [0], {}, None, "now"))
    for algo in ("ppo", "sd_ppo"):
        write_fake_run(out, algo, env_id, 0, np.full(10, 7.0))
    write_fake_run(out, "ppo", env_id, 1, np.full(10, 8.0))  # on disk, not in the grid: reported and published too
    published = tmp_path / "published"
    assert main(["report", str(out), "--publish", str(published), "--reps", "100"]) == 0
    assert (published / "runs" / "ppo" / "ALE" / "Breakout-v5" / "seed0" / "eval.csv").is_file()
    runs = json.loads((published / "summary.json").read_text())["runs"]
    assert [(run["algo"], run["env_id"], run["seed"], run["status"], run["score"]) for run in runs] == [
        ("ppo", env_id, 0, "finished", 7.0),
        ("sd_ppo", env_id, 0, "finished", 7.0),
        ("ppo", env_id, 1, "finished", 8.0),
    ]


def test_published_benchmark_runs_are_not_ignored_by_git():
    """The committed docs/benchmarks/*/runs/ files are what lets a report be regenerated from a clone."""
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs a git checkout of the project")
    for probe in (
        "docs/benchmarks/any-benchmark/runs/ppo/CartPole-v1/seed0/eval.csv",
        "docs/benchmarks/any-pooled-benchmark/part1/runs/ppo/CartPole-v1/seed0/eval.csv",  # one of a pooled report's
    ):
        check = subprocess.run(["git", "check-ignore", "-q", probe], cwd=root)
        assert check.returncode == 1, f"git ignores {probe}"
    assert subprocess.run(["git", "check-ignore", "-q", "runs/ppo/CartPole-v1/seed0/eval.csv"], cwd=root).returncode == 0


def test_plot_colours_come_from_the_algorithm_registry():
    from rl_selfdistill.algos import registry
    from rl_selfdistill.benchmark.plots import colours_for

    colours = colours_for(["sd_ppo", "ppo", "my_algo", "other_algo"])
    assert colours["ppo"] == registry.get("ppo").colour and colours["sd_ppo"] == registry.get("sd_ppo").colour
    assert colours["ppo"] != colours["sd_ppo"]
    # Unregistered names get distinct fallback colours, none of them a registered algorithm's.
    assert colours["my_algo"] != colours["other_algo"]
    assert {colours["my_algo"], colours["other_algo"]}.isdisjoint(registry.colour(name) for name in registry.names())
