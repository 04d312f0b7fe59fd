"""Checkpoints: written atomically (temp folder, fsync, rename), verified before use, pruned, loaded with every RNG state.

checkpoints/ckpt_<step, 12 digits>/
  model.zip          model incl. teacher, optimizer and coefficient state
  vecnormalize.pkl   VecNormalize statistics (when the preset normalises)
  replay_buffer.pkl  off-policy replay buffer, only with --save-replay-buffer
  rng.pkl            python, numpy, torch (CPU and CUDA) and action-space RNG states
  meta.json          step, W&B run id, the run's clocks, every file's size ("files") and SHA-256 ("sha256")
checkpoints/damaged-<UTC time>/ckpt_<step>/   damaged checkpoints a resume moved out of the way (never deleted)

What a resume finds in checkpoints/ (`inspect_checkpoints`), under the run's lock:
- usable: meta.json loads and names the folder's step, every file it lists has its size and SHA-256 (checkpoints
  written before checksums were recorded: sizes only), model.zip opens as a zip whose members pass their CRC
  checks and holds a saved model, rng.pkl and vecnormalize.pkl unpickle. The newest usable one is loaded.
- damaged (kept: moved to damaged-<UTC time>/, never deleted): a non-empty ckpt_ folder newer than the one loaded
  (every one, when none is usable) that fails any check. Files only go missing from a ckpt_ folder when they are
  deleted, never by a killed write (written in a temp folder, renamed once complete) or prune (renamed first), so a
  newest checkpoint with missing files is damage too.
- leftover (removed, with a note): temp folders of a killed write (.tmp-*) or prune (.trash-*), empty ckpt_
  folders, and ckpt_ folders older than the one loaded that lack meta.json or a file it lists: what a prune
  killed in the middle of deleting files left behind (pruning now renames first, older versions deleted in place).
  A leftover never holds data a resume could use.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rl_selfdistill.run.rundir as rundir
from rl_selfdistill.errors import UsageError

CHECKPOINT_PREFIX = "ckpt_"
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
DAMAGED_PREFIX = "damaged-"
REPLAY_BUFFER = "replay_buffer.pkl"
RNG = "rng.pkl"
META = "meta.json"
_HASH_CHUNK = 2**20


class UnrecoverableCheckpoints(UsageError):
    """Every checkpoint of a run is damaged, so a resume has nothing to continue from; nothing was changed.

    `problem` says what is wrong without a remedy, for callers that phrase the remedy in their own terms.
    """

    def __init__(self, run_dir: Path, damaged: list[tuple[Path, str]]) -> None:
        self.run_dir, self.damaged = Path(run_dir), damaged
        found = "; ".join(f"{path.name}: {reason}" for path, reason in damaged)
        self.problem = (
            f"run {str(run_dir)!r} has no usable checkpoint, all {len(damaged)} are damaged ({found}); nothing was changed"
        )
        super().__init__(
            f"{self.problem}; resume with restart_if_unrecoverable=True to start it over from step 0 "
            f"(the damaged checkpoints are kept in {rundir.CHECKPOINTS}/{DAMAGED_PREFIX}<time>/)"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (process pools, Ray) despite its own constructor
        return type(self), (self.run_dir, self.damaged)


@dataclass
class Recovery:
    """What a resume found in checkpoints/ (see the module docstring); nothing is changed until `apply_recovery`."""

    checkpoint: Path | None = None
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)

    @property
    def unrecoverable(self) -> bool:
        return self.checkpoint is None and bool(self.damaged)


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint folder was written at, from its name; None for anything else."""
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def _read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads((path / META).read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise ValueError("no file list")
    return meta


def is_complete_checkpoint(path: Path) -> bool:
    """Cheap (no file is read): meta.json exists and every file it lists has the recorded size. See `checkpoint_problem`."""
    try:
        return all((path / name).stat().st_size == size for name, size in _read_meta(path)["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Every ckpt_<step> folder of a run, whatever its state, oldest first."""
    folder = Path(run_dir) / rundir.CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(steps, path) for path in folder.iterdir() if (steps := checkpoint_step(path)) is not None and path.is_dir()]
    return [path for _, path in sorted(found)]


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (`is_complete_checkpoint`: sizes only, contents not read), oldest first."""
    return [path for path in checkpoint_folders(run_dir) if is_complete_checkpoint(path)]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Members every SB3 model archive has. Checked because a truncated model.zip can still open as a zip: the
# torch archive stored inside it (policy.pth) has its own end record, which zipfile then finds.
_MODEL_MEMBERS = ("data", "_stable_baselines3_version")


def zip_problem(path: Path) -> str | None:
    """Why `path` is not a readable SB3 model zip (truncated, flipped bytes: every member's CRC is checked), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            corrupt = archive.testzip()
            names = set(archive.namelist())
    except Exception as error:  # noqa: BLE001 - whatever stops the archive from being read means it is damaged
        return f"{path.name}: not a readable zip ({type(error).__name__}: {error})"
    if corrupt is not None:
        return f"{path.name}: member {corrupt!r} fails its CRC check"
    missing = [name for name in _MODEL_MEMBERS if name not in names]
    return f"{path.name}: not a saved model (no {missing[0]!r} in it; truncated?)" if missing else None


def _unpickle_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            pickle.load(handle)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means the loader would fail on it too
        return f"{path.name}: cannot be unpickled ({type(error).__name__})"
    return None


def _missing_files(path: Path) -> bool:
    """meta.json or a file it lists is absent: what deleting files leaves, as opposed to bad contents."""
    try:
        return any(not (path / name).exists() for name in _read_meta(path)["files"])
    except FileNotFoundError:
        return True
    except (OSError, ValueError, TypeError):
        return False


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be used ("model.zip: checksum mismatch"), or None when it can."""
    try:
        meta = _read_meta(path)
        steps = int(meta["num_timesteps"])
    except FileNotFoundError:
        return f"{META}: missing"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{META}: cannot be read ({type(error).__name__})"
    if steps != checkpoint_step(path):
        return f"{META}: records step {steps}, not the folder's"
    files, digests = meta["files"], meta.get("sha256") or {}  # no sha256: written before checksums were recorded
    for name in (rundir.MODEL, RNG):
        if name not in files:
            return f"{name}: missing"
    for name, size in files.items():
        if not (path / name).is_file():
            return f"{name}: missing"
        if (actual := (path / name).stat().st_size) != size:
            return f"{name}: {actual} bytes, meta.json records {size}: truncated or overwritten"
        if name in digests and sha256(path / name) != digests[name]:
            return f"{name}: checksum mismatch"
    unpickled = [path / name for name in (RNG, rundir.VECNORMALIZE) if name in files]
    return zip_problem(path / rundir.MODEL) or next(filter(None, map(_unpickle_problem, unpickled)), None)


def newest_usable(run_dir: Path, *, warn: bool = True) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest usable checkpoint (None if none is) and the damaged ones newer than it, newest first.

    With `warn`, one line on stderr per damaged checkpoint skipped.
    """
    damaged: list[tuple[Path, str]] = []
    for path in reversed(checkpoint_folders(run_dir)):
        if not any(path.iterdir()):
            continue  # empty: a leftover, nothing in it to use or to keep
        problem = checkpoint_problem(path)
        if problem is None:
            return path, damaged
        if not path.exists():
            continue  # pruned (renamed away at once) by a run writing checkpoints while this reads: not damage
        damaged.append((path, problem))
        if warn:
            print(f"warning: skipping damaged checkpoint {path} ({problem})", file=sys.stderr)
    return None, damaged


def inspect_checkpoints(run_dir: Path) -> Recovery:
    """What a resume would load, keep and remove (see the module docstring). Reads only; the caller holds the lock."""
    checkpoint, damaged = newest_usable(run_dir, warn=False)
    folder = Path(run_dir) / rundir.CHECKPOINTS
    temps = sorted(path for prefix in (TEMP_PREFIX, TRASH_PREFIX) for path in folder.glob(f"{prefix}*"))
    folders = checkpoint_folders(run_dir)
    older = folders[: folders.index(checkpoint)] if checkpoint is not None else []
    empty = [path for path in folders if not any(path.iterdir())]
    partial = [path for path in older if path not in empty and _missing_files(path)]
    return Recovery(checkpoint, damaged, [*temps, *empty, *partial])


def apply_recovery(run_dir: Path, recovery: Recovery) -> None:
    """Move the damaged checkpoints aside and remove the leftovers, saying so in one line each."""
    if recovery.damaged:
        target = _set_aside(run_dir, [path for path, _ in recovery.damaged])
        for path, problem in recovery.damaged:
            if recovery.checkpoint is not None:
                print(
                    f"warning: skipped damaged checkpoint {path.name} ({problem}), kept in {target}; "
                    f"resuming from the older {recovery.checkpoint.name}",
                    file=sys.stderr,
                )
        if recovery.checkpoint is None:
            print(
                f"warning: all {len(recovery.damaged)} checkpoints are damaged, moved to {target}; "
                "starting over from step 0 (logs after step 0 are dropped)",
                file=sys.stderr,
            )
    if recovery.leftovers:
        for path in recovery.leftovers:
            shutil.rmtree(path, ignore_errors=True)
        names = ", ".join(path.name for path in recovery.leftovers)
        print(
            f"note: removed leftovers of killed checkpoint writes or prunes in {Path(run_dir) / rundir.CHECKPOINTS}: {names}",
            file=sys.stderr,
        )


def _set_aside(run_dir: Path, paths: list[Path]) -> Path:
    """Move checkpoint folders into checkpoints/damaged-<UTC time>/ (a new folder; renames, nothing is copied)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = Path(run_dir) / rundir.CHECKPOINTS / f"{DAMAGED_PREFIX}{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = target.with_name(f"{DAMAGED_PREFIX}{stamp}-{suffix}")
    target.mkdir()
    for path in paths:
        os.rename(path, target / path.name)
    return target


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
    run_dir: Path,
    model: Any,
    *,
    wandb_run_id: str | None,
    keep: int,
    save_replay_buffer: bool = False,
    clocks: dict[str, float] | None = None,
) -> Path:
    """Write model (+teacher, optimizer), VecNormalize stats, RNG state and optionally the replay buffer.

    ``clocks`` (the run's wall-clock and CPU time so far) go to meta.json: a resume starts its clocks from them.

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
    files = sorted(temp.iterdir())
    meta = {
        "num_timesteps": steps,
        "wandb_run_id": wandb_run_id,
        "created_at": rundir.utc_now(),
        "clocks": clocks,
        "files": {path.name: path.stat().st_size for path in files},
        "sha256": {path.name: sha256(path) for path in files},
    }
    (temp / META).write_text(json.dumps(meta, indent=2))
    _fsync_tree(temp)
    # Same step saved before (a stop signal right after a periodic checkpoint): this one replaces it.
    replaced = _to_trash(final) if final.exists() else None
    os.rename(temp, final)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    _prune_checkpoints(run_dir, keep)
    return final


def _to_trash(path: Path) -> Path:
    """Rename a checkpoint folder out of the ckpt_ names first (atomic), so that a kill while deleting it leaves
    a .trash- folder for the next resume to remove, never a partial ckpt_ folder."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    os.rename(path, trash)
    return trash


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete the complete checkpoints older than the newest `keep` (by age, contents not read)."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(_to_trash(old), ignore_errors=True)


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
    restore_level_steps(env, steps)
    model._last_obs = None  # makes learn() reset the freshly built envs instead of stepping them un-reset
    return model, eval_env, meta


def restore_level_steps(env: Any, num_timesteps: int) -> None:
    """Give freshly built continual envs their step count before learn() resets them, so their first episode after
    a resume is on the scheduled level (env state is not checkpointed; the count is num_timesteps / n_envs)."""
    from rl_selfdistill.envs.continual import is_continual_vec_env

    if is_continual_vec_env(env):
        env.env_method("set_level_steps", num_timesteps // env.num_envs)
