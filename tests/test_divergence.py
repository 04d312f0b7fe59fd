"""The divergence guard: a run whose losses, parameters or action distribution turn NaN/inf stops with exit 2.

Real runs through the real CLI. The learning rates are absurd on purpose: with Adam each step moves a weight by
about the learning rate, so 1e20 overflows float32 activations after the first update (1e6 stays finite on
CartPole: weights near 1e6, losses near 1e14, which the guard does not call diverged). Fixed seeds and one env
make each divergence happen at the same step every time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from stable_baselines3.common.save_util import load_from_zip_file

from rl_selfdistill.benchmark.grid import RunSpec
from rl_selfdistill.benchmark.runners import RunJob, execute_run
from rl_selfdistill.cli import main
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.divergence import (
    Divergence,
    RunDiverged,
    diverged_from,
    non_finite_loss,
    non_finite_network,
)
from tests.helpers import DQN_TINY, PPO_TINY

QUIET = ["--device", "cpu", "--seed", "0", "--wandb-mode", "disabled", "--eval-freq", "0", "--no-progress", "--verbose", "0"]
QUIET += ["-f", "logs"]


def without_device(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """The tiny settings as preset keys: the device is a run option (`--device`), not a preset key."""
    return {key: value for key, value in hyperparams.items() if key != "device"}


def params(hyperparams: dict[str, Any], **overrides: Any) -> list[str]:
    """`-params KEY:VALUE ...` (values as JSON, which YAML reads) for these hyperparameters."""
    merged = without_device({**hyperparams, **overrides})
    return ["-params", *(f"{key}:{json.dumps(value)}" for key, value in merged.items())]


PPO_DIVERGING = params(PPO_TINY, n_envs=1, learning_rate=1e20)
# gradient_steps 1: the CartPole preset's 128 gradient steps per update would make the run with the guard off slow.
DQN_DIVERGING = params(DQN_TINY, n_envs=1, gradient_steps=1, learning_rate=1e20)


def run_dir_of(tmp_path: Path, algo: str, env_id: str) -> Path:
    (run_dir,) = (tmp_path / "logs" / algo).glob(f"{env_id}_*")
    return run_dir


def zips_with_non_finite_weights(run_dir: Path) -> list[str]:
    """Every model zip under the run directory whose saved tensors (networks, optimizer, teachers) are not all finite."""
    bad = []
    for path in sorted(run_dir.rglob("*.zip")):
        _, state, _ = load_from_zip_file(path, device="cpu", load_data=False)
        tensors = [value for tree in state.values() for value in _tensors(tree)]
        if not all(bool(torch.isfinite(tensor).all()) for tensor in tensors if tensor.is_floating_point()):
            bad.append(str(path.relative_to(run_dir)))
    return bad


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [tensor for value in tree.values() for tensor in _tensors(value)]
    if isinstance(tree, list | tuple):
        return [tensor for value in tree for tensor in _tensors(value)]
    return []


def assert_diverged(result: Any, run_dir: Path, step: int, quantity: str) -> dict[str, Any]:
    """Exit 2, one stderr line naming the step, the quantity and the fix, run.json "diverged", no bad weights on disk."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "diverged" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0] == result.stderr.strip().splitlines()[-1]
    assert f"diverged at step {step}: {quantity} is not finite" in lines[0]
    assert "lower learning_rate" in lines[0] and "max_grad_norm" in lines[0]
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "diverged"
    assert state["divergence"]["step"] == step and state["divergence"]["quantity"].startswith(quantity)
    assert not (run_dir / "model.zip").exists()
    kept = run_dir / state["divergence"]["checkpoint"]
    assert (kept / "model.zip").is_file() and state["divergence"]["checkpoint_step"] < step
    assert f"kept its last good checkpoint {state['divergence']['checkpoint']}" in lines[0]
    assert zips_with_non_finite_weights(run_dir) == []
    return state


def test_ppo_on_cartpole_stops_at_its_first_update(run_cli, tmp_path):
    result = run_cli("train", "--algo", "ppo", "--env", "CartPole-v1", "-n", "2048", *QUIET, *PPO_DIVERGING)
    run_dir = run_dir_of(tmp_path, "ppo", "CartPole-v1")
    # The first update (after 64 steps) sends the logits to inf/NaN inside the minibatch loop: torch's own check.
    state = assert_diverged(result, run_dir, 64, "action distribution (logits of Categorical)")
    assert state["divergence"]["checkpoint_step"] == 0  # no periodic checkpoint yet: the copy kept in memory
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["options"]["divergence_guard"] is True


