"""Adding an algorithm takes one registry entry: a plugin's algorithm trains, benchmarks and reports through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import cli_command

PLUGINS = Path(__file__).with_name("plugins")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH makes the plugin importable by name, in the CLI and in the benchmark's worker processes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(PLUGINS)}
    return subprocess.run([*cli_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_plugin_algorithm_trains_benchmarks_and_reports(tmp_path: Path, isolated_home: Path):
    unknown = _cli("benchmark", "--envs", "CartPole-v1", "--algos", "tiny_sd_ppo", "-n", "256", "-o", "x", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown algorithm 'tiny_sd_ppo'" in unknown.stderr  # only the plugin adds it

    argv = ["benchmark", "--envs", "CartPole-v1", "--algos", "ppo", "tiny_sd_ppo", "--seeds", "1", "-n", "256"]
    argv += ["--n-envs", "2", "--eval-freq", "128", "--eval-episodes", "2", "--save-freq", "0", "--device", "cpu"]
    argv += ["--wandb-mode", "disabled", "--gym-packages", "tiny_algo", "-params", "teacher_update_interval:128"]
    benchmark = _cli(*argv, "-o", "out", cwd=tmp_path)
    assert benchmark.returncode == 0, benchmark.stderr[-3000:]
    run_dir = tmp_path / "out/runs/tiny_sd_ppo/CartPole-v1/seed0"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    # It read the sd_ppo preset (its entry's preset), got the distillation override as a distilling algorithm, and
    # recorded the plugin so that a resume imports it again.
    assert config["algo"] == "tiny_sd_ppo" and config["hyperparams"]["teacher_update_interval"] == 128
    assert config["hyperparams"]["teacher_mode"] and config["options"]["gym_packages"] == ["tiny_algo"]
    ppo_config = yaml.safe_load((tmp_path / "out/runs/ppo/CartPole-v1/seed0/config.yaml").read_text())
    assert "teacher_update_interval" not in ppo_config["hyperparams"]

    report = _cli("report", "out", "--reps", "100", "--gym-packages", "tiny_algo", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert list(summary["probability_of_improvement"]) == ["tiny_sd_ppo,ppo"]  # compared with its registered base
    assert re.search(r"\| tiny_sd_ppo \| ppo \| \d\.\d{3} \[", (tmp_path / "out/report.md").read_text())

    evaluated = _cli("evaluate", str(run_dir), "--episodes", "2", "--gym-packages", "tiny_algo", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(r"mean_reward=\d+\.\d+ \+/- \d+\.\d+ over 2 episodes", evaluated.stdout)


def test_a_keyword_the_users_class_adds_is_a_preset_key(tmp_path: Path, isolated_home: Path):
    """The recipe's KLPenaltyPPO adds `kl_beta: float = 1.0`: -params (and presets) set it, validated like the
    rest; a bad value is one line before any env is built."""
    argv = ["train", "--algo", "sd_klppo", "--env", "CartPole-v1", "-n", "256", "--n-envs", "2", "--eval-freq", "0"]
    argv += ["--device", "cpu", "--gym-packages", "kl_penalty_algos", "--run-dir", "run"]
    bad = _cli(*argv, "-params", "kl_beta:abc", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "kl_beta" in bad.stderr and not (tmp_path / "run").exists()

    trained = _cli(*argv, "-params", "kl_beta:0.25", "n_steps:64", "batch_size:64", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "run/config.yaml").read_text())["hyperparams"]["kl_beta"] == 0.25
    # The model trained with it: the saved model holds the user's setting.
    script = "import kl_penalty_algos as p, sys; print(p.example.SelfDistillKLPenaltyPPO.load(sys.argv[1]).kl_beta)"
    command = [sys.executable, "-c", script, str(tmp_path / "run/model.zip")]
    loaded = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(PLUGINS)}, capture_output=True, text=True)
    assert loaded.stdout.strip() == "0.25", loaded.stderr[-2000:]
