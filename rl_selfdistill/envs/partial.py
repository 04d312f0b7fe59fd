"""Partially observed classic control: the RL Zoo's ``<Task>NoVel`` ids, with the velocity terms hidden.

The RL Zoo registers ``CartPoleNoVel-v1`` and ``PendulumNoVel-v1`` (rl_zoo3/import_envs.py) with its
``MaskVelocityWrapper``, which multiplies the observation by a 0/1 mask over the velocity entries: the shape and
bounds stay those of the base task, the velocities read 0. A policy then needs memory (an LSTM) to act well.
The same ids are registered here so that the Zoo's ``ppo_lstm`` presets apply without the Zoo installed.

``gymnasium.make("rl_selfdistill.envs.partial:CartPoleNoVel-v1")`` imports this module first, which registers
the ids: that is the id the env factory passes to gym.make, so subprocess workers find it too.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

# Base task -> indices of its velocity terms in the observation (the Zoo's MaskVelocityWrapper.velocity_indices).
VELOCITY_INDICES: dict[str, tuple[int, ...]] = {"CartPole-v1": (1, 3), "Pendulum-v1": (2,)}


def no_velocity_id(base_id: str) -> str:
    name, _, version = base_id.rpartition("-v")
    return f"{name}NoVel-v{version}"


PARTIAL_IDS: dict[str, str] = {no_velocity_id(base): base for base in VELOCITY_INDICES}


class MaskVelocityWrapper(gym.ObservationWrapper):
    """Zeroes the velocity entries of the observation (shape and observation space unchanged)."""

    def __init__(self, env: gym.Env, base_id: str) -> None:
        super().__init__(env)
        self.mask = np.ones(env.observation_space.shape, dtype=env.observation_space.dtype)
        self.mask[list(VELOCITY_INDICES[base_id])] = 0

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation * self.mask


def make_no_velocity(base_id: str, **kwargs: Any) -> gym.Env:
    """The velocity-hidden version of `base_id` (the entry point of the registered ids)."""
    return MaskVelocityWrapper(gym.make(base_id, **kwargs), base_id)


def gym_id(env_id: str) -> str:
    """The id to give gym.make: it names this module, so any process imports it (and so registers) first."""
    return f"{__name__}:{env_id}"


def register_partial() -> None:
    """Register the ``<Task>NoVel`` ids with Gymnasium (idempotent)."""
    for env_id, base_id in PARTIAL_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=f"{__name__}:make_no_velocity", kwargs={"base_id": base_id})


register_partial()
