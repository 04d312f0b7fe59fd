"""Rollout buffers that remember which flat indices the last minibatch drew.

PPO's minibatches are drawn inside ``RolloutBuffer.get`` from a permutation the caller
never sees; the teacher's distribution parameters for the whole rollout are stored once
in the same flat order, and these indices select the minibatch's rows from them.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


class IndexedRolloutBuffer(RolloutBuffer):
    last_batch_indices: np.ndarray

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> RolloutBufferSamples:
        self.last_batch_indices = batch_inds
        return super()._get_samples(batch_inds, env)


class IndexedDictRolloutBuffer(DictRolloutBuffer):
    last_batch_indices: np.ndarray

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> DictRolloutBufferSamples:
        self.last_batch_indices = batch_inds
        return super()._get_samples(batch_inds, env)
