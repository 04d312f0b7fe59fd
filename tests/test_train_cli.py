"""The real `rl-selfdistill train` / `evaluate` commands in subprocesses, on tiny budgets."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import imageio.v2 as imageio
import pytest
import yaml

from rl_selfdistill.cli import build_parser
from rl_selfdistill.cli.common import HelpFormatter
from rl_selfdistill.run.checkpoints import list_checkpoints
from rl_selfdistill.run.rundir import allocate_run_dir
from rl_selfdistill.tracking import FALLBACK_PROMISE_S, failure_reason
from tests.helpers import cli_command, read_wandb_artifacts, read_wandb_config, read_wandb_history, read_wandb_run

Runner = Callable[..., subprocess.CompletedProcess]
# Small, fast settings for runs whose learning does not matter.
TINY_PPO = ["-params", "n_steps:64", "batch_size:64", "n_epochs:1", "policy_kwargs:{net_arch: [16]}"]


def read_frames(path: Path) -> list:
    """Decode every frame of an MP4 (what a player does), with ffmpeg through imageio."""
    reader = imageio.get_reader(path)
    # Not list(reader): the ffmpeg reader reports len() == inf for streams, and list() trusts that hint.
    frames = [frame for frame in reader]  # noqa: C416
    reader.close()
    return frames


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The acceptance command, once per module: sd_ppo on CartPole for 4096 steps, no W&B credentials."""
    work = tmp_path_factory.mktemp("e2e")
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_") and key != "NETRC"}
    env.update(HOME=str(work / "home"), WANDB_DIR=str(work / "home"), OMP_NUM_THREADS="1", SDL_VIDEODRIVER="dummy")
    command = [
        *cli_command(),
        "train",
        "--algo",
        "sd_ppo",
        "--env",
        "CartPole-v1",
        "-n",
        "4096",
        "--seed",
        "3",
        "--save-freq",
        "2048",
        "--eval-freq",
        "2048",
        "--eval-episodes",
        "3",
    ]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    return work / "logs" / "sd_ppo" / "CartPole-v1_1", result


def test_train_writes_a_complete_run_directory(cartpole_run):
    run_dir, result = cartpole_run
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.yaml", "command.txt", "progress.csv", "eval.csv", "best_model.zip", "model.zip", "run.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    # the last one is the final checkpoint, written so that `--resume RUN -n MORE` continues exactly
    assert [path.name for path in list_checkpoints(run_dir)] == ["ckpt_000000002048", "ckpt_000000004096"]

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["algo"] == "sd_ppo" and config["seed"] == 3
    hyperparams = config["hyperparams"]
    assert hyperparams["n_timesteps"] == 4096 and hyperparams["teacher_update_interval"] == 1024
    assert hyperparams["n_steps"] == 32 and hyperparams["learning_rate"] == "lin_0.001"  # RL Zoo CartPole preset
    assert hyperparams["teacher_tau"] == 0.05 and hyperparams["gae_lambda"] == 0.8  # class default recorded too
    assert "train --algo sd_ppo --env CartPole-v1 -n 4096" in (run_dir / "command.txt").read_text()
    # The last line: the last evaluation's mean return (eval.csv's last row) and the run directory.
    last_row = (run_dir / "eval.csv").read_text().splitlines()[-1].split(",")
    assert result.stdout.strip().splitlines()[-1] == (
        f"finished 4096 steps; last evaluation at step 4096: mean return {float(last_row[1]):.2f} "
        f"+/- {float(last_row[2]):.2f} over 3 episodes; run directory: logs/sd_ppo/CartPole-v1_1"
    )

    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["num_timesteps_done"] == 4096 and state["n_timesteps"] == 4096
    assert state["versions"]["stable-baselines3"] and state["wall_clock_s"] > 0 and state["finished_at"]
    assert 0 < state["cpu_time_s"] < 2 * state["wall_clock_s"] * (os.cpu_count() or 1)  # this process's threads

    header, *rows = (run_dir / "eval.csv").read_text().splitlines()
    assert header == "timesteps,mean_reward,std_reward,mean_ep_length,n_episodes"
    assert [row.split(",")[0] for row in rows] == ["2048", "4096"] and all(row.endswith(",3") for row in rows)
    progress_header = (run_dir / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"distill/kl", "distill/coef", "rollout/ep_rew_mean", "time/total_timesteps"} <= set(progress_header)


