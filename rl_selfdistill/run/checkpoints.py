"""Checkpoints: written atomically (temp folder, fsync, rename), listed, pruned and loaded with every RNG state.

checkpoints/ckpt_<step, 12 digits>/
  model.zip          model incl. teacher, optimizer and coefficient state
  vecnormalize.pkl   VecNormalize statistics (when the preset normalises)
  replay_buffer.pkl  off-policy replay buffer, only with --save-replay-buffer
  rng.pkl            python, numpy, torch (CPU and CUDA) and action-space RNG states
  meta.json          step, W&B run id, and every file's size (a checkpoint is complete when they match)
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import rl_selfdistill.run.rundir as rundir

CHECKPOINT_PREFIX = "ckpt_"
TEMP_PREFIX = ".tmp-"
REPLAY_BUFFER = "replay_buffer.pkl"
RNG = "rng.pkl"
META = "meta.json"


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint folder was written at, from its name; None for anything else."""
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint is complete when its meta.json exists and every file it lists has the recorded size."""
    try:
        meta = json.loads((path / META).read_text())
        return all((path / name).stat().st_size == size for name, size in meta["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / rundir.CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(steps, path) for path in folder.iterdir() if (steps := checkpoint_step(path)) is not None]
    return [path for _, path in sorted(found) if is_complete_checkpoint(path)]


def rng_state(model: Any) -> dict[str, Any]:
    """Every RNG that training draws from: python, numpy, torch (CPU and CUDA) and the action space's."""
    import numpy as np
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(model: Any, state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def write_checkpoint(
    run_dir: Path, model: Any, *, wandb_run_id: str | None, keep: int, save_replay_buffer: bool = False
) -> Path:
    """Write model (+teacher, optimizer), VecNormalize stats, RNG state and optionally the replay buffer.

    Atomic: everything goes to a temp folder that is renamed into place once complete.
    """
    folder = Path(run_dir) / rundir.CHECKPOINTS
    folder.mkdir(exist_ok=True)
    steps = int(model.num_timesteps)
    final = folder / f"{CHECKPOINT_PREFIX}{steps:012d}"
    temp = folder / f"{TEMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    # RNG first: saving must not be observed as a draw by anything below.
    with open(temp / RNG, "wb") as handle:
        pickle.dump(rng_state(model), handle)
    model.save(temp / rundir.MODEL)
    if model.get_vec_normalize_env() is not None:
        model.get_vec_normalize_env().save(str(temp / rundir.VECNORMALIZE))
    if save_replay_buffer and getattr(model, "replay_buffer", None) is not None:
        model.save_replay_buffer(temp / REPLAY_BUFFER)
    files = {path.name: path.stat().st_size for path in temp.iterdir()}
    meta = {"num_timesteps": steps, "wandb_run_id": wandb_run_id, "created_at": rundir.utc_now(), "files": files}
    (temp / META).write_text(json.dumps(meta, indent=2))
    _fsync_tree(temp)
    if final.exists():  # same step saved before a crash: replace it with this one
        shutil.rmtree(final)
    os.rename(temp, final)
    _prune_checkpoints(run_dir, keep)
    return final


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    complete = list_checkpoints(run_dir)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in (Path(run_dir) / rundir.CHECKPOINTS).glob(f"{TEMP_PREFIX}*"):
        if not leftover.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)  # half-written by a killed process


def has_replay_buffer(checkpoint: Path) -> bool:
    return (checkpoint / REPLAY_BUFFER).exists()


def load_checkpoint(checkpoint: Path, config: dict[str, Any], *, device: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Model restored from a checkpoint with its envs, replay buffer (if saved) and RNG state: (model, eval_env, meta)."""
    from rl_selfdistill.run.build import build_envs, load_model, torch_threads

    meta = json.loads((checkpoint / META).read_text())
    steps = int(meta["num_timesteps"])
    vecnormalize = checkpoint / rundir.VECNORMALIZE
    # Env state is not checkpointed: the envs are re-seeded deterministically from the run seed and the step count.
    env, eval_env = build_envs(
        config, seed=config["seed"] + steps, vecnormalize_path=vecnormalize if vecnormalize.exists() else None
    )
    torch_threads(config)
    model = load_model(config, checkpoint / rundir.MODEL, env, device=device)
    if has_replay_buffer(checkpoint):
        model.load_replay_buffer(checkpoint / REPLAY_BUFFER)
    with open(checkpoint / RNG, "rb") as handle:
        set_rng_state(model, pickle.load(handle))
    env.seed(config["seed"] + steps)
    model._last_obs = None  # makes learn() reset the freshly built envs instead of stepping them un-reset
    return model, eval_env, meta
