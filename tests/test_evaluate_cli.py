"""`rl-selfdistill evaluate` says what it scores: which file, at which step, deterministic or stochastic.

The CLI's `main` runs in this process (the console script calls the same function), on one tiny run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from rl_selfdistill.cli import main
from rl_selfdistill.run import TrainRequest, run_training


@pytest.fixture
def finished_run(tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    request = TrainRequest(
        algo="ppo",
        env_id="CartPole-v1",
        n_timesteps=1024,
        seed=0,
        vec_env="dummy",
        n_envs=1,
        eval_freq=512,
        eval_episodes=1,
        save_freq=512,
        hyperparams={"n_steps": 128, "batch_size": 64, "n_epochs": 1, "policy_kwargs": {"net_arch": [16]}},
        wandb_mode="disabled",
        progress=False,
        verbose=0,
        run_dir=tmp_path / "run",
    )
    return run_training(request)


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    status = main(["evaluate", *args, "--episodes", "1"])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def test_evaluate_names_the_file_the_step_and_the_action_choice(finished_run: Path, capsys: pytest.CaptureFixture[str]):
    status, out, _ = _evaluate(capsys, str(finished_run))
    assert status == 0
    assert out[0] == f"scored: {finished_run / 'model.zip'} (final model, step 1024), deterministic (greedy) actions"
    assert re.fullmatch(r"mean_reward=\d+\.\d+ \+/- \d+\.\d+ over 1 episodes", out[1])

    status, out, _ = _evaluate(capsys, str(finished_run), "--best", "--stochastic")
    assert status == 0
    step = int(
        re.fullmatch(
            rf"scored: {re.escape(str(finished_run / 'best_model.zip'))} \(best model, step (\d+)\), "
            r"stochastic \(sampled\) actions",
            out[0],
        ).group(1)
    )
    assert step in (512, 1024)  # the step of the evaluation that saved it


def test_unfinished_run_scores_its_newest_checkpoint_and_says_so(finished_run: Path, tmp_path: Path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    (unfinished / "model.zip").unlink()
    shutil.rmtree(unfinished / "checkpoints" / "ckpt_000000001024")  # the final checkpoint: a killed run has none
    state = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**state, "status": "running", "finished_at": None}))

    status, out, _ = _evaluate(capsys, str(unfinished))
    assert status == 0
    checkpoint = unfinished / "checkpoints" / "ckpt_000000000512" / "model.zip"
    assert (
        out[0]
        == f"scored: {checkpoint} (newest checkpoint, the run has not finished, step 512), deterministic (greedy) actions"
    )


def test_best_without_a_best_model_is_an_error_not_a_fallback(finished_run: Path, capsys):
    (finished_run / "best_model.zip").unlink()
    status, out, err = _evaluate(capsys, str(finished_run), "--best")
    assert status == 2 and out == [] and len(err) == 1
    assert "has no best_model.zip" in err[0] and "drop --best" in err[0]

    status, _, err = _evaluate(capsys, str(finished_run / "model.zip"), "--best")
    assert status == 2 and len(err) == 1 and "is a file" in err[0]
