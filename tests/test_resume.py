"""Checkpoints and --resume: exact state restore, schedules that continue, determinism, and SIGKILL at random moments."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from rl_selfdistill.algos import registry
from rl_selfdistill.run import TrainRequest, resume_training, run_training
from rl_selfdistill.run.checkpoints import REPLAY_BUFFER, list_checkpoints, load_checkpoint
from rl_selfdistill.run.rundir import read_config
from tests.helpers import interrupted_copy

# Runs the CLI with each checkpoint held between its complete temp folder and its rename, so a kill can land there.
PAUSING_DRIVER = Path(__file__).with_name("checkpoint_pause_driver.py")

CHECKPOINT_STEP = 512
SMALL_NET = {"net_arch": [32, 32]}
HYPERPARAMS = {
    # VecNormalize on, so that its statistics are part of what must come back.
    "sd_ppo": {
        "n_steps": 64,
        "batch_size": 64,
        "n_epochs": 2,
        "teacher_update_interval": 256,
        "normalize": True,
        "policy_kwargs": SMALL_NET,
    },
    "sd_dqn": {
        "learning_starts": 200,
        "train_freq": 16,
        "gradient_steps": 4,
        "batch_size": 32,
        "buffer_size": 4000,
        "target_update_interval": 100,
        "teacher_update_interval": 256,
        "exploration_fraction": 0.5,
        "learning_rate": "lin_1e-3",
        "policy_kwargs": SMALL_NET,
    },
}


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny networks: extra threads only add contention on a shared machine (configure_torch_threads honours this).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _request(algo: str, run_dir: Path, **changes: Any) -> TrainRequest:
    fields: dict[str, Any] = dict(
        algo=algo,
        env_id="CartPole-v1",
        n_timesteps=1536,
        seed=7,
        vec_env="dummy",
        n_envs=2 if algo == "sd_ppo" else 1,
        eval_freq=0,
        save_freq=CHECKPOINT_STEP,
        keep_checkpoints=10,
        save_replay_buffer=True,
        hyperparams=HYPERPARAMS[algo],
        wandb_mode="disabled",
        progress=False,
        verbose=0,
        run_dir=run_dir,
    )
    return TrainRequest(**{**fields, **changes})


def capture(model: Any) -> dict[str, Any]:
    """Everything a resumed run must get back, copied."""
    state: dict[str, Any] = {
        "num_timesteps": model.num_timesteps,
        "n_updates": model._n_updates,
        "policy": copy.deepcopy(model.policy.state_dict()),
        "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
        "teacher": copy.deepcopy(model.teacher_networks.state_dict()),
        "teacher_refreshes": (model.distiller.teacher.n_updates, model.distiller.teacher.last_update_step),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "torch_rng": torch.get_rng_state().clone(),
        "action_space_rng": copy.deepcopy(model.action_space.np_random.bit_generator.state),
    }
    vecnormalize = model.get_vec_normalize_env()
    if vecnormalize is not None:
        state["vecnormalize"] = copy.deepcopy((vecnormalize.obs_rms.__dict__, vecnormalize.ret_rms.__dict__))
    buffer = getattr(model, "replay_buffer", None)
    if buffer is not None:
        state["replay_buffer"] = copy.deepcopy(
            (
                buffer.observations,
                buffer.actions,
                buffer.rewards,
                buffer.dones,
                buffer.next_observations,
                buffer.pos,
                buffer.full,
            )
        )
        state["exploration"] = (model.exploration_rate, model._n_calls)
    return state


def assert_same(expected: Any, actual: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert set(expected) == set(actual), where
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_same(left, right, f"{where}[{index}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), where
    elif isinstance(expected, np.ndarray):
        assert np.array_equal(expected, actual), where
    else:
        assert expected == actual, where


class StateAt(BaseCallback):
    """Copies the model's state at the rollout start where the checkpoint of `step` is written."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.state = step, None

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps == self.step:
            self.state = capture(self.model)

    def _on_step(self) -> bool:
        return True


