"""Continual classic control: one task whose observations (and optionally action meanings) change level by level.

A non-stationary benchmark where plasticity matters, after the continual Gym-control setups of TRAC
(Muppidi et al. 2024) and C-CHAIN (Tang et al. 2025): a classic-control task goes through a sequence of levels;
at each new level the agent sees its observations through a new fixed transform and has to adapt.

Ids: `Continual-<Task>-v0` for CartPole-v1, Acrobot-v1, LunarLander-v3 and MountainCar-v0 (see TASKS), usable
with make_vec_env (dummy and subproc backends) and `gymnasium.make` after `register_continual()`.

Level schedule (a pure function of the env's own step count and of `schedule_seed`):

- Each env counts its own steps over its whole life, across episodes. Its level is
  `steps // steps_per_level`, read when an episode starts: a level never changes in the middle of an episode,
  so the switch happens at the first reset after the boundary.
- `steps_per_level` is **per env**. With `n_envs` envs stepping in lockstep (every VecEnv does), the agent meets
  level k after about `k * n_envs * steps_per_level` total steps, and the presets choose
  `steps_per_level = level length in total steps / n_envs`.
- Level 0 is the plain task. Level k >= 1 applies obs' = signs_k * obs[perm_k] + offset_k, with perm_k a random
  permutation of the observation dimensions, signs_k random +-1 per dimension and offset_k ~ N(0, offset_std^2)
  per dimension, drawn from `numpy.random.default_rng([schedule_seed, k])`: level k's transform depends on
  (schedule_seed, k) only, never on the env's reset seed, so every env of a run, the eval env and every run
  with the same schedule_seed see the same sequence. `permute_actions=True` also relabels the discrete actions
  per level (a change of dynamics from the agent's point of view).
- Episodes, rewards and time limits are the base task's; only what the agent sees (and its action labels) changes.

Evaluation: the eval env follows the training env's current level (`ContinualLevelCallback(eval_env)`, an SB3 callback,
pins it with `sync_levels` at each rollout start), so an evaluation measures the agent on the task it is learning
now. The same callback restores the step counts of a resumed run. The score of a
continual run is the mean of all its evaluations over the whole run (every level weighs the same since levels
are equally long and evaluations equally spaced): the mean return over the whole sequence, as in C-CHAIN.
A final-window score would only see the last level. Without the callback an eval env counts its own (few)
steps and stays on early levels, which is why the training code must add it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from rl_selfdistill.errors import UsageError

TASKS = {"CartPole": "CartPole-v1", "Acrobot": "Acrobot-v1", "LunarLander": "LunarLander-v3", "MountainCar": "MountainCar-v0"}
ID_PATTERN = re.compile(r"^Continual-(?P<task>[A-Za-z]+)-v0$")
DEFAULT_STEPS_PER_LEVEL = 10_000
DEFAULT_OFFSET_STD = 1.0


def base_task(env_id: str) -> str | None:
    """'CartPole-v1' for 'Continual-CartPole-v0'; None for any other id."""
    match = ID_PATTERN.match(env_id)
    return TASKS.get(match["task"]) if match else None


def continual_ids() -> list[str]:
    return [f"Continual-{task}-v0" for task in TASKS]


def is_continual(env_id: str) -> bool:
    return base_task(env_id) is not None


class LevelTransform:
    """Level k's fixed observation/action transform: a pure function of (schedule_seed, k)."""

    def __init__(
        self, level: int, schedule_seed: int, obs_dim: int, n_actions: int | None, offset_std: float, permute_actions: bool
    ) -> None:
        self.level = level
        identity = level == 0
        rng = np.random.default_rng([schedule_seed, level])
        self.perm = np.arange(obs_dim) if identity else rng.permutation(obs_dim)
        self.signs = np.ones(obs_dim) if identity else rng.choice([-1.0, 1.0], size=obs_dim)
        self.offset = np.zeros(obs_dim) if identity or offset_std == 0 else rng.normal(0.0, offset_std, size=obs_dim)
        # Drawn last so that turning it on leaves the observation transform of every level unchanged
        self.action_perm = None
        if n_actions is not None and permute_actions and not identity:
            self.action_perm = rng.permutation(n_actions)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return (self.signs * obs[self.perm] + self.offset).astype(obs.dtype, copy=False)

    def action(self, action: Any) -> Any:
        return action if self.action_perm is None else int(self.action_perm[int(action)])


