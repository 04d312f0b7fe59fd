"""The teacher: frozen copies of the student's network, refreshed on a fixed step cadence."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from rl_selfdistill.distill.config import DistillConfig


def frozen_copy(network: nn.Module) -> nn.Module:
    """A deep copy of ``network`` that never trains: no gradients, eval mode, same device.

    SB3 policies carry their optimizer as an attribute; the memo maps it to None so the
    copy does not duplicate the Adam moments (and cannot step).
    """
    memo: dict[int, Any] = {}
    optimizer = getattr(network, "optimizer", None)
    if optimizer is not None:
        memo[id(optimizer)] = None
    # SB3 policies cache the last action distribution (non-leaf tensors, which cannot be deep-copied);
    # the copy gets its own empty cache, filled at its first forward pass.
    action_dist = getattr(network, "action_dist", None)
    last_distribution = getattr(action_dist, "distribution", None)
    if last_distribution is not None:
        memo[id(last_distribution)] = None
    # gSDE also caches its sampled exploration noise, drawn from the log_std parameter (non-leaf as well).
    for value in vars(action_dist).values() if action_dist is not None else ():
        if isinstance(value, th.distributions.Distribution) or (isinstance(value, th.Tensor) and not value.is_leaf):
            memo[id(value)] = None
        # sb3-contrib's maskable multi-categorical keeps a list of its last distributions: the copy's starts empty.
        if isinstance(value, list) and any(isinstance(item, th.distributions.Distribution) for item in value):
            memo[id(value)] = []
    teacher = copy.deepcopy(network, memo)
    teacher.requires_grad_(False)
    teacher.train(False)
    return teacher


class Teacher:
    """Refresh logic and bookkeeping of the teacher networks.

    Modes:
      - ``snapshot``: one network, overwritten with the student's weights at every refresh.
      - ``ema``: one network; the first refresh copies the student, later ones move it
        towards the student by Polyak averaging with ``tau`` (1 = snapshot). With
        ``teacher_update_unit="gradient_steps"`` and interval 1 it is updated every gradient step.
      - ``ensemble``: the last ``ensemble_size`` snapshots; the loss averages the KL to each.
      - ``lagged``: the student exactly ``update_interval`` units ago (gradient steps or update
        phases): a ring of interval + 1 copies, one pushed per unit; no teacher until it is full.
      - ``reset``: one snapshot taken just before the algorithm re-initialises the student.
      - ``target`` (DQN only): the target Q-network is the teacher; no copy is kept here.

    ``update_unit`` says what ``update_interval`` counts: environment steps (a refresh is due
    when the step count crosses the next multiple, so the cadence does not drift with the
    rollout size and survives save/load), gradient steps or update phases (a PPO rollout's
    epochs, a DQN ``train()`` call), counted by ``tick``.

    Each copy keeps the observation-normalisation statistics it was trained with (``obs_stats``,
    a VecNormalize ``RunningMeanStd`` or None), so the algorithm can query it with its own.

    The networks live in an ``nn.ModuleList`` owned by the algorithm (saved as a state dict
    by SB3); this object holds only counters, settings and statistics, which SB3 pickles.
    """

    def __init__(self, config: DistillConfig) -> None:
        self.mode = config.teacher_mode
        self.update_interval = config.teacher_update_interval
        self.update_unit = config.teacher_update_unit
        self.tau = config.teacher_tau
        self.capacity = {"ensemble": config.teacher_ensemble_size, "lagged": config.teacher_update_interval + 1}.get(
            self.mode, 1
        )
        self.n_updates = 0
        self.last_update_step: int | None = None
        self._last_interval_index = 0
        self.ticks = 0
        self.obs_stats: list[Any] = []
        self.member_steps: list[int] = []  # the env step at which each copy was taken, oldest first
        self.networks = nn.ModuleList()

    def __getstate__(self) -> dict[str, Any]:
        # The networks are saved as a state dict by the algorithm, never pickled.
        state = self.__dict__.copy()
        state["saved_member_count"] = len(state.pop("networks", ()))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.member_steps = []  # absent from models saved before it was kept
        self.__dict__.update(state)
        self.networks = nn.ModuleList()

    def distilled_member_step(self) -> int | None:
        """The env step at which the copy the loss distils from was taken (for distill/teacher_age).

        For ``lagged`` that is the oldest copy, the one ``active_members`` returns; otherwise the latest refresh.
        """
        if self.mode == "lagged":
            return self.member_steps[0] if self.active_members() and self.member_steps else None
        return self.last_update_step

    def build_storage(self, template: nn.Module) -> nn.ModuleList:
        """Empty-weighted copies of ``template`` for as many members as were saved, bound as storage.

        After a load, SB3 fills them from the saved state dict.
        """
        count = getattr(self, "saved_member_count", len(self.networks))
        self.bind(nn.ModuleList(frozen_copy(template) for _ in range(count)))
        return self.networks

    @property
    def n_members(self) -> int:
        """How many network copies this teacher holds now (0 before the first refresh)."""
        return len(self.networks)

    @property
    def is_ready(self) -> bool:
        return bool(self.active_members()) if self.mode == "lagged" else self.n_updates > 0

    @property
    def changes_every_gradient_step(self) -> bool:
        """True when the teacher moves inside an update phase: its outputs cannot be computed once per phase."""
        return self.update_unit == "gradient_steps" and self.mode != "target"

    def active_members(self) -> list[tuple[nn.Module, Any]]:
        """The (network, observation statistics) pairs the loss distils from now, oldest first."""
        members = list(zip(self.networks, self.obs_stats or [None] * len(self.networks)))
        if self.mode == "lagged":
            return members[:1] if len(members) == self.capacity else []
        return members

    def bind(self, networks: nn.ModuleList) -> None:
        """Use ``networks`` (owned by the algorithm) as the storage of the teacher copies."""
        self.networks = networks

    def is_due(self, num_timesteps: int) -> bool:
        """A refresh counted in env steps is due (never for the other units)."""
        return self.update_unit == "env_steps" and num_timesteps // self.update_interval > self._last_interval_index

    def rebase_step_count(self, steps_removed: int, num_timesteps: int) -> None:
        """Follow a step counter set back by ``steps_removed`` (``learn(reset_num_timesteps=True)`` on a trained model).

        Without this an env-step teacher would wait until the new count passed the old one before its next refresh.
        Refreshes are again due at each multiple of the interval in the new count, and the teacher keeps its age
        (``last_update_step`` may go below 0: the teacher was taken before this count began).
        """
        if self.last_update_step is not None:
            self.last_update_step -= steps_removed
        self.member_steps = [step - steps_removed for step in self.member_steps]
        if self.update_unit == "env_steps":
            self._last_interval_index = num_timesteps // self.update_interval

    def tick(self, unit: str, student: nn.Module, num_timesteps: int, obs_stats: Any = None) -> bool:
        """Count one gradient step or update phase; refresh (push, for ``lagged``) when due. True if refreshed."""
        if unit != self.update_unit:
            return False
        self.ticks += 1
        if self.mode != "lagged" and self.ticks % self.update_interval != 0:
            return False
        self.refresh(student, num_timesteps, obs_stats)
        return True

    def refresh(self, student: nn.Module, num_timesteps: int, obs_stats: Any = None) -> None:
        """Take the student's current weights (and observation statistics) according to the mode."""
        if self.mode != "target":
            self._refresh_copies(student, obs_stats)
            self.member_steps = [*self.member_steps, num_timesteps][-len(self.networks) :]
        self.n_updates += 1
        self.last_update_step = num_timesteps
        if self.update_unit == "env_steps":
            self._last_interval_index = num_timesteps // self.update_interval

    def _refresh_copies(self, student: nn.Module, obs_stats: Any) -> None:
        stats = copy.deepcopy(obs_stats)
        if self.mode == "ema" and len(self.networks) > 0:
            teacher = self.networks[0]
            polyak_update(student.parameters(), teacher.parameters(), self.tau)
            # Running statistics (batch norm) are copied, as SB3 does for its target networks.
            polyak_update(student.buffers(), teacher.buffers(), 1.0)
            self.obs_stats = [_average_stats(self.obs_stats[0], stats, self.tau)]
            return
        if len(self.networks) < self.capacity:
            self.networks.append(frozen_copy(student))
            self.obs_stats = [*self.obs_stats, stats]
            return
        # Full: recycle the oldest copy's storage for the newest snapshot.
        oldest = self.networks[0]
        copy_weights(oldest, student)
        members = [*list(self.networks)[1:], oldest]
        for index, member in enumerate(members):
            self.networks[index] = member
        self.obs_stats = [*self.obs_stats[1:], stats]


