"""The divergence guard: a run whose losses, trained parameters or action distribution turn non-finite stops.

`DivergenceGuard` is an SB3 callback that looks only at values that already exist, once per update phase
boundary (`on_rollout_start`: before each PPO/A2C rollout, before each DQN collect between two `train()`
calls), so no env step pays for it:

- the losses the last `train()` recorded in the logger (`WATCHED` keys of `logger.name_to_value`): a few floats,
  at every boundary;
- the trained parameters (those an optimizer updates; target networks and teachers are copies of them), one
  `sum` reduction per tensor, at the first boundary after every `PARAMETER_CHECK_STEPS` env steps. A
  non-finite parameter makes the next phase's losses non-finite, so the losses alone catch it one phase later;
  the parameter check is what makes the in-memory copy below trustworthy. `check_parameters` is also called
  before every checkpoint and before the final model is saved: no file ever holds non-finite weights.

After each passing parameter check the guard keeps an in-memory copy of the agent's state dicts (networks,
optimizer, teachers: what `get_parameters()` returns), the "last good state". On divergence the run keeps its
newest checkpoint, or writes one from that copy when the copy is newer (`keep_last_good`), and never saves
the bad weights. torch's own check of a distribution built from non-finite parameters (a `ValueError` raised
inside `torch.distributions`, e.g. a Normal with a NaN mean during an update) is the same divergence:
`diverged_from` turns exactly that error, and no other, into `RunDiverged`.
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from rl_selfdistill.errors import UsageError

# Parameters are checked (and the last good state copied) at most once per this many env steps: a DQN has an
# update phase every few env steps, and copying an Atari Q-network that often would cost more than the check.
PARAMETER_CHECK_STEPS = 1024
# Logged values that are losses or KL divergences: non-finite only when training has diverged.
# (train/explained_variance is NaN by definition when the returns have zero variance; it is not watched.)
WATCHED_PREFIXES = ("train/", "distill/")
HINT = "lower learning_rate, or set max_grad_norm to clip the gradients"
_TORCH_CHECK = re.compile(r"Expected parameter (\w+) .*? of distribution (\w+)\(")


@dataclass(frozen=True)
class Divergence:
    """Where training diverged: the env step it was noticed at and the quantity that was not finite."""

    step: int
    quantity: str


class RunDiverged(UsageError):
    """Training stopped because a loss, a trained parameter or the action distribution became non-finite.

    A UsageError: the run's settings (usually the learning rate) are what to change, and the message is one line.
    `run_dir`, `kept` (the last good checkpoint, or None) and `kept_step` are filled in by the run that stops.
    """

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence)
        self.divergence = divergence
        self.run_dir: str | None = None
        self.kept: str | None = None
        self.kept_step: int | None = None

    def __str__(self) -> str:
        where = f"run {self.run_dir!r} " if self.run_dir else ""
        if self.kept is not None:
            kept = f"{where}kept its last good checkpoint {self.kept} (step {self.kept_step}), no model.zip"
        else:
            kept = f"{where}has no checkpoint with finite weights, and no model.zip"
        return f"training diverged at step {self.divergence.step}: {self.divergence.quantity} is not finite; {HINT}; {kept}"

    def record_kept(self, run_dir: Path, kept: tuple[Path, int] | None) -> None:
        self.run_dir = str(run_dir)
        if kept is not None:
            self.kept, self.kept_step = kept[0].relative_to(run_dir).as_posix(), kept[1]

    def as_record(self) -> dict[str, Any]:
        """What run.json records under `divergence`."""
        return {
            "step": self.divergence.step,
            "quantity": self.divergence.quantity,
            "checkpoint": self.kept,
            "checkpoint_step": self.kept_step,
        }


def non_finite_loss(values: Mapping[str, Any]) -> str | None:
    """The first watched logger key whose value is a non-finite number, or None."""
    for key, value in values.items():
        if not key.startswith(WATCHED_PREFIXES) or not _is_loss(key):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and not math.isfinite(value):
            return key
        if hasattr(value, "dtype") and getattr(value, "size", 0) == 1 and not math.isfinite(float(value)):
            return key  # numpy scalars (SB3 records np.mean of the phase's losses)
    return None


def _is_loss(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return "loss" in name or name.endswith("kl")


def trained_parameters(model: Any) -> dict[str, list[Any]]:
    """The parameters each optimizer of `model` updates, grouped by the network (state-dict name) holding them."""
    import torch

    names, _ = model._get_torch_save_params()
    objects = {name: _attribute(model, name) for name in names}
    optimizers = [obj for obj in objects.values() if isinstance(obj, torch.optim.Optimizer)]
    updated = {id(param) for optimizer in optimizers for group in optimizer.param_groups for param in group["params"]}
    return {
        name: [p for p in obj.parameters() if id(p) in updated]
        for name, obj in objects.items()
        if isinstance(obj, torch.nn.Module)
    }


def _attribute(model: Any, dotted: str) -> Any:
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def non_finite_network(groups: Mapping[str, list[Any]]) -> str | None:
    """The name of the first network with a non-finite tensor, or None.

    One `sum` per tensor and one reduction over them: NaN or inf anywhere makes the total non-finite. A total
    that overflows although every element is finite is confirmed element by element before it counts.
    """
    import torch

    with torch.no_grad():
        for name, tensors in groups.items():
            if not tensors:
                continue
            total = torch.stack([tensor.sum() for tensor in tensors]).sum()
            if not bool(torch.isfinite(total)) and not all(bool(torch.isfinite(tensor).all()) for tensor in tensors):
                return name
    return None


def clone_state(value: Any) -> Any:
    """A deep copy of a state-dict tree (dicts, lists, tensors) that shares no tensor storage with the original."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((key, clone_state(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(clone_state(item) for item in value)
    return value