class ScheduleRecorder(BaseCallback):
    """Per env step: the learning rate in the optimizer, the clip range / exploration rate, the distill coefficient."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[int, tuple[float, ...]] = {}

    def _on_step(self) -> bool:
        model, progress = self.model, self.model._current_progress_remaining
        extra = model.clip_range(progress) if hasattr(model, "clip_range") else model.exploration_rate
        coef = model.distiller.coefficient.value(progress)
        self.values[model.num_timesteps] = (model.policy.optimizer.param_groups[0]["lr"], extra, coef)
        return True


def _final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    config = read_config(run_dir)
    return registry.algo_class(config["algo"]).load(run_dir / "model.zip", device="cpu").policy.state_dict()


@pytest.mark.parametrize("algo", ["sd_ppo", "sd_dqn"])
def test_resume_is_exact(algo: str, tmp_path: Path, isolated_home: Path):
    at_checkpoint, uninterrupted = StateAt(CHECKPOINT_STEP), ScheduleRecorder()
    run_dir = run_training(_request(algo, tmp_path / "run"), callbacks=[at_checkpoint, uninterrupted])
    assert at_checkpoint.state is not None and at_checkpoint.state["teacher_refreshes"][0] >= 1
    checkpoint = next(path for path in list_checkpoints(run_dir) if path.name.endswith(f"_{CHECKPOINT_STEP:012d}"))

    # Right after the restore: model, teacher, optimizer, VecNormalize, replay buffer and RNG states as saved.
    assert (checkpoint / REPLAY_BUFFER).exists() == (algo == "sd_dqn")  # asked for with save_replay_buffer=True
    model, _eval_env, meta = load_checkpoint(checkpoint, read_config(run_dir), device="cpu")
    assert meta["num_timesteps"] == CHECKPOINT_STEP
    assert_same(at_checkpoint.state, capture(model))
    model.env.close()

    finals = []
    for attempt in range(2):
        resumed = ScheduleRecorder()
        copy_dir = interrupted_copy(run_dir, tmp_path / f"resumed{attempt}", CHECKPOINT_STEP)
        resume_training(copy_dir, callbacks=[resumed])
        assert json.loads((copy_dir / "run.json").read_text())["num_timesteps_done"] == 1536
        # Learning rate, clip range / exploration and distillation coefficient follow the uninterrupted run's schedule.
        assert min(resumed.values) > CHECKPOINT_STEP and max(resumed.values) == 1536
        assert {step: uninterrupted.values[step] for step in resumed.values} == resumed.values
        finals.append(_final_parameters(copy_dir))
        steps = _progress_steps(copy_dir)
        assert steps == sorted(set(steps)), "progress.csv continues without duplicated or reordered rows"
    assert_same(finals[0], finals[1], "final parameters of two resumes from the same checkpoint")


def _progress_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "progress.csv").read_text().splitlines()
    column = lines[0].split(",").index("time/total_timesteps")
    return [int(float(line.split(",")[column])) for line in lines[1:]]


def _start(run_dir: Path, env: dict[str, str], *extra: str, pause_s: float = 1.0) -> subprocess.Popen:
    args = (
        ["train", "--resume", str(run_dir)]
        if extra == ("resume",)
        else [
            "train",
            "--algo",
            "sd_ppo",
            "--env",
            "CartPole-v1",
            "-n",
            "3072",
            "--n-envs",
            "2",
            "--vec-env",
            "dummy",
            "--seed",
            "1",
            "--save-freq",
            "256",
            "--keep-checkpoints",
            "2",
            "--eval-freq",
            "1024",
            "--eval-episodes",
            "2",
            "--wandb-mode",
            "disabled",
            "--verbose",
            "0",
            "--run-dir",
            str(run_dir),
            "-params",
            "n_steps:64",
            "batch_size:64",
            "n_epochs:1",
            "teacher_update_interval:256",
            "policy_kwargs:{net_arch: [16]}",
        ]
    )
    command = [sys.executable, str(PAUSING_DRIVER), str(pause_s), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_during_checkpoint_write(process: subprocess.Popen, run_dir: Path, after_step: int, timeout: float = 240) -> int:
    """SIGKILL while a checkpoint past `after_step` sits in its temp folder; returns that checkpoint's step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for temp in (run_dir / "checkpoints").glob(".tmp-ckpt_*") if (run_dir / "checkpoints").exists() else ():
            step = int(temp.name.split("_")[1].split("-")[0])
            if step > after_step:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return step
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint write was observed")


def test_sigkill_at_random_moments_is_always_resumable(tmp_path: Path, isolated_home: Path):
    run_dir = tmp_path / "run"
    rng = random.Random(20261202)  # seeded: a failure replays with the same kill times
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    killed_step = _kill_during_checkpoint_write(_start(run_dir, env), run_dir, after_step=0)
    assert all(int(path.name.split("_")[1]) < killed_step for path in list_checkpoints(run_dir))

    for _ in range(2):  # resumed runs killed again at random moments (startup, training, logging, checkpointing)
        process = _start(run_dir, env, "resume")
        # At most a few seconds: with 1 s per checkpoint the run cannot reach its budget before the last kill below.
        time.sleep(rng.uniform(0.5, 6.0))
        process.send_signal(signal.SIGKILL)
        process.wait()

    process = _start(run_dir, env, "resume")
    _kill_during_checkpoint_write(
        process, run_dir, after_step=max((int(path.name.split("_")[1]) for path in list_checkpoints(run_dir)), default=0)
    )

    final = _start(run_dir, env, "resume", pause_s=0.0)
    _, stderr = final.communicate(timeout=400)
    assert final.returncode == 0, stderr[-3000:]
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["num_timesteps_done"] == 3072
    assert (run_dir / "model.zip").is_file() and not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert len(list_checkpoints(run_dir)) <= 2
    steps = _progress_steps(run_dir)
    # Non-decreasing: rows logged after a checkpoint by a killed process were dropped on resume, not duplicated.
    # (Equal neighbours are fine: an evaluation dumps its own row at a rollout's step.)
    assert steps == sorted(steps) and steps[-1] == 3072


