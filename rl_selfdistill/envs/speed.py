"""Environment measurements without a network: raw stepping speed and random-policy scores.

- raw_step_fps: env steps per second with random actions and no network (the ceiling for a backend).
- random_policy_score: mean full-episode return of uniformly random actions (used for the suites' random_score).

scripts/env_speed.py runs these from the command line, alternating backends with the paired timer
of `rl_selfdistill.benchmark.throughput`, which also times rollout collection and training.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rl_selfdistill.envs.factory import make_vec_env


def _random_actions(venv: Any, n: int, seed: int) -> list[np.ndarray]:
    space = venv.action_space
    space.seed(seed)
    return [np.stack([space.sample() for _ in range(venv.num_envs)]) for _ in range(n)]


def raw_step_fps(env_id: str, backend: str, n_envs: int = 8, n_steps: int = 500, seed: int = 0) -> float:
    """Env steps (summed over envs) per second under random actions; actions are drawn before timing."""
    venv = make_vec_env(env_id, n_envs, backend, seed)
    try:
        actions = _random_actions(venv, n_steps, seed)
        venv.reset()
        start = time.perf_counter()
        for action in actions:
            venv.step(action)
        return n_steps * n_envs / (time.perf_counter() - start)
    finally:
        venv.close()


def random_policy_score(env_id: str, n_episodes: int = 100, seed: int = 0, backend: str = "dummy") -> tuple[float, float]:
    """Mean and standard deviation of the full-episode return of uniformly random actions.

    Episodes come from the `episode` infos, so Atari scores are unclipped whole games.
    """
    venv = make_vec_env(env_id, 1, backend, seed)
    returns: list[float] = []
    try:
        venv.reset()
        venv.action_space.seed(seed)
        while len(returns) < n_episodes:
            _, _, _, infos = venv.step(np.array([venv.action_space.sample()]))
            returns.extend(info["episode"]["r"] for info in infos if "episode" in info)
    finally:
        venv.close()
    return float(np.mean(returns)), float(np.std(returns))