def test_offline_wandb_run_holds_every_logged_key(cartpole_run):
    run_dir, result = cartpole_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "W&B: offline run" in result.stderr and "wandb sync" in result.stderr
    history = read_wandb_history(run_dir / "wandb")
    keys = {key for row in history for key in row}
    assert {"distill/kl", "rollout/ep_rew_mean", "distill/teacher_updates", "train/learning_rate", "eval/mean_reward"} <= keys
    kl_steps = [row["global_step"] for row in history if "distill/kl" in row]
    assert kl_steps and max(kl_steps) <= 4096 and max(row["global_step"] for row in history) == 4096
    assert max(row.get("distill/teacher_updates", 0) for row in history) >= 1
    run = read_wandb_run(run_dir / "wandb")
    assert run["group"] == "sd_ppo_CartPole-v1" and {"sd_ppo", "CartPole-v1"} <= set(run["tags"])  # seeds share a group
    assert run["id"] == json.loads((run_dir / "run.json").read_text())["wandb_run_id"]
    artifacts = read_wandb_artifacts(run_dir / "wandb")
    assert [(item["type"], item["files"]) for item in artifacts] == [("model", ["model.zip"])]
    config = read_wandb_config(run_dir / "wandb")
    assert config["hyperparams"]["teacher_update_interval"] == 1024
    assert "git_commit" in config and config["versions"]["torch"]


def test_evaluate_cartpole_with_video(cartpole_run, run_cli: Runner, tmp_path: Path):
    run_dir, _ = cartpole_run
    video = tmp_path / "cartpole.mp4"
    result = run_cli(
        "evaluate", str(run_dir), "--episodes", "2", "--video", "--video-path", str(video), "--video-length", "60"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"mean_reward=\d+\.\d+ \+/- \d+\.\d+ over 2 episodes", result.stdout)
    frames = read_frames(video)
    assert 1 < len(frames) <= 60 and frames[0].shape == (400, 600, 3) and frames[0].std() > 0


