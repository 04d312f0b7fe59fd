"""Environment throughput and random-policy scores.

- raw_step_fps: env steps per second with random actions and no network (the ceiling for a backend).
- collection_fps: steps per second of SB3's own rollout collection (forward pass + buffer) with a
  randomly initialised PPO policy.
- training_fps: steps per second of a full PPO `learn()` (collection + updates).
- paired: alternate A B A B ... so that load from other processes hits both sides alike; report medians.
- random_policy_score: mean full-episode return of uniformly random actions (used for the suites' random_score).

scripts/env_speed.py runs these from the command line; the benchmark throughput CLI may call them too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_selfdistill.envs.factory import make_vec_env

# RL Zoo hyperparameters (hyperparams/ppo.yml) for the two benchmark families
ATARI_PPO_KWARGS: dict[str, Any] = {
    "n_steps": 128,
    "n_epochs": 4,
    "batch_size": 256,
    "learning_rate": 2.5e-4,
    "clip_range": 0.1,
    "vf_coef": 0.5,
    "ent_coef": 0.01,
}
MUJOCO_PPO_KWARGS: dict[str, Any] = {"n_steps": 512, "batch_size": 64, "n_epochs": 10, "gae_lambda": 0.92, "gamma": 0.98}


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


def _policy_for(env_id: str) -> str:
    return "CnnPolicy" if env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4") else "MlpPolicy"


def collection_fps(
    env_id: str,
    backend: str,
    n_envs: int = 8,
    n_steps: int = 128,
    seed: int = 0,
    ppo_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
) -> float:
    """Steps per second of PPO.collect_rollouts with a random-init policy (no gradient updates)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList

    venv = make_vec_env(env_id, n_envs, backend, seed)
    try:
        kwargs = {**(ppo_kwargs or {}), "n_steps": n_steps}
        model = PPO(_policy_for(env_id), venv, seed=seed, device=device, verbose=0, **kwargs)
        _, callback = model._setup_learn(n_steps * n_envs, CallbackList([]))
        callback.on_training_start(locals(), globals())
        start = time.perf_counter()
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=n_steps)
        return n_steps * n_envs / (time.perf_counter() - start)
    finally:
        venv.close()


def training_fps(
    env_id: str,
    backend: str,
    n_envs: int = 8,
    total_timesteps: int = 4096,
    seed: int = 0,
    ppo_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    algo: Any = None,
    torch_threads: int | None = None,
) -> float:
    """Steps per second of a full `learn(total_timesteps)`; env construction is not timed.

    algo: an SB3-compatible class (default stable_baselines3.PPO, e.g. rl_selfdistill.SelfDistillPPO).
    """
    import torch

    if algo is None:
        from stable_baselines3 import PPO as algo  # noqa: N811 - the default algorithm class
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    venv = make_vec_env(env_id, n_envs, backend, seed)
    try:
        model = algo(_policy_for(env_id), venv, seed=seed, device=device, verbose=0, **(ppo_kwargs or {}))
        start = time.perf_counter()
        model.learn(total_timesteps)
        return model.num_timesteps / (time.perf_counter() - start)
    finally:
        venv.close()


@dataclass(frozen=True)
class PairedResult:
    name_a: str
    name_b: str
    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def median_a(self) -> float:
        return statistics.median(self.a)

    @property
    def median_b(self) -> float:
        return statistics.median(self.b)

    @property
    def ratio(self) -> float:
        """median(B) / median(A)."""
        return self.median_b / self.median_a

    def __str__(self) -> str:
        return (
            f"{self.name_a}: median {self.median_a:.0f} {[round(x) for x in self.a]} | {self.name_b}: median "
            f"{self.median_b:.0f} {[round(x) for x in self.b]} | ratio B/A {self.ratio:.2f}"
        )


def paired(name_a: str, run_a: Callable[[], float], name_b: str, run_b: Callable[[], float], repeats: int = 3) -> PairedResult:
    """Run A B A B ... `repeats` times each, alternating so background load affects both sides alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        a.append(run_a())
        b.append(run_b())
    return PairedResult(name_a, name_b, tuple(a), tuple(b))


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
