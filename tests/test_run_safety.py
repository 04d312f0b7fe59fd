"""Run safety with real processes and real signals: one process per run directory (run.lock), graceful SIGINT/SIGTERM.

The runs train on SlowCartPole-v0 (tests/plugins/slow_env.py: CartPole with 1 ms per step), so that a tiny
budget still lasts long enough for a test to lock or signal it mid-run, however fast or loaded the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rl_selfdistill.cli import main
from rl_selfdistill.run import resume_training
from rl_selfdistill.run.checkpoints import TEMP_PREFIX, list_checkpoints
from rl_selfdistill.run.lock import RunLocked, acquire
from tests.helpers import cli_command

PLUGINS = Path(__file__).with_name("plugins")
# Runs the CLI with each checkpoint held before its rename (a second signal can land while it is written).
PAUSING_DRIVER = Path(__file__).with_name("checkpoint_pause_driver.py")
ALGO_PARAMS = {
    "sd_ppo": ["n_steps:64", "batch_size:64", "n_epochs:1", "policy_kwargs:{net_arch: [16]}"],
    "sd_dqn": [
        "learning_starts:100",
        "train_freq:4",
        "buffer_size:5000",
        "target_update_interval:100",
        "policy_kwargs:{net_arch: [16]}",
    ],
}


@pytest.fixture(autouse=True)
def plugins_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Resumes run in this process too: they import the run's --gym-packages (slow_env) like the CLI processes.
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PLUGINS)}


def _train_args(run_dir: Path, algo: str, budget: int, *options: str) -> list[str]:
    """`train` of a tiny run; `options` go before -params (which takes every word after it)."""
    return [
        "train",
        "--algo",
        algo,
        "--env",
        "SlowCartPole-v0",
        "--gym-packages",
        "slow_env",
        "-n",
        str(budget),
        "--seed",
        "1",
        "--vec-env",
        "dummy",
        "--n-envs",
        "1",
        "--eval-freq",
        "0",
        "--wandb-mode",
        "disabled",
        "--verbose",
        "0",
        "--run-dir",
        str(run_dir),
        *options,
        "-params",
        *ALGO_PARAMS[algo],
    ]


def _start(args: list[str], *, driver: list[str] | None = None) -> subprocess.Popen[str]:
    command = [*(driver or cli_command()), *args]
    return subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_command(), *args], env=_environment(), capture_output=True, text=True, timeout=300)


def _wait(condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early ({process.returncode}): {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _training(run_dir: Path) -> Callable[[], bool]:
    """True once SB3 has logged a row: the run is inside learn(), with its signal handlers installed."""
    progress = run_dir / "progress.csv"
    return lambda: progress.exists() and len(progress.read_text().splitlines()) >= 2


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def _lock_holder(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.lock").read_text())


def _progress_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "progress.csv").read_text().splitlines()
    column = lines[0].split(",").index("time/total_timesteps")
    return [int(float(line.split(",")[column])) for line in lines[1:]]


# ----------------------------------------------------------------------------- the run lock


def test_lock_names_its_holder_and_is_free_again_after_release(tmp_path: Path):
    held = acquire(tmp_path)
    with pytest.raises(RunLocked, match=rf"in use by PID {os.getpid()} on host {socket.gethostname()} "):
        acquire(tmp_path)  # flock: a second open file conflicts even within one process
    held.release()
    again = acquire(tmp_path)
    assert _lock_holder(tmp_path)["pid"] == os.getpid()
    again.release()


def test_second_process_on_a_running_run_is_refused_and_a_killed_holders_lock_is_taken_over(
    tmp_path: Path, isolated_home: Path
):
    run_dir = tmp_path / "run"
    # Each checkpoint held for 2 s: the first run is certainly still alive when the second one starts.
    first = _start(
        _train_args(run_dir, "sd_ppo", 1024, "--save-freq", "256"), driver=[sys.executable, str(PAUSING_DRIVER), "2"]
    )
    _wait(_training(run_dir), first)
    assert _lock_holder(run_dir) == {"pid": first.pid, "host": socket.gethostname(), "since": _lock_holder(run_dir)["since"]}

    refused = _cli("train", "--resume", str(run_dir))
    assert first.poll() is None, "the first run must still hold the lock while the second is refused"
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"is in use by PID {first.pid} on host {socket.gethostname()}" in refused.stderr
    assert _state(run_dir)["status"] == "running"

    first.send_signal(signal.SIGKILL)
    first.wait()
    assert _lock_holder(run_dir)["pid"] == first.pid  # the file still names the dead holder; the kernel freed the flock
    # The CLI's main in this process: a second real process, without another interpreter start-up.
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert _lock_holder(run_dir)["pid"] == os.getpid()  # taken over, and the details rewritten
    state = _state(run_dir)
    assert state["status"] == "finished" and state["num_timesteps_done"] == 1024


def test_a_locked_run_is_refused_before_anything_in_it_changes(tmp_path: Path, isolated_home: Path):
    run_dir = tmp_path / "run"
    first = _start(_train_args(run_dir, "sd_dqn", 100_000))
    try:
        _wait(_training(run_dir), first)
        progress = (run_dir / "progress.csv").read_text()
        # What a benchmark or tuning worker calls: refused before it reads, rewinds or writes anything.
        with pytest.raises(RunLocked, match=f"PID {first.pid}"):
            resume_training(run_dir)
        assert (run_dir / "progress.csv").read_text().startswith(progress) and _state(run_dir)["status"] == "running"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# ----------------------------------------------------------------------------- graceful interrupts


@pytest.mark.parametrize(("algo", "signum"), [("sd_ppo", signal.SIGINT), ("sd_dqn", signal.SIGTERM)])
def test_first_signal_checkpoints_before_the_first_periodic_one_and_resume_finishes(
    algo: str, signum: signal.Signals, tmp_path: Path, isolated_home: Path
):
    run_dir, budget = tmp_path / "run", 1024
    process = _start(_train_args(run_dir, algo, budget))  # default --save-freq 50000: no checkpoint before the signal
    _wait(_training(run_dir), process)
    assert not list_checkpoints(run_dir)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    state = _state(run_dir)
    steps = state["num_timesteps_done"]
    assert state["status"] == "interrupted" and 0 < steps < budget
    assert [path.name for path in list_checkpoints(run_dir)] == [f"ckpt_{steps:012d}"]
    name = signal.Signals(signum).name
    assert stderr.splitlines()[-1] == (
        f"{name}: stopped at step {steps} with a checkpoint; continue with: rl-selfdistill train --resume {run_dir}"
    )

    assert main(["train", "--resume", str(run_dir)]) == 0  # in this process: one interpreter start-up less
    state = _state(run_dir)
    assert state["status"] == "finished" and state["num_timesteps_done"] == budget
    assert (run_dir / "model.zip").is_file()
    steps_logged = _progress_steps(run_dir)
    assert steps_logged == sorted(steps_logged) and steps_logged[-1] <= budget


def test_second_signal_stops_at_once_without_a_checkpoint(tmp_path: Path, isolated_home: Path):
    run_dir = tmp_path / "run"
    # Every checkpoint waits 60 s before its rename: the second signal lands while the first one's is written.
    process = _start(_train_args(run_dir, "sd_ppo", 100_000), driver=[sys.executable, str(PAUSING_DRIVER), "60"])
    _wait(_training(run_dir), process)
    process.send_signal(signal.SIGTERM)
    first_line = process.stderr.readline()
    assert first_line.startswith("SIGTERM: finishing the current rollout and writing a checkpoint"), first_line
    _wait(lambda: (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").glob(TEMP_PREFIX + "*")), process)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 10  # not after the 60 s checkpoint
    assert process.returncode == 143
    assert stderr.splitlines() == [
        "SIGTERM again: stopping at once without a checkpoint; the run resumes from its last complete checkpoint"
    ]
    assert not list_checkpoints(run_dir) and _state(run_dir)["status"] == "running"