def test_replay_buffer_is_checkpointed_only_when_asked(tmp_path: Path, isolated_home: Path, capsys):
    run_dir = run_training(_request("sd_dqn", tmp_path / "run", n_timesteps=1024, save_replay_buffer=False))
    checkpoints = list_checkpoints(run_dir)
    assert checkpoints and not any((checkpoint / REPLAY_BUFFER).exists() for checkpoint in checkpoints)
    assert read_config(run_dir)["options"]["save_replay_buffer"] is False

    copy_dir = interrupted_copy(run_dir, tmp_path / "resumed", CHECKPOINT_STEP)
    capsys.readouterr()
    resume_training(copy_dir)
    notes = [line for line in capsys.readouterr().err.splitlines() if "replay buffer" in line]
    assert len(notes) == 1 and "restarts empty" in notes[0] and "--save-replay-buffer" in notes[0], notes
    assert json.loads((copy_dir / "run.json").read_text())["status"] == "finished"


def _evaluations(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "evaluations.npz") as data:
        return {key: data[key] for key in data.files}


def test_evaluation_history_is_whole_after_a_resume(tmp_path: Path, isolated_home: Path, capsys):
    request = _request("sd_ppo", tmp_path / "run", n_timesteps=1024, eval_freq=256, eval_episodes=2)
    run_dir = run_training(request)
    before = _evaluations(run_dir)
    assert before["timesteps"].tolist() == [256, 512, 768, 1024]

    copy_dir = interrupted_copy(run_dir, tmp_path / "resumed", CHECKPOINT_STEP)
    capsys.readouterr()
    resume_training(copy_dir)
    assert "replay buffer" not in capsys.readouterr().err  # on-policy: nothing to say
    after = _evaluations(copy_dir)
    # The evaluations up to the checkpoint are kept as they were, those after it are made again.
    assert after["timesteps"].tolist() == [256, 512, 768, 1024]
    for key in ("results", "ep_lengths"):
        assert after[key].shape == before[key].shape and np.array_equal(after[key][:2], before[key][:2]), key
    eval_steps = [line.split(",")[0] for line in (copy_dir / "eval.csv").read_text().splitlines()[1:]]
    assert eval_steps == ["256", "512", "768", "1024"]