def test_evaluate_pong_with_video(run_cli: Runner, tmp_path: Path):
    trained = run_cli(
        "train",
        "--algo",
        "ppo",
        "--env",
        "PongNoFrameskip-v4",
        "-n",
        "64",
        "--n-envs",
        "1",
        "--eval-freq",
        "0",
        "--wandb-mode",
        "disabled",
        "--verbose",
        "0",
        "--run-dir",
        "pong",
        "-params",
        "n_steps:64",
        "batch_size:64",
        "n_epochs:1",
        "max_episode_steps:40",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_cli("evaluate", "pong", "--episodes", "1", "--video", "--video-length", "30")
    assert result.returncode == 0, result.stderr[-3000:]
    frames = read_frames(tmp_path / "pong" / "videos" / "model.mp4")
    assert 1 < len(frames) <= 30 and frames[0].shape == (210, 160, 3)


def test_unreachable_wandb_server_falls_back_to_offline_once(run_cli: Runner, tmp_path: Path):
    # Port 9 (discard) on localhost is closed: the online start fails without any outside traffic.
    env = {"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    result = run_cli(
        "train",
        "--algo",
        "ppo",
        "--env",
        "CartPole-v1",
        "-n",
        "128",
        "--n-envs",
        "2",
        "--eval-freq",
        "0",
        "--track",  # the RL Zoo's name for online W&B
        "--wandb-project-name",
        "zoo-project",
        "-tags",
        "zoo-tag",
        "--run-dir",
        "run",
        "--video",
        *TINY_PPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "W&B online start failed" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    # The reason: the error's type and message (here the refused connection), then what happens instead.
    seconds, reason = re.search(r"after (\d+\.\d) s \((\w+: .+)\); logging offline instead", warnings[0]).groups()
    assert float(seconds) < FALLBACK_PROMISE_S and "127.0.0.1:9" in reason
    # The failed online attempt leaves no run-* folder beside the offline run (wandb sync would trip on it).
    assert [path.name for path in (tmp_path / "run" / "wandb").glob("*run-*")][0].startswith("offline-run-")
    assert not list((tmp_path / "run" / "wandb").glob("run-*"))
    history = read_wandb_history(tmp_path / "run" / "wandb")
    assert any("rollout/ep_rew_mean" in row for row in history)
    assert "zoo-tag" in read_wandb_run(tmp_path / "run" / "wandb")["tags"]
    options = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["options"]
    assert (options["wandb_mode"], options["wandb_project"]) == ("online", "zoo-project")
    # --video: one episode of the final model, as MP4 in the run directory and in the W&B run
    assert len(read_frames(tmp_path / "run" / "videos" / "final.mp4")) > 1
    assert any(row.get("eval/video/_type") == "video-file" for row in history)


def test_help_documents_every_option_with_its_default(run_cli: Runner):
    result = run_cli("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in (
        "--algo",
        "--env",
        "-n",
        "--seed",
        "--vec-env",
        "--n-envs",
        "--device",
        "-f",
        "--eval-freq",
        "--eval-episodes",
        "--save-freq",
        "--resume",
        "-params",
        "--wandb-project",
        "--wandb-entity",
        "--wandb-group",
        "--wandb-mode",
        "--tags",
        "--no-progress",
        # RL Zoo names and options
        "--wandb-project-name",
        "-tags",
        "--wandb-tags",
        "-conf",
        "--track",
        "-P",
        "--n-eval-envs",
        "--env-kwargs",
        "--gym-packages",
        "--num-threads",
        "--save-replay-buffer",
    ):
        assert f"{option} " in text or f"{option}," in text, option
    for default in ("(default: logs)", "(default: auto)", "(default: 10000)", "(default: 50000)", "(default: 5)"):
        assert default in text
    assert "--video" in run_cli("evaluate", "--help").stdout


def test_run_directories_are_numbered_and_never_reused(tmp_path: Path):
    first = allocate_run_dir(tmp_path, "sd_ppo", "ALE/Pong-v5")
    (tmp_path / "sd_ppo" / "Pong-v5_7").mkdir()  # unrelated name: ignored
    second = allocate_run_dir(tmp_path, "sd_ppo", "ALE/Pong-v5")
    assert (first.name, second.name) == ("ALE_Pong-v5_1", "ALE_Pong-v5_2")
    first.rmdir()
    assert allocate_run_dir(tmp_path, "sd_ppo", "ALE/Pong-v5").name == "ALE_Pong-v5_3"


def _stderr_on_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run the CLI with stderr on a pseudo-terminal (an interactive session), return what it showed there."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # A fresh pty is 0 columns wide; a real terminal has a size (tqdm fits its bar to it).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen([*cli_command(), *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the terminal closes when the process exits
            break
        if not data:
            break
        chunks.append(data)
    assert process.wait(timeout=300) == 0
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal_and_not_with_no_progress(cartpole_run, isolated_home: Path, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    # A budget of 200 is not a multiple of a rollout (64 steps x 2 envs): PPO runs to 256, the bar stops at 200, 100%.
    args = ["train", "--algo", "ppo", "--env", "CartPole-v1", "-n", "200", "--n-envs", "2", "--eval-freq", "0", *TINY_PPO]
    shown = _stderr_on_a_terminal([*args, "--run-dir", "a", "-P"], tmp_path, env)
    assert re.search(r"100%.*200/200 .*step/s.*fps=\d+", shown), shown[-2000:]
    assert "256/200" not in shown and "128%" not in shown  # what a bar following num_timesteps would end at
    hidden = _stderr_on_a_terminal([*args, "--run-dir", "b", "--no-progress"], tmp_path, env)
    assert "step/s" not in hidden and "fps=" not in hidden
    assert "step/s" not in cartpole_run[1].stderr  # stderr captured by a pipe: no bar either


def test_zoo_options_reach_the_run(run_cli: Runner, tmp_path: Path):
    """--gym-packages (a custom env id), -conf, --env-kwargs, --n-eval-envs and --num-threads through the real CLI."""
    (tmp_path / "preset.yaml").write_text("default:\n  n_envs: 2\n  n_steps: 64\n  batch_size: 64\n  n_epochs: 1\n")
    result = run_cli(
        "train",
        "--algo",
        "ppo",
        "--env",
        "PluginCartPole-v0",
        "--gym-packages",
        "tiny_env",
        "--vec-env",
        "dummy",  # subproc workers start fresh and would not have imported tiny_env (see docs/training.md)
        "-conf",
        "preset.yaml",
        "--env-kwargs",
        "sutton_barto_reward:true",
        "--n-eval-envs",
        "2",
        "--num-threads",
        "1",
        "-n",
        "256",
        "--eval-freq",
        "128",
        "--eval-episodes",
        "2",
        "--wandb-mode",
        "disabled",
        "--run-dir",
        "run",
        env={"PYTHONPATH": str(Path(__file__).with_name("plugins"))},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["env_id"] == "PluginCartPole-v0" and config["hyperparams"]["n_steps"] == 64  # from -conf
    assert config["hyperparams"]["env_kwargs"] == {"sutton_barto_reward": True}
    assert config["options"]["n_eval_envs"] == 2 and config["options"]["num_threads"] == 1
    assert config["options"]["gym_packages"] == ["tiny_env"]
    # Sutton and Barto's reward is 0 per step and -1 at the end: the kwarg reached the env (the default pays +1 a step).
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(float(row.split(",")[1]) <= 0 for row in rows)


def test_save_replay_buffer_is_recorded(run_cli: Runner, tmp_path: Path):
    args = ["train", "--algo", "dqn", "--env", "CartPole-v1", "-n", "300", "--save-freq", "200", "--eval-freq", "0"]
    args += ["--wandb-mode", "disabled", "-params", "learning_starts:100", "buffer_size:1000"]
    for run_dir, flag in (("with", ["--save-replay-buffer"]), ("without", [])):
        result = run_cli(*args, *flag, "--run-dir", run_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        checkpoints = list_checkpoints(tmp_path / run_dir)
        done = json.loads((tmp_path / run_dir / "run.json").read_text())["num_timesteps_done"]
        assert len(checkpoints) == 2 and checkpoints[-1].name == f"ckpt_{done:012d}"  # the last is the final one
        assert all((checkpoint / "replay_buffer.pkl").exists() == bool(flag) for checkpoint in checkpoints)
        assert yaml.safe_load((tmp_path / run_dir / "config.yaml").read_text())["options"]["save_replay_buffer"] == bool(flag)


def test_python_m_rl_selfdistill_is_the_cli(tmp_path: Path):
    module = [sys.executable, "-m", "rl_selfdistill"]
    result = subprocess.run([*module, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("train", "evaluate", "benchmark", "report", "throughput"))
    bad = subprocess.run([*module, "train", "--algo"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_version_is_the_installed_distributions(run_cli: Runner):
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rl-selfdistill {importlib.metadata.version('rl-selfdistill')}"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(item for item in build_parser()._actions if isinstance(item, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help_and_at_most_one_default():
    commands = _subparsers()
    assert set(commands) == {"train", "evaluate", "benchmark", "report", "throughput", "tune"}
    for name, parser in {"rl-selfdistill": build_parser(), **commands}.items():
        formatter = HelpFormatter(name)
        for action in parser._actions:
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{label} has no help"
            text = formatter._expand_help(action)
            assert text.count("(default") <= 1, f"{label}: {text}"
            assert "(default: None)" not in text and "(default: [" not in text, f"{label}: {text}"


def test_help_epilogs_keep_their_line_breaks(run_cli: Runner):
    for command, example in (
        ("train", "  rl-selfdistill train --resume logs/sd_ppo/CartPole-v1_1\n"),
        ("tune", "  rl-selfdistill tune --algo sd_ppo --print-space > space.yaml"),
    ):
        result = run_cli(command, "--help", env={"COLUMNS": "80"})
        assert result.returncode == 0
        examples = result.stdout.split("examples:\n", 1)[1]
        assert example in examples
        assert all(line.startswith("  rl-selfdistill ") for line in examples.splitlines() if line)
    assert "(default: ppo sd_ppo)" in " ".join(run_cli("benchmark", "--help").stdout.split())


def test_auto_backend_is_dummy_for_classic_control_and_a_conf_file_may_leave_the_budget_to_n(run_cli: Runner, tmp_path: Path):
    """MountainCar (classic control; no curated id, so not on EnvPool) steps in-process with
    --vec-env auto; the --conf-file has no n_timesteps (given by -n) and no n_envs (given by --n-envs)."""
    (tmp_path / "budgetless.yaml").write_text("default:\n  n_steps: 64\n  batch_size: 64\n  n_epochs: 1\n")
    result = run_cli(
        *["train", "--algo", "ppo", "--env", "MountainCar-v0", "--conf-file", "budgetless.yaml", "-n", "256"],
        *["--n-envs", "2", "--vec-env", "auto", "--eval-freq", "128", "--eval-episodes", "1", "--run-dir", "run"],
        *["--wandb-mode", "disabled", "--no-progress", "-params", "max_episode_steps:40"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "envs: 2 x MountainCar-v0 on dummy" in result.stderr.splitlines()
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["hyperparams"]["n_timesteps"] == 256 and config["hyperparams"]["n_envs"] == 2
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"finished 256 steps; last evaluation at step 256: mean return -40\.00 \+/- 0\.00 .*run directory: run", last
    )


def test_wandb_fallback_time_is_the_same_in_readme_and_docs_and_the_reason_never_empty():
    root = Path(__file__).resolve().parents[1]
    readme = re.findall(r"falls back to offline within (\d+) s", (root / "README.md").read_text())
    training = re.findall(r"continues offline after at most\s+(\d+) s", (root / "docs" / "training.md").read_text())
    assert readme == training == [str(FALLBACK_PROMISE_S)]
    assert failure_reason(TimeoutError()) == "TimeoutError, without a message"
    reason = failure_reason(ConnectionError("refused " * 40 + "\nsecond line"))
    assert reason.startswith("ConnectionError: refused") and reason.endswith(" ...") and len(reason) <= 164