def test_continuous_actions_stop_without_a_traceback(run_cli, tmp_path):
    # Before the guard: torch's Normal refused the NaN mean with a 108-line traceback, and run.json stayed "running".
    args = ["--algo", "ppo", "--env", "Pendulum-v1", "-n", "2048", *QUIET]
    result = run_cli("train", *args, *params(PPO_TINY, n_envs=1, learning_rate=1e6))
    run_dir = run_dir_of(tmp_path, "ppo", "Pendulum-v1")
    assert_diverged(result, run_dir, 64, "action distribution (loc of Normal)")


def test_dqn_stops_on_a_non_finite_loss_and_keeps_its_newest_checkpoint(run_cli, tmp_path):
    # Learning starts after 100 steps, one update per 4: the update at 104 sends the weights to inf, the loss of the
    # one at 108 is NaN. The periodic checkpoint at step 64 is newer than the guard's copy (taken at step 0): it is
    # the one kept, nothing is written.
    args = ["--algo", "dqn", "--env", "CartPole-v1", "-n", "2048", "--save-freq", "64", *QUIET]
    result = run_cli("train", *args, *DQN_DIVERGING)
    run_dir = run_dir_of(tmp_path, "dqn", "CartPole-v1")
    state = assert_diverged(result, run_dir, 108, "train/loss")
    assert state["divergence"]["checkpoint"] == "checkpoints/ckpt_000000000064"
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == ["ckpt_000000000064"]


