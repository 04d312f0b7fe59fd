"""Do-nothing scores: what an agent earns by not acting, the other floor a learned policy must beat.

A random policy is the usual floor of a normalised score, but on some tasks doing nothing is far better than
acting at random: in Ant-v5 a still robot collects its healthy reward every step (about +1000 per episode) while
random torques score about -64. A policy that learned nothing useful can then look like progress. The suites
record both, and normalise from the larger of the two (`SuiteEnv.floor_score`).

"Doing nothing" is the zero action for continuous controls (zero torque), and the game's no-op for discrete
ones (NOOP in Atari and MinAtar, "fire no engine" in LunarLander, zero torque in Acrobot, no push in
MountainCar). CartPole has no no-op (it always pushes), so it has no do-nothing score.

Measure with: `python -m rl_selfdistill.envs.floors Ant-v5 HalfCheetah-v5 --episodes 10`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import gymnasium as gym
import numpy as np

from rl_selfdistill.envs.factory import make_vec_env
from rl_selfdistill.envs.registry import resolve
from rl_selfdistill.errors import UsageError

# Discrete ids whose no-op is not action 0; None: the task has no no-op.
NOOP_ACTIONS: dict[str, int | None] = {"CartPole-v1": None, "Acrobot-v1": 1, "MountainCar-v0": 1, "LunarLander-v3": 0}


def do_nothing_action(env_id: str, action_space: gym.Space) -> np.ndarray | int:
    """The action that does nothing in `env_id`; a UsageError when the task has none."""
    if isinstance(action_space, gym.spaces.Box):
        return np.clip(np.zeros(action_space.shape, dtype=action_space.dtype), action_space.low, action_space.high)
    if not isinstance(action_space, gym.spaces.Discrete):
        raise UsageError(f"{env_id}: no do-nothing action for a {type(action_space).__name__} action space")
    family = resolve(env_id).family
    if env_id in NOOP_ACTIONS:
        action = NOOP_ACTIONS[env_id]
    elif family in ("atari", "minatar"):
        action = 0  # NOOP in both
    else:
        raise UsageError(f"{env_id}: which discrete action does nothing is not known; add it to NOOP_ACTIONS")
    if action is None:
        raise UsageError(f"{env_id} has no action that does nothing; use its random score as the floor")
    return action


def do_nothing_score(env_id: str, n_episodes: int = 10, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the full-episode return when always doing nothing (default time limits)."""
    venv = make_vec_env(env_id, 1, "dummy", seed)
    returns: list[float] = []
    try:
        action = np.array([do_nothing_action(env_id, venv.action_space)])
        venv.reset()
        while len(returns) < n_episodes:
            _, _, _, infos = venv.step(action)
            returns.extend(float(info["episode"]["r"]) for info in infos if "episode" in info)
    finally:
        venv.close()
    return float(np.mean(returns)), float(np.std(returns))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the do-nothing score of envs (suites' floor_score).")
    parser.add_argument("env_ids", nargs="+")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for env_id in args.env_ids:
        mean, std = do_nothing_score(env_id, args.episodes, args.seed)
        print(f"{env_id}: do-nothing {mean:.2f} (std {std:.2f}, {args.episodes} episodes, seed {args.seed})")


if __name__ == "__main__":
    main()
