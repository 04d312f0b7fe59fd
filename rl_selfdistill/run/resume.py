"""The rules of `train --resume`: which changes apply, when a finished run may continue, what is said about it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.checkpoints import checkpoint_step


def apply_changes(config: dict[str, Any], changes: dict[str, Any]) -> None:
    """The resumable changes (request.RESUMABLE) written into a run's config: the budget, or a run option."""
    for name, value in changes.items():
        if name == "n_timesteps":
            config["hyperparams"]["n_timesteps"] = value
        else:
            config["options"][name] = value


def refuse_finished(run_dir: Path, state: dict[str, Any], changes: dict[str, Any]) -> None:
    """A finished run resumes only to extend it: with a budget above the steps it trained (-n, as the Zoo allows)."""
    done = int(state.get("num_timesteps_done") or 0)
    if state.get("status") == "finished" and int(changes.get("n_timesteps") or 0) <= done:
        raise UsageError(
            f"run {str(run_dir)!r} already finished its budget ({done} steps); pass -n above {done} to extend it, "
            "or start a new run instead of --resume"
        )


def say_where_an_extension_starts(run_dir: Path, state: dict[str, Any], checkpoint: Path | None) -> None:
    """An extended run continues from its final checkpoint; a run without one cannot be extended exactly."""
    if state.get("status") != "finished":
        return
    done = int(state.get("num_timesteps_done") or 0)
    if checkpoint is None:
        raise UsageError(f"run {str(run_dir)!r} finished without checkpoints (--save-freq 0): it cannot be extended")
    step = checkpoint_step(checkpoint) or 0
    if step < done:
        print(
            f"resume: extending from {checkpoint.name} (the run finished at step {done}, after its last checkpoint): "
            f"steps {step}-{done} are trained again",
            file=sys.stderr,
        )


def say_if_replay_buffer_restarts(config: dict[str, Any], checkpoint: Path) -> None:
    from rl_selfdistill.algos import registry
    from rl_selfdistill.run.checkpoints import has_replay_buffer

    if registry.get(config["algo"]).training != "off_policy" or has_replay_buffer(checkpoint):
        return
    print(
        f"resume: {checkpoint.name} holds no replay buffer (saved without --save-replay-buffer), so it restarts empty: "
        "the first updates sample only transitions collected after the resume, and the run is not an exact continuation",
        file=sys.stderr,
    )