def test_a_copy_newer_than_the_newest_checkpoint_is_written_and_resumes(tmp_path):
    # In-process. The guard copies the agent every 1,024 steps; the run checkpoints at 1,000 and diverges soon after
    # learning starts at 1,100: the copy of step 1,024 is written as a checkpoint, and a resume loads it (and
    # diverges again, its settings unchanged).
    from rl_selfdistill.run import TrainRequest, resume_training, run_training

    hyperparams = {**DQN_TINY, "n_envs": 1, "gradient_steps": 1, "learning_rate": 1e20, "learning_starts": 1100}
    request = TrainRequest(
        algo="dqn", env_id="CartPole-v1", n_timesteps=2048, seed=0, hyperparams=without_device(hyperparams),
        run_dir=tmp_path / "run", device="cpu", eval_freq=0, save_freq=1000, wandb_mode="disabled", progress=False, verbose=0,
    )  # fmt: skip
    with pytest.raises(RunDiverged, match=r"diverged at step 11\d\d: train/loss"):
        run_training(request)
    run_dir = tmp_path / "run"
    state = json.loads((run_dir / "run.json").read_text())
    assert state["divergence"]["checkpoint"] == "checkpoints/ckpt_000000001024"
    assert state["num_timesteps_done"] == state["divergence"]["step"] > 1100
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["ckpt_000000001000", "ckpt_000000001024"]
    assert zips_with_non_finite_weights(run_dir) == []
    with pytest.raises(RunDiverged, match=r"diverged at step 11\d\d: train/loss"):
        resume_training(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["resumes"][-1]["step"] == 1024


def test_without_the_guard_a_diverging_run_trains_to_the_end_as_before(run_cli, tmp_path):
    args = ["--algo", "dqn", "--env", "CartPole-v1", "-n", "400", "--no-divergence-guard", *QUIET]
    result = run_cli("train", *args, *DQN_DIVERGING)
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(tmp_path, "dqn", "CartPole-v1")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    # The garbage the guard exists to refuse, in model.zip and in the final checkpoint written beside it.
    assert zips_with_non_finite_weights(run_dir) == ["checkpoints/ckpt_000000000400/model.zip", "model.zip"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["options"]["divergence_guard"] is False


def test_a_resume_keeps_the_guard_off(tmp_path):
    # In-process (no interpreter start-up): with the guard off, torch's error passes through as before, on the
    # first run and on its resume, whose settings come from config.yaml.
    from rl_selfdistill.run import TrainRequest, resume_training, run_training

    hyperparams = without_device({**PPO_TINY, "n_envs": 1, "learning_rate": 1e6})
    request = TrainRequest(
        algo="ppo", env_id="Pendulum-v1", n_timesteps=512, seed=0, hyperparams=hyperparams, run_dir=tmp_path / "run",
        device="cpu", eval_freq=0, wandb_mode="disabled", progress=False, verbose=0, divergence_guard=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="Expected parameter loc") as first:
        run_training(request)
    assert not isinstance(first.value, RunDiverged)
    with pytest.raises(ValueError, match="Expected parameter loc") as again:
        resume_training(tmp_path / "run")
    assert not isinstance(again.value, RunDiverged)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"


def test_a_benchmark_lists_its_diverged_cell_as_diverged(tmp_path, capfd):
    # In-process `main` for the benchmark and the report (one interpreter start-up less each); the cells train in
    # spawned worker process, as always. One cell (each costs a worker's start-up): the report must also cope with
    # a benchmark where nothing could be scored.
    out = tmp_path / "out"
    grid = ["--envs", "CartPole-v1", "--algos", "sd_ppo", "--seeds", "1", "-n", "512", "--device", "cpu"]
    grid += ["--eval-freq", "256", "--eval-episodes", "2", "--wandb-mode", "disabled", "-o", str(out)]
    assert main(["benchmark", *grid, "-params", "learning_rate:1e20"]) == 1  # a diverged cell is not an ok run
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err
    (line,) = [line for line in printed.out.splitlines() if "sd_ppo/CartPole-v1/seed0 in " in line]
    assert "diverged at step 256: action distribution" in line
    cell = out / "runs" / "sd_ppo" / "CartPole-v1" / "seed0"
    assert yaml.safe_load((cell / "config.yaml").read_text())["options"]["divergence_guard"] is True

    assert main(["report", str(out), "--reps", "100"]) == 0
    (run,) = json.loads((out / "summary.json").read_text())["runs"]
    assert run["status"] == "diverged" and run["problem"].startswith("diverged at step 256: action distribution")
    markdown = (out / "report.md").read_text()
    diverged_section = markdown.split("## Diverged runs", 1)[1].split("\n## ", 1)[0]
    assert "- `sd_ppo/CartPole-v1/seed0` in `runs/sd_ppo/CartPole-v1/seed0`: diverged at step 256" in diverged_section
    assert "| sd_ppo | CartPole-v1 | 0 | diverged |" in markdown  # the runs table says it too

    # Invoked again, the benchmark does not train the diverged cell again (same seed, same settings): it says so.
    outcome = execute_run(RunJob(RunSpec("sd_ppo", "CartPole-v1", 0, 512), cell))
    assert outcome.action == "skipped" and outcome.error.startswith("diverged at step 256")


# ----------------------------------------------------------------------------- what counts as diverged


def test_only_torch_s_check_of_a_distribution_counts_as_divergence():
    with pytest.raises(ValueError) as raised:
        torch.distributions.Normal(torch.tensor([math.nan]), torch.tensor([1.0]))
    diverged = diverged_from(raised.value, step=7)
    assert isinstance(diverged, RunDiverged) and diverged.divergence == Divergence(7, "action distribution (loc of Normal)")
    # The same words raised anywhere else, or any other ValueError, are not a divergence.
    try:
        raise ValueError(str(raised.value))
    except ValueError as elsewhere:
        assert diverged_from(elsewhere, step=7) is None
    assert diverged_from(UsageError("unknown key"), step=7) is None


def test_logged_losses_are_watched_but_explained_variance_is_not():
    assert non_finite_loss({"train/explained_variance": math.nan, "train/value_loss": 1e14, "time/fps": 10}) is None
    assert non_finite_loss({"train/approx_kl": 0.1, "train/value_loss": math.inf}) == "train/value_loss"
    assert non_finite_loss({"distill/kl": float("nan")}) == "distill/kl"
    import numpy as np

    assert non_finite_loss({"train/loss": np.float32("nan")}) == "train/loss"  # SB3 records numpy means


def test_a_sum_that_overflows_is_confirmed_element_by_element():
    huge = torch.full((4,), 3e38)  # finite, but their float32 sum is inf
    assert non_finite_network({"policy": [huge]}) is None
    assert non_finite_network({"policy": [huge, torch.tensor([1.0, math.nan])]}) == "policy"


def test_an_evaluation_never_scores_or_saves_non_finite_weights(tmp_path):
    # A DQN acts with whatever weights it has: one made non-finite by an update whose loss was still finite is not
    # seen by the next loss check before an evaluation may run. A weight set to NaN by hand (a real fault, injected)
    # stands for that update; the evaluation due at step 6 must not score or save it.
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
    from stable_baselines3.common.env_util import make_vec_env

    from rl_selfdistill.run.divergence import DivergenceGuard

    class PoisonAtStep(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 4:
                with torch.no_grad():
                    next(self.model.q_net.parameters())[0, 0] = math.nan
            return True

    model = DQN("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), learning_starts=1000, seed=0, device="cpu")
    evaluation = EvalCallback(make_vec_env("CartPole-v1", n_envs=1, seed=1), eval_freq=6, n_eval_episodes=1,
                              best_model_save_path=str(tmp_path), verbose=0)  # fmt: skip
    guard = DivergenceGuard()
    guard.before_evaluations_of(evaluation)
    with pytest.raises(RunDiverged, match="diverged at step 6: policy parameters is not finite"):
        model.learn(20, callback=[PoisonAtStep(), guard, evaluation])
    assert evaluation.evaluations_results == [] and not (tmp_path / "best_model.zip").exists()