def copy_weights(target: nn.Module, source: nn.Module) -> None:
    """Copy parameters and buffers in place (a lagged teacher does this every gradient step: no state_dict dicts)."""
    with th.no_grad():
        targets = [*target.parameters(), *target.buffers()]
        sources = [*source.parameters(), *source.buffers()]
        th._foreach_copy_(targets, sources)


def _average_stats(old: Any, new: Any, tau: float) -> Any:
    """Polyak average of two VecNormalize RunningMeanStd (the EMA teacher's statistics follow its weights)."""
    if old is None or new is None:
        return new
    averaged = copy.deepcopy(new)
    averaged.mean = (1 - tau) * old.mean + tau * new.mean
    averaged.var = (1 - tau) * old.var + tau * new.var
    return averaged


def renormalised_for_teacher(vec_normalize: VecNormalize | None, observations: Any, stats: Any) -> Any:
    """Replay observations (normalised with the current VecNormalize statistics) re-normalised with a teacher's own.

    Undoing the current statistics is exact except where an observation was clipped at VecNormalize's clip_obs.
    Dict observations are re-normalised key by key (the keys VecNormalize normalises; the others pass unchanged).
    """
    if stats is None or vec_normalize is None:
        return observations
    if isinstance(observations, dict):
        raw = vec_normalize.unnormalize_obs({key: value.cpu().numpy() for key, value in observations.items()})
        keys = vec_normalize.norm_obs_keys or []
        return {
            key: _as_tensor_like(vec_normalize._normalize_obs(raw[key], stats[key]), value) if key in keys else value
            for key, value in observations.items()
        }
    raw = vec_normalize.unnormalize_obs(observations.cpu().numpy())
    return _as_tensor_like(vec_normalize._normalize_obs(raw, stats), observations)


def _as_tensor_like(array: np.ndarray, like: th.Tensor) -> th.Tensor:
    return th.as_tensor(array, dtype=like.dtype, device=like.device)
