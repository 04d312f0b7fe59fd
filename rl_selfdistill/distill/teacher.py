"""The teacher: frozen copies of the student's network, refreshed on a fixed step cadence."""

from __future__ import annotations

import copy
from typing import Any

import torch as th
from stable_baselines3.common.utils import polyak_update
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
    last_distribution = getattr(getattr(network, "action_dist", None), "distribution", None)
    if last_distribution is not None:
        memo[id(last_distribution)] = None
    teacher = copy.deepcopy(network, memo)
    teacher.requires_grad_(False)
    teacher.train(False)
    return teacher


class Teacher:
    """Refresh logic and bookkeeping of the teacher networks.

    Modes:
      - ``snapshot``: one network, overwritten with the student's weights at every refresh.
      - ``ema``: one network; the first refresh copies the student, later ones move it
        towards the student by Polyak averaging with ``tau`` (1 = snapshot).
      - ``ensemble``: the last ``ensemble_size`` snapshots; the loss averages the KL to each.
      - ``target`` (DQN only): the target Q-network is the teacher; no copy is kept here.

    A refresh is due when the step count crosses the next multiple of ``update_interval``,
    so the cadence does not drift with the rollout size and survives save/load.

    The networks live in an ``nn.ModuleList`` owned by the algorithm (saved as a state dict
    by SB3); this object holds only counters and settings, which SB3 pickles with the model.
    """

    def __init__(self, config: DistillConfig) -> None:
        self.mode = config.teacher_mode
        self.update_interval = config.teacher_update_interval
        self.tau = config.teacher_tau
        self.ensemble_size = config.teacher_ensemble_size if self.mode == "ensemble" else 1
        self.n_updates = 0
        self.last_update_step: int | None = None
        self._last_interval_index = 0
        self.networks = nn.ModuleList()

    def __getstate__(self) -> dict[str, Any]:
        # The networks are saved as a state dict by the algorithm, never pickled.
        state = self.__dict__.copy()
        state["saved_member_count"] = len(state.pop("networks", ()))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.networks = nn.ModuleList()

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
        return self.n_updates > 0

    def bind(self, networks: nn.ModuleList) -> None:
        """Use ``networks`` (owned by the algorithm) as the storage of the teacher copies."""
        self.networks = networks

    def is_due(self, num_timesteps: int) -> bool:
        return num_timesteps // self.update_interval > self._last_interval_index

    def refresh(self, student: nn.Module, num_timesteps: int) -> None:
        """Take the student's current weights according to the mode."""
        if self.mode != "target":
            self._refresh_copies(student)
        self.n_updates += 1
        self.last_update_step = num_timesteps
        self._last_interval_index = num_timesteps // self.update_interval

    def _refresh_copies(self, student: nn.Module) -> None:
        if self.mode == "ema" and len(self.networks) > 0:
            teacher = self.networks[0]
            polyak_update(student.parameters(), teacher.parameters(), self.tau)
            # Running statistics (batch norm) are copied, as SB3 does for its target networks.
            polyak_update(student.buffers(), teacher.buffers(), 1.0)
            return
        if len(self.networks) < self.ensemble_size:
            self.networks.append(frozen_copy(student))
            return
        # Full: recycle the oldest copy's storage for the newest snapshot.
        oldest = self.networks[0]
        with th.no_grad():
            oldest.load_state_dict(student.state_dict())
        members = [*list(self.networks)[1:], oldest]
        for index, member in enumerate(members):
            self.networks[index] = member