class ContinualWrapper(gym.Wrapper):
    """Applies the level schedule of the module docstring to a classic-control env with a Box observation."""

    def __init__(
        self,
        env: gym.Env,
        steps_per_level: int = DEFAULT_STEPS_PER_LEVEL,
        schedule_seed: int = 0,
        offset_std: float = DEFAULT_OFFSET_STD,
        permute_actions: bool = False,
    ) -> None:
        super().__init__(env)
        _check_options(steps_per_level, schedule_seed, offset_std, permute_actions)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise UsageError(f"continual levels need a flat Box observation space, got {space}")
        self.steps_per_level = steps_per_level
        self.schedule_seed = schedule_seed
        self.offset_std = offset_std
        self.permute_actions = permute_actions
        # Steps of this env over its whole life (not Monitor's total_steps, which a resume cannot restore)
        self.level_steps = 0
        self.pinned_level: int | None = None
        n_actions = int(env.action_space.n) if isinstance(env.action_space, gym.spaces.Discrete) else None
        self._obs_dim, self._n_actions = space.shape[0], n_actions
        self._transform = self._make_transform(0)
        # The widest box any level can produce: the offsets move the bounds, so the space is unbounded where they do
        bounded = offset_std == 0
        low = np.minimum(space.low, -space.high) if bounded else np.full(space.shape, -np.inf)
        high = np.maximum(space.high, -space.low) if bounded else np.full(space.shape, np.inf)
        if bounded:  # a permutation mixes dimensions: every one gets the widest bound
            low, high = np.full(space.shape, low.min()), np.full(space.shape, high.max())
        self.observation_space = gym.spaces.Box(low.astype(space.dtype), high.astype(space.dtype), dtype=space.dtype)

    def _make_transform(self, level: int) -> LevelTransform:
        return LevelTransform(level, self.schedule_seed, self._obs_dim, self._n_actions, self.offset_std, self.permute_actions)

    @property
    def level(self) -> int:
        """The level of the current episode."""
        return self._transform.level

    def scheduled_level(self) -> int:
        """The level the next episode will get from this env's own step count."""
        return self.level_steps // self.steps_per_level

    def set_level(self, level: int | None) -> None:
        """Pin the level of the following episodes (an eval env following training); None unpins it."""
        if level is not None and (not isinstance(level, int | np.integer) or level < 0):
            raise UsageError(f"level must be a non-negative integer or None, got {level!r}")
        self.pinned_level = None if level is None else int(level)

    def set_level_steps(self, steps: int) -> None:
        """Restore this env's step count (a resumed run: the schedule continues from there)."""
        if not isinstance(steps, int | np.integer) or steps < 0:
            raise UsageError(f"steps must be a non-negative integer, got {steps!r}")
        self.level_steps = int(steps)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        level = self.pinned_level if self.pinned_level is not None else self.scheduled_level()
        if level != self._transform.level:
            self._transform = self._make_transform(level)
        obs, info = self.env.reset(seed=seed, options=options)
        info["continual_level"] = level
        return self._transform.observation(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self._transform.action(action))
        self.level_steps += 1
        info["continual_level"] = self._transform.level
        return self._transform.observation(obs), reward, terminated, truncated, info


def _check_options(steps_per_level: Any, schedule_seed: Any, offset_std: Any, permute_actions: Any) -> None:
    if not isinstance(steps_per_level, int) or isinstance(steps_per_level, bool) or steps_per_level < 1:
        raise UsageError(f"steps_per_level must be a positive integer (env steps per level, per env), got {steps_per_level!r}")
    if not isinstance(schedule_seed, int) or isinstance(schedule_seed, bool) or schedule_seed < 0:
        raise UsageError(f"schedule_seed must be a non-negative integer, got {schedule_seed!r}")
    if isinstance(offset_std, bool) or not isinstance(offset_std, int | float) or not 0 <= offset_std < np.inf:
        raise UsageError(f"offset_std must be a finite number >= 0, got {offset_std!r}")
    if not isinstance(permute_actions, bool):
        raise UsageError(f"permute_actions must be true or false, got {permute_actions!r}")


