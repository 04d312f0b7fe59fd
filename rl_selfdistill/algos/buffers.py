"""Rollout buffers that remember which flat indices the last minibatch drew, and raw observations.

PPO's minibatches are drawn inside ``RolloutBuffer.get`` from a permutation the caller
never sees; the teacher's distribution parameters for the whole rollout are stored once
in the same flat order, and these indices select the minibatch's rows from them.

Under VecNormalize the buffer holds observations normalised with the statistics of the
moment they were collected. A teacher must see observations normalised the way it was
trained, so with ``raw_observation_source`` set the buffer also keeps the unnormalised
observation of every step, in the same layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


class IndexedRolloutBuffer(RolloutBuffer):
    last_batch_indices: np.ndarray
    #: Returns the unnormalised version of the observations the policy will act on next (VecNormalize.get_original_obs).
    raw_observation_source: Callable[[], np.ndarray] | None = None
    raw_observations: np.ndarray | None = None
    _pending_raw: np.ndarray | None = None

    def reset(self) -> None:
        super().reset()
        if self.raw_observation_source is None:  # e.g. set_env to an env without VecNormalize: keep nothing stale
            self.raw_observations = self._pending_raw = None
            return
        self.raw_observations = np.zeros_like(self.observations)
        # Nothing has stepped yet this rollout: the source holds the raw form of the first observation added.
        self._pending_raw = np.array(self.raw_observation_source())

    def add(self, obs: np.ndarray, *args: object, **kwargs: object) -> None:
        if self.raw_observations is not None and self._pending_raw is not None and self.raw_observation_source is not None:
            self.raw_observations[self.pos] = self._pending_raw.reshape(self.observations[self.pos].shape)
            # The env has stepped: the source now holds the raw form of the next observation to be added.
            self._pending_raw = np.array(self.raw_observation_source())
        super().add(obs, *args, **kwargs)  # type: ignore[arg-type]

    def flat_raw_observations(self) -> np.ndarray | None:
        """Raw observations in the flat (env-major) order of ``get``'s indices, or None when not kept."""
        return None if self.raw_observations is None else self.swap_and_flatten(self.raw_observations)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> RolloutBufferSamples:
        self.last_batch_indices = batch_inds
        return super()._get_samples(batch_inds, env)


class IndexedDictRolloutBuffer(DictRolloutBuffer):
    """Dict observations: minibatch indices only (teachers under VecNormalize see the current statistics)."""

    last_batch_indices: np.ndarray

    def flat_raw_observations(self) -> None:
        return None

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> DictRolloutBufferSamples:
        self.last_batch_indices = batch_inds
        return super()._get_samples(batch_inds, env)
