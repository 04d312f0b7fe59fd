"""W&B logger output read back from a real offline run, mode selection, and the CSV helpers used by resume."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.logger import CSVOutputFormat, Logger

from rl_selfdistill import tracking
from rl_selfdistill.errors import UsageError
from tests.helpers import not_installed_prelude, read_wandb_config, read_wandb_history


def test_every_logger_key_reaches_wandb_with_the_env_step(isolated_home: Path, tmp_path: Path):
    run = tracking.init_wandb(
        mode="auto",
        run_dir=tmp_path,
        project="p",
        entity=None,
        group="g",
        name="n",
        tags=["t"],
        config={"hyperparams": {"n_steps": 32}, "git_commit": "abc"},
    )
    assert run.settings.mode == "offline"  # no credentials in the isolated home
    logger = Logger(folder=None, output_formats=[tracking.WandbOutputFormat(run)])
    for step in (256, 512):
        logger.record("distill/kl", step / 1000)
        logger.record("rollout/ep_rew_mean", np.float32(20.5))
        logger.record("time/iterations", np.int64(2))
        logger.record("train/only_csv", 1.0, exclude="wandb")
        logger.dump(step=step)
    logger.record("distill/kl", 0.1)
    logger.dump(step=128)  # a resumed run logs smaller steps again: the custom step axis accepts them
    tracking.finish_wandb(run)

    rows = [row for row in read_wandb_history(tmp_path) if "distill/kl" in row]
    assert [(row["global_step"], row["distill/kl"]) for row in rows] == [(256, 0.256), (512, 0.512), (128, 0.1)]
    assert rows[0]["rollout/ep_rew_mean"] == 20.5 and rows[0]["time/iterations"] == 2
    assert not any("train/only_csv" in row for row in rows)
    config = read_wandb_config(tmp_path)
    assert config["hyperparams"] == {"n_steps": 32} and config["git_commit"] == "abc"


def test_mode_selection(isolated_home: Path, monkeypatch: pytest.MonkeyPatch):
    assert tracking.resolve_wandb_mode("auto") == "offline"
    (isolated_home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (isolated_home / ".netrc").chmod(0o600)
    assert tracking.resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_wandb_mode("auto") == "disabled"
    assert tracking.resolve_wandb_mode("offline") == "offline"  # an explicit option beats the environment
    with pytest.raises(UsageError, match="choose one of auto, online, offline, disabled"):
        tracking.resolve_wandb_mode("cloud")


def test_disabled_mode_starts_nothing(isolated_home: Path, tmp_path: Path):
    run = tracking.init_wandb(
        mode="disabled", run_dir=tmp_path, project="p", entity=None, group=None, name="n", tags=[], config={}
    )
    assert run is None and not (tmp_path / "wandb").exists()


def _csv_logger(path: Path, *, resume: bool) -> Logger:
    output = tracking.AppendingCSVOutputFormat(str(path)) if resume else CSVOutputFormat(str(path))
    return Logger(folder=None, output_formats=[output])


def test_appending_csv_keeps_rows_and_accepts_new_keys(tmp_path: Path):
    path = tmp_path / "progress.csv"
    logger = _csv_logger(path, resume=False)
    logger.record("time/total_timesteps", 100)
    logger.record("a", 1)
    logger.dump(100)
    logger.close()
    logger = _csv_logger(path, resume=True)
    logger.record("time/total_timesteps", 200)
    logger.record("a", 2)
    logger.record("b", 3)  # new key: SB3 rewrites the header, earlier rows get an empty cell
    logger.dump(200)
    logger.close()
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"time/total_timesteps": "100", "a": "1", "b": ""}, {"time/total_timesteps": "200", "a": "2", "b": "3"}]


def test_truncate_csv_after_drops_later_and_torn_rows(tmp_path: Path):
    path = tmp_path / "eval.csv"
    path.write_text("timesteps,mean_reward\n100,1.0\n200,2.0\n300,3.0\n40")  # last row cut by a crash
    tracking.truncate_csv_after(path, 200, "timesteps")
    assert path.read_text() == "timesteps,mean_reward\n100,1.0\n200,2.0\n"


def test_reader_rejects_other_files(tmp_path: Path):
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"not a log")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        read_wandb_history(tmp_path)


def test_describe_offline_run_tells_how_to_sync(isolated_home: Path, tmp_path: Path):
    run = tracking.init_wandb(
        mode="offline", run_dir=tmp_path, project="p", entity=None, group=None, name="n", tags=[], config={}
    )
    try:
        text = tracking.describe_wandb_run(run)
    finally:
        tracking.finish_wandb(run)
    assert "offline" in text and "wandb sync" in text and str(tmp_path) in text
    assert "\n" not in text


_RUN_CLI = "from rl_selfdistill.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def test_training_without_the_track_extra_writes_progress_csv(isolated_home: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    argv = ["train", "--algo", "ppo", "--env", "CartPole-v1", "-n", "256", "--seed", "0", "--run-dir", str(run_dir)]
    argv += ["--wandb-mode", "offline", "--eval-freq", "0", "--save-freq", "0", "--device", "cpu"]
    result = subprocess.run(
        [sys.executable, "-c", not_installed_prelude({"wandb", "tensorboard"}) + _RUN_CLI, *argv],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "wandb is not installed" in line]
    assert len(warnings) == 1 and "pip install 'rl-selfdistill[track]'" in warnings[0]
    with open(run_dir / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and int(rows[-1]["time/total_timesteps"]) >= 256
    assert not (run_dir / "tb").exists() and not (run_dir / "wandb").exists()


def test_without_tensorboard_the_logger_writes_csv_only(tmp_path: Path):
    script = not_installed_prelude({"tensorboard"}) + (
        "from pathlib import Path\n"
        "from rl_selfdistill import tracking\n"
        f"logger = tracking.make_logger(Path({str(tmp_path)!r}), None, stdout=False, resume=False)\n"
        "logger.record('a', 1.0)\n"
        "logger.dump(1)\n"
        "print(tracking.tensorboard_available(), [type(f).__name__ for f in logger.output_formats])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False ['CSVOutputFormat']"
    assert (tmp_path / "progress.csv").read_text() == "a\n1.0\n" and not (tmp_path / "tb").exists()
    assert tracking.tensorboard_available()  # this interpreter has it: the block above is what turned it off