def make_continual(base_id: str, max_episode_steps: int | None = None, **options: Any) -> gym.Env:
    """The continual version of `base_id` (the entry point of the registered ids)."""
    unknown = sorted(set(options) - {"steps_per_level", "schedule_seed", "offset_std", "permute_actions", "render_mode"})
    if unknown:
        raise UsageError(
            f"unknown option {unknown[0]!r} for a continual env; valid: steps_per_level, schedule_seed, offset_std, "
            "permute_actions"
        )
    render_mode = options.pop("render_mode", None)
    base = gym.make(base_id, max_episode_steps=max_episode_steps, render_mode=render_mode)
    return ContinualWrapper(base, **options)


def register_continual() -> None:
    """Register the `Continual-<Task>-v0` ids with Gymnasium (idempotent)."""
    for task, base_id in TASKS.items():
        env_id = f"Continual-{task}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="rl_selfdistill.envs.continual:make_continual", kwargs={"base_id": base_id})


def continual_env_fn(
    env_id: str, max_episode_steps: int | None, env_kwargs: dict[str, Any], render_mode: str | None = None
) -> Callable[[], gym.Env]:
    """A factory (cloudpickled by SubprocVecEnv) for one Monitor-wrapped continual env."""
    base_id = base_task(env_id)
    assert base_id is not None, env_id
    options = {**env_kwargs, **({"render_mode": render_mode} if render_mode else {})}

    def make() -> gym.Env:
        from stable_baselines3.common.monitor import Monitor

        # Monitor outermost so that episode returns are the base task's, whatever the level
        return Monitor(make_continual(base_id, max_episode_steps, **options))

    return make


def probe_continual(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Build one env here so bad options or a missing Box2D fail with one clear line, not in a worker."""
    base_id = base_task(env_id)
    assert base_id is not None, env_id
    try:
        make_continual(base_id, **env_kwargs).close()
    except gym.error.DependencyNotInstalled as err:
        raise UsageError(
            f"{env_id} needs a missing package ({str(err).splitlines()[0]}); install it, e.g. pip install 'gymnasium[box2d]'"
        ) from err


def sync_levels(training_env: Any, eval_env: Any) -> int:
    """Pin `eval_env`'s level to the training env's current level (the highest over its envs); returns it.

    Both are SB3 VecEnvs (VecNormalize and other wrappers forward get_attr/env_method). Call it before each
    evaluation, as SB3 calls sync_envs_normalization.
    """
    level = max(int(level) for level in training_env.get_attr("level"))
    eval_env.env_method("set_level", level)
    return level


def is_continual_vec_env(venv: Any) -> bool:
    """Whether an SB3 VecEnv runs continual envs (so sync_levels applies)."""
    try:
        return bool(venv.get_attr("steps_per_level"))
    except AttributeError:
        return False


class ContinualLevelCallback(BaseCallback):
    """The SB3 callback a training run with continual envs needs (put it before its EvalCallback).

    - At the start of each rollout it pins `eval_env` to the training level (`sync_levels`), so evaluations
      measure the level being learnt (at most one rollout behind a switch).
    - At training start on a resumed model (num_timesteps > 0) whose fresh envs still count 0 steps, it restores
      each env's step count to num_timesteps / n_envs, so the schedule continues where it stopped instead of
      restarting at level 0. learn() has reset those envs already, so their first episode still runs on level 0;
      the project's resume (`run.checkpoints.load_checkpoint`) restores the count before that reset instead.
    """

    def __init__(self, eval_env: Any) -> None:
        super().__init__()
        self.eval_env = eval_env

    def _on_training_start(self) -> None:
        steps = self.model.num_timesteps // self.training_env.num_envs
        if steps and not any(self.training_env.get_attr("level_steps")):
            self.training_env.env_method("set_level_steps", steps)
        sync_levels(self.training_env, self.eval_env)

    def _on_rollout_start(self) -> None:
        sync_levels(self.training_env, self.eval_env)

    def _on_step(self) -> bool:
        return True
