"""A small environment with action masks that change every step, to try MaskablePPO (``ppo_mask``) on.

``MaskedIdentity-v0`` is SB3's identity task with invalid actions, like sb3-contrib's ``InvalidActionEnvDiscrete``,
but seeded through ``reset(seed=...)`` (sb3-contrib's draws its masks from NumPy's global generator): each step
shows one of ``n`` symbols, and naming it earns 1. At every step a fresh random set of ``n_illegal`` other actions is
illegal; ``action_masks()`` (the method MaskablePPO asks the env for) returns the legal ones. An episode lasts
``ep_length`` steps, so returns are 0-100 with the defaults; a uniformly random legal action earns 25 on average.

``gymnasium.make("rl_selfdistill.envs.masked:MaskedIdentity-v0")`` imports this module first, which registers the
id: that is the id the env factory passes to gym.make, so subprocess workers find it too.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MASKED_IDS: tuple[str, ...] = ("MaskedIdentity-v0",)


CELL_PIXELS = 32
# rgb_array frames: one cell per action, the symbol shown in white, illegal actions in red, legal ones in grey.
SHOWN, ILLEGAL, LEGAL = (255, 255, 255), (200, 40, 40), (90, 90, 90)


class MaskedIdentityEnv(gym.Env[int, int]):
    """Name the symbol shown; the set of illegal actions (never the right one) changes every step."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, n: int = 10, n_illegal: int = 6, ep_length: int = 100, render_mode: str | None = None) -> None:
        if not 0 <= n_illegal < n:
            raise ValueError(f"n_illegal must be in [0, n), got {n_illegal} with n={n}")
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(n)
        self.action_space = spaces.Discrete(n)
        self.n, self.n_illegal, self.ep_length = n, n_illegal, ep_length
        self.state = 0
        self.legal = np.ones(n, dtype=bool)
        self.steps = 0

    def _show_next(self) -> None:
        self.state = int(self.np_random.integers(self.n))
        others = np.delete(np.arange(self.n), self.state)
        self.legal = np.ones(self.n, dtype=bool)
        self.legal[self.np_random.choice(others, self.n_illegal, replace=False)] = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        super().reset(seed=seed)
        self.steps = 0
        self._show_next()
        return self.state, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        reward = float(int(action) == self.state)
        self.steps += 1
        self._show_next()
        return self.state, reward, False, self.steps >= self.ep_length, {}

    def action_masks(self) -> np.ndarray:
        """The legal actions of the current step (True = legal)."""
        return self.legal.copy()

    def render(self) -> np.ndarray | None:
        """A strip of `n` cells (rgb_array): what `evaluate --video` records."""
        if self.render_mode != "rgb_array":
            return None
        colours = np.where(self.legal[:, None], np.array(LEGAL), np.array(ILLEGAL)).astype(np.uint8)
        colours[self.state] = SHOWN
        strip = np.repeat(colours[None, :, :], CELL_PIXELS, axis=0)  # (height, n, 3)
        return np.repeat(strip, CELL_PIXELS, axis=1)  # (height, n * cell, 3)


def gym_id(env_id: str) -> str:
    """The id to give gym.make: it names this module, so any process imports it (and so registers) first."""
    return f"{__name__}:{env_id}"


def register_masked() -> None:
    """Register ``MaskedIdentity-v0`` with Gymnasium (idempotent)."""
    if "MaskedIdentity-v0" not in gym.registry:
        gym.register("MaskedIdentity-v0", entry_point=f"{__name__}:MaskedIdentityEnv")


register_masked()
