"""Checkpoint recovery with real runs and real files: damaged checkpoints are found, skipped with a warning, kept.

One tiny PPO run on CartPole (checkpoints every 64 steps) is trained once per module; each test damages a copy of
it the way a disk, a kill or a user would (truncated, flipped bytes, deleted files) and resumes or evaluates it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl_selfdistill.benchmark.grid import RunSpec
from rl_selfdistill.benchmark.runners import RunJob, execute_run
from rl_selfdistill.cli import main
from rl_selfdistill.run import TrainRequest, resume_training, run_training
from rl_selfdistill.run.checkpoints import checkpoint_problem, list_checkpoints, sha256
from tests.helpers import PPO_TINY, interrupted_copy

BUDGET, SAVE_FREQ = 384, 64
NEWEST, OLDER = 256, 192  # the copies are interrupted right after NEWEST; OLDER is the fallback


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"ckpt_{step:012d}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    request = TrainRequest(
        algo="ppo",
        env_id="CartPole-v1",
        n_timesteps=BUDGET,
        seed=3,
        vec_env="dummy",
        n_envs=1,
        eval_freq=128,
        eval_episodes=1,
        save_freq=SAVE_FREQ,
        keep_checkpoints=10,
        hyperparams={key: value for key, value in PPO_TINY.items() if key != "device"},
        device="cpu",
        wandb_mode="disabled",  # no W&B files, so no isolated home is needed for a module-scoped run
        progress=False,
        verbose=0,
        run_dir=tmp_path_factory.mktemp("recovery") / "run",
    )
    return run_training(request)


@pytest.fixture(scope="module")
def resumed_from_older(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Final parameters of the run resumed from its OLDER checkpoint, the newer ones never written."""
    copy = interrupted_copy(finished_run, tmp_path_factory.mktemp("reference") / "run", OLDER)
    resume_training(copy)
    return _final_parameters(copy)


@pytest.fixture
def interrupted(finished_run: Path, tmp_path: Path) -> Path:
    """The run as a kill right after its NEWEST checkpoint leaves it (checkpoints 64 ... NEWEST)."""
    return interrupted_copy(finished_run, tmp_path / "run", NEWEST)