def state_is_finite(state: Mapping[str, Any]) -> bool:
    """Every floating-point tensor of a `get_parameters()` tree is finite (optimizer moments included)."""
    import torch

    def finite(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return not value.is_floating_point() or bool(torch.isfinite(value).all())
        if isinstance(value, dict):
            return all(finite(item) for item in value.values())
        if isinstance(value, list | tuple):
            return all(finite(item) for item in value)
        return True

    return finite(dict(state))


def diverged_from(error: BaseException, step: int) -> RunDiverged | None:
    """`RunDiverged` for torch's check of a distribution built from non-finite parameters; None for anything else.

    torch raises a plain ValueError from `Distribution.__init__` ("Expected parameter loc ... of distribution
    Normal(...) to satisfy the constraint Real(), but found invalid values"); it is recognised by its message
    and by being raised inside torch.distributions, so that no other ValueError is ever taken for a divergence.
    """
    if not isinstance(error, ValueError) or isinstance(error, UsageError):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or not _in_torch_distributions(frames[-1].filename):
        return None
    match = _TORCH_CHECK.search(str(error))
    if match is None:
        return None
    parameter, distribution = match.groups()
    return RunDiverged(Divergence(step, f"action distribution ({parameter} of {distribution})"))


def as_divergence(error: Exception, guard: DivergenceGuard | None, step: int) -> RunDiverged | None:
    """The RunDiverged that `error` is: the guard's own, or (guard on) torch's check of a NaN distribution; else None."""
    if isinstance(error, RunDiverged):
        return error
    return diverged_from(error, step) if guard is not None else None


def _in_torch_distributions(filename: str) -> bool:
    parts = Path(filename).parts
    return any(parts[i : i + 2] == ("torch", "distributions") for i in range(len(parts) - 1))


class DivergenceGuard(BaseCallback):
    """Raises `RunDiverged` at the first update-phase boundary where a loss or a trained parameter is not finite."""

    def __init__(self, parameter_check_steps: int = PARAMETER_CHECK_STEPS) -> None:
        super().__init__()
        self.parameter_check_steps = parameter_check_steps
        self.next_parameter_check = 0
        self.last_good: dict[str, Any] | None = None
        self.last_good_step: int | None = None
        self.evaluation: Any = None

    def before_evaluations_of(self, evaluation: Any) -> None:
        """Check the parameters on the steps where `evaluation` (an EvalCallback after the guard) will evaluate.

        Between two checks an off-policy agent may act with weights that became non-finite in an update whose loss
        was still finite (an overflowing gradient); an evaluation then would score them, and save them as
        best_model.zip. The guard's `_on_step` is called every step anyway, as every callback's is.
        """
        self.evaluation = evaluation

    def _on_training_start(self) -> None:
        self.next_parameter_check = int(self.model.num_timesteps)  # the state training starts from is the first copy

    def _on_rollout_start(self) -> None:
        self.check_losses()
        if self.model.num_timesteps >= self.next_parameter_check:
            self.check_parameters()
            self._keep_copy()
            self.next_parameter_check = int(self.model.num_timesteps) + self.parameter_check_steps

    def _on_step(self) -> bool:
        evaluation = self.evaluation
        # The evaluation callback comes later in the list: its n_calls is one behind at this point.
        if evaluation is not None and evaluation.eval_freq > 0 and (evaluation.n_calls + 1) % evaluation.eval_freq == 0:
            self.check_parameters()
        return True

    def check_losses(self) -> None:
        key = non_finite_loss(self.model.logger.name_to_value)
        if key is not None:
            raise RunDiverged(Divergence(int(self.model.num_timesteps), key))

    def check_parameters(self) -> None:
        network = non_finite_network(trained_parameters(self.model))
        if network is not None:
            raise RunDiverged(Divergence(int(self.model.num_timesteps), f"{network} parameters"))

    def _keep_copy(self) -> None:
        self.last_good = {name: clone_state(state) for name, state in self.model.get_parameters().items()}
        self.last_good_step = int(self.model.num_timesteps)


def keep_last_good(
    guard: DivergenceGuard | None, model: Any, run_dir: Path, write_checkpoint: Callable[[], Path]
) -> tuple[Path, int] | None:
    """The last good checkpoint of a diverged run in `run_dir`: (folder, step), or None when there is none.

    The newest checkpoint is kept, unless the guard's in-memory copy is newer: then the copy is loaded into
    `model` (networks, optimizer, teachers; counters and RNG states stay those of the divergence) and
    `write_checkpoint()` saves it at the copy's step. A copy that holds a non-finite tensor anyway (a teacher
    refreshed from a bad student after the copy was taken) is never written.
    """
    from rl_selfdistill.run.checkpoints import checkpoint_step, list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    newest_checkpoint = (checkpoints[-1], int(checkpoint_step(checkpoints[-1]) or 0)) if checkpoints else None
    copy, step = (guard.last_good, guard.last_good_step) if guard is not None else (None, None)
    if copy is None or step is None or (newest_checkpoint is not None and newest_checkpoint[1] >= step):
        return newest_checkpoint
    model.set_parameters(copy, exact_match=False)  # teachers created after the copy are checked below
    if not state_is_finite(model.get_parameters()):
        return newest_checkpoint
    model.num_timesteps, diverged_at = step, model.num_timesteps
    try:
        return write_checkpoint(), step
    finally:
        model.num_timesteps = diverged_at  # run.json's num_timesteps_done says how far training got
