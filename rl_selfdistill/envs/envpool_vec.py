"""EnvPool behind SB3's VecEnv interface.

EnvPool resets a finished env lazily: the step that returns done carries the true last observation, and the
*next* step call on that env ignores its action and returns the first observation of the new episode
(EnvPool issues #33 and #194). Fed to SB3 as is, every episode boundary would cost one transition whose
action has no effect (an off-by-one). This adapter instead steps only the finished envs once more, right away,
so SB3 sees what its own VecEnvs give: `dones[i]` with the first observation of the next episode in `obs[i]`,
and the true last observation in `infos[i]["terminal_observation"]`.

That extra call goes through EnvPool's own auto-reset rather than `reset(env_ids)` on purpose: for Atari with
episodic life, `reset` would restart the whole game, while the auto-reset continues the game after a lost
life (with EnvPool's no-op and fire reset) and only restarts it at game over.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

PoolFactory = Callable[[int], Any]  # seed -> envpool gymnasium-style pool


class EnvPoolVecEnv(VecEnv):
    """SB3 VecEnv over an EnvPool pool (synchronous: all envs step together).

    `episode` infos ({"r", "l", "t"}) follow SB3's Monitor: `r` is the sum of *unclipped* rewards over the
    whole game (all lives; EnvPool's `info["reward"]`), `l` the number of agent steps in it, `t` seconds since
    this VecEnv was created. `env_is_wrapped(Monitor)` answers True so evaluate_policy uses them.
    """

    def __init__(
        self,
        make_pool: PoolFactory,
        num_envs: int,
        seed: int,
        observation_space: spaces.Space | None = None,
        action_space: spaces.Space | None = None,
        atari: bool = False,
    ) -> None:
        self._make_pool = make_pool
        self._seed = seed
        self._pending_seed: int | None = None
        self.pool = make_pool(seed)
        self._atari = atari
        self._episode_returns = np.zeros(num_envs, dtype=np.float64)
        self._episode_lengths = np.zeros(num_envs, dtype=np.int64)
        self._t_start = time.time()
        self._actions: np.ndarray | None = None
        obs_space = observation_space or self.pool.observation_space
        super().__init__(num_envs, obs_space, action_space or self.pool.action_space)
        self._obs_dtype = obs_space.dtype

    # --- VecEnv API -------------------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        if self._pending_seed is not None:  # EnvPool fixes seeds at construction: rebuild to reseed
            self.pool.close()
            self._seed, self._pending_seed = self._pending_seed, None
            self.pool = self._make_pool(self._seed)
        obs, info = self.pool.reset()
        self._episode_returns[:] = 0.0
        self._episode_lengths[:] = 0
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return self._cast(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async must be called before step_wait"
        obs, rewards, terminated, truncated, info = self.pool.step(self._actions)
        self._actions = None
        obs = self._cast(obs)
        dones = np.logical_or(terminated, truncated)
        game_over = self._game_over(terminated, truncated, info)
        # EnvPool's Atari info["reward"] is the unclipped game reward; training still gets `rewards`
        raw_rewards = info["reward"] if self._atari else rewards
        self._episode_returns += raw_rewards
        self._episode_lengths += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = obs[i].copy()
            # SB3 bootstraps only when the episode was cut by the time limit, not when it really ended
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            if game_over[i]:
                infos[i]["episode"] = self._pop_episode(i)
        if dones.any():
            obs = self._restart(obs, np.flatnonzero(dones))
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def _game_over(self, terminated: np.ndarray, truncated: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """True where the whole game ended; with episodic life a lost life ends only the training episode."""
        if self._atari:  # info["terminated"] is EnvPool's real game-over flag
            return np.logical_or(truncated, np.logical_and(terminated, info["terminated"].astype(bool)))
        return np.logical_or(terminated, truncated)

    def _pop_episode(self, i: int) -> dict[str, Any]:
        episode = {
            "r": float(self._episode_returns[i]),
            "l": int(self._episode_lengths[i]),
            "t": round(time.time() - self._t_start, 6),
        }
        self._episode_returns[i] = 0.0
        self._episode_lengths[i] = 0
        return episode

    def _restart(self, obs: np.ndarray, env_ids: np.ndarray) -> np.ndarray:
        """Trigger EnvPool's auto-reset for the finished envs now (their action is ignored by EnvPool)."""
        noop = np.zeros((len(env_ids), *self.pool.action_space.shape), dtype=self.pool.action_space.dtype)
        new_obs, _, _, _, new_info = self.pool.step(noop, env_ids.astype(np.int32))
        obs[new_info["env_id"]] = self._cast(new_obs)
        return obs

    def _cast(self, obs: np.ndarray) -> np.ndarray:
        # EnvPool's dtypes can differ from Gymnasium's (we expose Gymnasium's spaces); keep them consistent
        return obs if obs.dtype == self._obs_dtype else obs.astype(self._obs_dtype)

    def close(self) -> None:
        self.pool.close()

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Reseed at the next reset (EnvPool only takes seeds at construction, so the pool is rebuilt)."""
        if seed is None:  # SB3's VecEnv.seed(None) draws one too; from a fresh generator, not numpy's global one
            seed = int(np.random.default_rng().integers(0, 2**31 - 1 - self.num_envs))
        self._pending_seed = int(seed)
        self._seeds = [seed + i for i in range(self.num_envs)]
        return self._seeds

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None for _ in self._get_indices(indices)]
        value = getattr(self.pool, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"EnvPool envs are C++ objects; cannot set attribute {attr_name!r}")

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        raise AttributeError(f"EnvPool envs are C++ objects; cannot call method {method_name!r} on one env")

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        from stable_baselines3.common.monitor import Monitor

        # Monitor-equivalent `episode` infos are produced here, which is what SB3 asks this about
        return [issubclass(Monitor, wrapper_class) for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        warnings.warn("rendering is not supported by the EnvPool backend; use backend='dummy' to record videos", stacklevel=2)
        return [None for _ in range(self.num_envs)]