def test_resume_applies_and_records_a_larger_budget_and_new_cadences(tmp_path: Path, isolated_home: Path, capsys):
    from rl_selfdistill.cli import main

    run_dir = run_training(_request("sd_ppo", tmp_path / "run", n_timesteps=1024, save_freq=256))
    copy_dir = interrupted_copy(run_dir, tmp_path / "resumed", CHECKPOINT_STEP)
    changes = ["-n", "2048", "--save-freq", "512", "--eval-freq", "1024", "--device", "cpu", "--wandb-mode", "disabled"]
    changes += ["--num-threads", "1"]
    assert main(["train", "--resume", str(copy_dir), *changes]) == 0, capsys.readouterr().err

    state = json.loads((copy_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["n_timesteps"] == 2048 and state["num_timesteps_done"] == 2048
    recorded = {"n_timesteps": 2048, "save_freq": 512, "eval_freq": 1024, "device": "cpu", "wandb_mode": "disabled"}
    recorded["num_threads"] = 1
    assert [(entry["step"], entry["changes"]) for entry in state["resumes"]] == [(CHECKPOINT_STEP, recorded)]
    config = read_config(copy_dir)
    assert config["hyperparams"]["n_timesteps"] == 2048
    assert {key: config["options"][key] for key in ("save_freq", "eval_freq", "device", "wandb_mode", "num_threads")} == {
        key: value for key, value in recorded.items() if key != "n_timesteps"
    }
    last_command = (copy_dir / "command.txt").read_text().splitlines()[-1]
    assert (
        "--resume" in last_command
        and "-n 2048" in last_command
        and last_command.endswith(f"# resumed at step {CHECKPOINT_STEP}")
    )
    # The new cadences applied: checkpoints every 512 steps after the resume (256 before), then the final one.
    assert [int(path.name.split("_")[1]) for path in list_checkpoints(copy_dir)] == [256, 512, 1024, 1536, 2048]
    assert _evaluations(copy_dir)["timesteps"].tolist() == [1024, 2048]


def test_a_finished_run_is_extended_only_with_a_larger_budget_and_continues_exactly(
    tmp_path: Path, isolated_home: Path, capsys
):
    from rl_selfdistill.cli import main

    extended = run_training(_request("sd_ppo", tmp_path / "extended", n_timesteps=1024, save_freq=256))
    assert int(list_checkpoints(extended)[-1].name.split("_")[1]) == 1024  # the final checkpoint
    capsys.readouterr()
    assert main(["train", "--resume", str(extended)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "already finished its budget (1024 steps); pass -n above 1024 to extend it" in line, line

    first_leg = json.loads((extended / "run.json").read_text())
    assert main(["train", "--resume", str(extended), "-n", "2048"]) == 0, capsys.readouterr().err
    state = json.loads((extended / "run.json").read_text())
    assert state["status"] == "finished" and state["num_timesteps_done"] == 2048
    # Costs add up over the legs: the second leg trained as many steps again, so both clocks grew
    assert 0 < first_leg["cpu_time_s"] < state["cpu_time_s"] and first_leg["wall_clock_s"] < state["wall_clock_s"]
    assert [entry["step"] for entry in state["resumes"]] == [1024]
    # Extending 1024 -> 2048 trains exactly what a run of 2048 steps interrupted at its checkpoint 1024 trains
    # from there, except the schedules: both were told 2048 only at the resume, so compare with such a copy.
    whole = run_training(_request("sd_ppo", tmp_path / "whole", n_timesteps=1024, save_freq=256))
    copy_dir = interrupted_copy(whole, tmp_path / "copy", 1024)
    assert main(["train", "--resume", str(copy_dir), "-n", "2048"]) == 0, capsys.readouterr().err
    a = load_checkpoint(list_checkpoints(extended)[-1], read_config(extended))[0]
    b = load_checkpoint(list_checkpoints(copy_dir)[-1], read_config(copy_dir))[0]
    for (name, left), right in zip(a.policy.state_dict().items(), b.policy.state_dict().values(), strict=True):
        assert torch.equal(left, right), name

    no_checkpoints = run_training(_request("sd_ppo", tmp_path / "bare", n_timesteps=512, save_freq=0))
    assert main(["train", "--resume", str(no_checkpoints), "-n", "1024"]) == 2
    assert "finished without checkpoints (--save-freq 0): it cannot be extended" in capsys.readouterr().err


def test_resume_refuses_options_that_would_make_another_run(tmp_path: Path, isolated_home: Path, capsys):
    from rl_selfdistill.cli import main

    run_dir = run_training(_request("sd_ppo", tmp_path / "run", n_timesteps=1024))
    copy_dir = interrupted_copy(run_dir, tmp_path / "resumed", CHECKPOINT_STEP)
    before = {name: (copy_dir / name).read_bytes() for name in ("config.yaml", "run.json", "command.txt", "progress.csv")}

    capsys.readouterr()
    refused = ["--seed", "99", "--n-envs", "4", "--no-progress", "-n", "4096", "-params", "n_steps:32"]
    assert main(["train", "--resume", str(copy_dir), *refused]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "drop --n-envs, --no-progress, --seed, -params" in line and "-n/--n-timesteps" in line, line

    assert main(["train", "--resume", str(copy_dir), "-n", str(CHECKPOINT_STEP)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"is at step {CHECKPOINT_STEP}: a new budget must be larger, got {CHECKPOINT_STEP}" in line
    assert before == {name: (copy_dir / name).read_bytes() for name in before}


def test_a_resume_restarts_the_clocks_from_its_checkpoint(tmp_path: Path, isolated_home: Path):
    """After a crash, the steps trained past the last checkpoint are redone: their time must count once. Each
    checkpoint records the run's clocks, and a resume starts from them, not from run.json's later values."""
    from rl_selfdistill.run.training import _restore

    whole = run_training(_request("sd_ppo", tmp_path / "whole", n_timesteps=1024, save_freq=256))
    finished = json.loads((whole / "run.json").read_text())
    copy_dir = interrupted_copy(whole, tmp_path / "copy", 512)  # run.json still holds the clocks at 1024
    (checkpoint,) = [path for path in list_checkpoints(copy_dir) if path.name.endswith("512")]
    clocks = json.loads((checkpoint / "meta.json").read_text())["clocks"]
    assert 0 < clocks["cpu_time_s"] < finished["cpu_time_s"] and 0 < clocks["wall_clock_s"] < finished["wall_clock_s"]
    run = _restore(copy_dir, callbacks=None, extra_tags=None, changes={}, command=None)
    assert (run._clock_base, run._cpu_base) == (clocks["wall_clock_s"], clocks["cpu_time_s"])