def _final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    from stable_baselines3 import PPO

    return PPO.load(run_dir / "model.zip", device="cpu").policy.state_dict()


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`; run.lock is left out (each process that takes the lock records itself)."""
    return {str(path.relative_to(root)): sha256(path) for path in sorted(root.rglob("*")) if path.is_file()} | {"run.lock": ""}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    """Flip one byte in the middle: the size stays as recorded, only the checksum (or a CRC) can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model.zip": ("model.zip", _truncate, "model.zip: "),
    "flipped byte in rng.pkl": ("rng.pkl", _flip, "rng.pkl: checksum mismatch"),
    "deleted model.zip": ("model.zip", Path.unlink, "model.zip: missing"),
}


def test_every_file_is_checksummed_at_save_time(finished_run: Path):
    for checkpoint in list_checkpoints(finished_run):
        meta = json.loads((checkpoint / "meta.json").read_text())
        files = sorted(path.name for path in checkpoint.iterdir() if path.name != "meta.json")
        assert sorted(meta["sha256"]) == sorted(meta["files"]) == files
        assert all(meta["sha256"][name] == sha256(checkpoint / name) for name in files)
        assert checkpoint_problem(checkpoint) is None


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_kept_and_the_resume_equals_one_from_the_older(
    damage: str, interrupted: Path, resumed_from_older: dict[str, torch.Tensor], capsys: pytest.CaptureFixture[str]
):
    name, spoil, reason = DAMAGE[damage]
    newest = _ckpt(interrupted, NEWEST)
    spoil(newest / name)
    kept = _tree(newest)

    capsys.readouterr()
    resume_training(interrupted)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and newest.name in warnings[0] and reason in warnings[0], warnings
    assert f"resuming from the older {_ckpt(interrupted, OLDER).name}" in warnings[0]

    state = json.loads((interrupted / "run.json").read_text())
    assert state["status"] == "finished" and state["resumes"][-1]["step"] == OLDER
    final = _final_parameters(interrupted)
    assert set(final) == set(resumed_from_older)
    assert all(torch.equal(final[key], resumed_from_older[key]) for key in final), "differs from a resume from OLDER"
    # Kept as it was, out of the way of the checkpoint the resumed run wrote again at the same step.
    [moved] = (interrupted / "checkpoints").glob(f"damaged-*/{newest.name}")
    assert _tree(moved) == kept and checkpoint_problem(newest) is None


def test_checkpoints_written_before_checksums_still_load_and_are_still_checked(interrupted: Path, capsys):
    for checkpoint in list_checkpoints(interrupted):  # the older meta.json format: sizes only
        meta = json.loads((checkpoint / "meta.json").read_text())
        del meta["sha256"]
        (checkpoint / "meta.json").write_text(json.dumps(meta))
    assert checkpoint_problem(_ckpt(interrupted, NEWEST)) is None
    _flip(_ckpt(interrupted, OLDER) / "model.zip")  # without a checksum, the zip's own CRCs still tell
    assert "model.zip: " in (checkpoint_problem(_ckpt(interrupted, OLDER)) or "")
    capsys.readouterr()
    resume_training(interrupted)
    assert "damaged" not in capsys.readouterr().err
    assert json.loads((interrupted / "run.json").read_text())["resumes"][-1]["step"] == NEWEST


def test_all_checkpoints_damaged_stops_with_one_line_and_changes_nothing(interrupted: Path, capsys):
    for checkpoint in list_checkpoints(interrupted):
        _truncate(checkpoint / "model.zip")
    before = _tree(interrupted)

    capsys.readouterr()
    assert main(["train", "--resume", str(interrupted)]) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("rl-selfdistill train: error: ") and "has no usable checkpoint, all 4 are damaged" in line
    assert "ckpt_000000000064: model.zip: " in line and line.endswith("add --restart-if-unrecoverable"), line
    assert out == "" and _tree(interrupted) == before


def test_restart_if_unrecoverable_starts_over_and_moves_the_damaged_checkpoints_aside(interrupted: Path, capsys):
    for checkpoint in list_checkpoints(interrupted):
        _flip(checkpoint / "rng.pkl")
    damaged = {path.name: _tree(path) for path in list_checkpoints(interrupted)}

    capsys.readouterr()
    assert main(["train", "--resume", str(interrupted), "--restart-if-unrecoverable"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "damaged" in line]
    assert len(lines) == 1 and "all 4 checkpoints are damaged, moved to" in lines[0] and "step 0" in lines[0], err
    [aside] = (interrupted / "checkpoints").glob("damaged-*")
    assert {path.name: _tree(path) for path in aside.iterdir()} == damaged  # moved, not deleted, not changed
    state = json.loads((interrupted / "run.json").read_text())
    assert state["status"] == "finished" and state["resumes"][-1]["step"] == 0
    assert all(checkpoint_problem(path) is None for path in list_checkpoints(interrupted))


def test_restart_if_unrecoverable_without_resume_is_refused(tmp_path: Path, capsys):
    capsys.readouterr()
    args = ["train", "--algo", "ppo", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "new"), "--restart-if-unrecoverable"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--restart-if-unrecoverable only applies to --resume" in line and not (tmp_path / "new").exists()


def test_leftovers_of_killed_writes_and_prunes_are_removed_with_a_note(interrupted: Path, capsys):
    folder = interrupted / "checkpoints"
    # What an older version's prune (rmtree in place) killed halfway leaves: files gone, meta.json first or last.
    (_ckpt(interrupted, 64) / "meta.json").unlink()
    (_ckpt(interrupted, 128) / "model.zip").unlink()
    leftovers = [_ckpt(interrupted, 64), _ckpt(interrupted, 128), folder / "ckpt_000000000999", folder / ".tmp-x-1"]
    leftovers += [folder / ".trash-ckpt_000000000032-7"]
    for path in leftovers[2:]:
        path.mkdir()
    (folder / ".trash-ckpt_000000000032-7" / "rng.pkl").write_bytes(b"partial")

    capsys.readouterr()
    resume_training(interrupted)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: removed leftovers")]
    assert len(notes) == 1 and all(path.name in notes[0] for path in leftovers), err
    assert "damaged" not in err and not any(path.exists() for path in leftovers)
    assert json.loads((interrupted / "run.json").read_text())["resumes"][-1]["step"] == NEWEST
    assert not list(folder.glob(".t*"))  # pruning left no .trash- folder of its own


# `python -c KILLED_PRUNE ARGS...`: `rl-selfdistill ARGS...` whose prunes delete one file, say so and hang, so that
# a test can SIGKILL the process in the middle of deleting a checkpoint. The hang lives here, not in the package.
KILLED_PRUNE = """
import shutil, sys, time
from pathlib import Path
from rl_selfdistill.cli import main
from rl_selfdistill.run import checkpoints
real_rmtree = shutil.rmtree
def rmtree(path, *args, **kwargs):
    if Path(path).name.startswith(checkpoints.TRASH_PREFIX):
        sorted(Path(path).iterdir())[0].unlink()
        print("pruning", path, flush=True)
        time.sleep(600)
    real_rmtree(path, *args, **kwargs)
shutil.rmtree = rmtree
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_in_the_middle_of_a_prune_leaves_no_partial_checkpoint(tmp_path: Path, isolated_home: Path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--algo", "ppo", "--env", "CartPole-v1", "-n", str(BUDGET), "--seed", "1", "--vec-env", "dummy"]
    args += ["--n-envs", "1", "--eval-freq", "0", "--save-freq", str(SAVE_FREQ), "--keep-checkpoints", "1"]
    args += ["--wandb-mode", "disabled", "--verbose", "0", "--run-dir", str(run_dir), "-params", "n_steps:64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_PRUNE, *args], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # the second checkpoint (128) prunes the first (64)
        assert line.startswith("pruning"), line
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    folder = run_dir / "checkpoints"
    [trash] = folder.glob(".trash-ckpt_000000000064-*")
    assert [path.name for path in folder.glob("ckpt_*")] == ["ckpt_000000000128"]
    assert checkpoint_problem(_ckpt(run_dir, 128)) is None  # the one left is whole: what the resume uses

    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    (note,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert trash.name in note and not trash.exists()
    assert json.loads((run_dir / "run.json").read_text())["resumes"][-1]["step"] == 128


def test_benchmark_worker_refuses_a_cell_whose_checkpoints_are_all_damaged(interrupted: Path, monkeypatch):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the worker sets them: restored after the test
        monkeypatch.setenv(variable, "1")
    for checkpoint in list_checkpoints(interrupted):
        _truncate(checkpoint / "model.zip")
    before = _tree(interrupted)
    job = RunJob(RunSpec("ppo", "CartPole-v1", 3, BUDGET), interrupted)
    outcome = execute_run(job)
    assert outcome.action == "resumed" and not outcome.ok
    assert "has no usable checkpoint" in outcome.error and "--restart-if-unrecoverable" in outcome.error
    assert _tree(interrupted) == before


@pytest.mark.parametrize(("model", "spoil", "best"), [("model.zip", _truncate, False), ("best_model.zip", _flip, True)])
def test_evaluate_on_a_corrupt_zip_is_one_line(model: str, spoil, best: bool, finished_run: Path, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    spoil(run_dir / model)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--episodes", "1", *(["--best"] if best else [])]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("rl-selfdistill evaluate: error: ") and f"{model}' is damaged" in line, line


def test_evaluate_on_an_unfinished_run_skips_a_damaged_newest_checkpoint(interrupted: Path, capsys):
    _flip(_ckpt(interrupted, NEWEST) / "model.zip")
    before = _tree(interrupted)
    capsys.readouterr()
    assert main(["evaluate", str(interrupted), "--episodes", "1"]) == 0
    out, err = capsys.readouterr()
    (warning,) = err.splitlines()
    assert warning.startswith("warning: skipping damaged checkpoint") and _ckpt(interrupted, NEWEST).name in warning
    assert f"{_ckpt(interrupted, OLDER) / 'model.zip'} (newest usable checkpoint, the run has not finished" in out
    assert _tree(interrupted) == before  # evaluate only reads
