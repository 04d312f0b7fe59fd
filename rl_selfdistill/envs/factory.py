"""make_vec_env: one entry point for every environment family and backend."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack, VecTransposeImage

from rl_selfdistill.envs import continual, minatar
from rl_selfdistill.envs.atari import AtariSettings, atari_gym_env_fn, atari_settings, envpool_atari_kwargs
from rl_selfdistill.envs.envpool_vec import EnvPoolVecEnv
from rl_selfdistill.envs.registry import EnvEntry, choose_backend, resolve
from rl_selfdistill.errors import UsageError


def make_vec_env(
    env_id: str,
    n_envs: int = 1,
    backend: str = "auto",
    seed: int | None = None,
    *,
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    frame_stack: int | None = None,
    wrapper_kwargs: dict[str, Any] | None = None,
    render_mode: str | None = None,
) -> VecEnv:
    """Build `n_envs` copies of `env_id` as an SB3 VecEnv.

    backend: "dummy" | "subproc" (SB3 DummyVecEnv / SubprocVecEnv, each env wrapped in SB3's Monitor),
    "envpool" (EnvPool behind EnvPoolVecEnv), or "auto" (envpool where EnvPool has the env, else subproc for
    n_envs > 1, else dummy).
    seed: env i gets seed + i; the same seed gives the same trajectories. None draws a random seed.
    max_episode_steps: time limit in agent steps (default: the env's own; Atari 27,000 = 108,000 frames).
    env_kwargs: passed to gymnasium.make / envpool.make (e.g. {"ctrl_cost_weight": 0.1}).
    frame_stack: stacked observations (Atari default 4, channel first; others default none).
    wrapper_kwargs: Atari preprocessing options, the fields of AtariSettings (e.g. {"clip_reward": False}).
    render_mode: e.g. "rgb_array" for SB3's VecVideoRecorder (dummy and subproc backends).
    Atari observations are (frame_stack, 84, 84) uint8.
    """
    entry = resolve(env_id)
    _check_common(n_envs, seed, max_episode_steps, env_kwargs, frame_stack)
    backend = choose_backend(entry, backend, n_envs, allow_envpool=render_mode is None)
    if render_mode is not None and backend == "envpool":
        raise UsageError("render_mode is not supported by the envpool backend; use backend 'dummy' to record videos")
    if seed is None:  # a fresh generator: drawing a seed must not shift numpy's global random state
        seed = int(np.random.default_rng().integers(0, 2**31 - 1 - n_envs))
    if entry.family == "atari":
        settings = atari_settings(wrapper_kwargs, frame_stack, max_episode_steps)
        if env_kwargs:
            raise UsageError(
                f"env_kwargs are not supported for Atari ids; use wrapper_kwargs with: "
                f"{', '.join(AtariSettings.__dataclass_fields__)}"
            )
        return _make_atari(entry, n_envs, backend, seed, settings, render_mode)
    if wrapper_kwargs:
        raise UsageError(f"wrapper_kwargs are Atari options, but {env_id!r} is not an Atari env; remove them")
    if entry.family in ("minatar", "continual"):
        venv = _make_own_family(entry, n_envs, backend, seed, max_episode_steps, dict(env_kwargs or {}), render_mode)
        return VecFrameStack(venv, frame_stack) if frame_stack and frame_stack > 1 else venv
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    venv = _make_plain(entry, n_envs, backend, seed, max_episode_steps, kwargs)
    return VecFrameStack(venv, frame_stack) if frame_stack and frame_stack > 1 else venv


def _check_common(
    n_envs: int, seed: int | None, max_episode_steps: int | None, env_kwargs: dict[str, Any] | None, frame_stack: int | None
) -> None:
    if not isinstance(n_envs, int) or isinstance(n_envs, bool) or n_envs < 1:
        raise UsageError(f"n_envs must be a positive integer, got {n_envs!r}")
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise UsageError(f"seed must be a non-negative integer or None, got {seed!r}")
    if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
        raise UsageError(f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}")
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise UsageError(f"env_kwargs must be a mapping of keyword arguments, got {type(env_kwargs).__name__}")
    if frame_stack is not None and (not isinstance(frame_stack, int) or frame_stack < 1):
        raise UsageError(f"frame_stack must be a positive integer or None, got {frame_stack!r}")


# --- Atari ------------------------------------------------------------------------------------------------
def _make_atari(
    entry: EnvEntry, n_envs: int, backend: str, seed: int, settings: AtariSettings, render_mode: str | None
) -> VecEnv:
    assert entry.game is not None
    if backend == "envpool":
        if settings.noop_max == 0:  # EnvPool 1.2.5 segfaults on reset with noop_max=0
            raise UsageError("noop_max=0 is not supported by the envpool backend; use noop_max >= 1 or backend 'dummy'")
        kwargs = envpool_atari_kwargs(settings)
        return EnvPoolVecEnv(_pool_factory(entry, n_envs, kwargs), n_envs, seed, atari=True)
    venv = _sb3_vec_env([atari_gym_env_fn(entry.game, settings, render_mode)] * n_envs, backend, seed)
    # Transpose the single frame first (cheap), then stack along the channel axis: (stack, 84, 84)
    venv = VecTransposeImage(venv)
    return VecFrameStack(venv, settings.frame_stack, channels_order="first") if settings.frame_stack > 1 else venv


# --- MuJoCo, classic control, other Gymnasium ids -----------------------------------------------------------
def _make_plain(
    entry: EnvEntry, n_envs: int, backend: str, seed: int, max_episode_steps: int | None, env_kwargs: dict[str, Any]
) -> VecEnv:
    if backend == "envpool":
        kwargs = dict(env_kwargs)
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        obs_space, act_space = _gymnasium_spaces(entry.gym_id, env_kwargs)
        return EnvPoolVecEnv(_pool_factory(entry, n_envs, kwargs), n_envs, seed, obs_space, act_space)
    _probe_gym_env(entry, env_kwargs)
    return _sb3_vec_env([_gym_env_fn(entry.gym_id, max_episode_steps, env_kwargs)] * n_envs, backend, seed)


def _gym_env_fn(gym_id: str, max_episode_steps: int | None, env_kwargs: dict[str, Any]) -> Callable[[], gym.Env]:
    from stable_baselines3.common.monitor import Monitor

    def make() -> gym.Env:
        # Monitor outermost (above TimeLimit) so episode stats cover what the agent experiences
        return Monitor(gym.make(gym_id, max_episode_steps=max_episode_steps, **env_kwargs))

    return make


def _probe_gym_env(entry: EnvEntry, env_kwargs: dict[str, Any]) -> None:
    """Build one env in this process so missing packages and bad kwargs fail with one clear line."""
    try:
        gym.make(entry.gym_id, **env_kwargs).close()
    except gym.error.DependencyNotInstalled as err:
        hint = "use backend='envpool' or " if entry.envpool_id else ""
        raise UsageError(
            f"{entry.env_id} needs a missing package ({str(err).splitlines()[0]}); "
            f"{hint}install it, e.g. pip install 'gymnasium[box2d]'"
        ) from err
    except TypeError as err:
        raise UsageError(f"bad env_kwargs for {entry.env_id}: {err}; check the environment's documented arguments") from err


def _gymnasium_spaces(gym_id: str, env_kwargs: dict[str, Any]) -> tuple[gym.Space | None, gym.Space | None]:
    """Gymnasium's spaces for the id, so every backend reports identical spaces.

    EnvPool's MuJoCo action spaces are float64 where Gymnasium's are float32, and its LunarLander observation
    bounds are wrong; None (use EnvPool's) when Gymnasium cannot build the env here.
    """
    try:
        env = gym.make(gym_id, **env_kwargs)
    except Exception:  # noqa: BLE001 - optional dependency missing: EnvPool's own spaces are the fallback
        return None, None
    spaces = (env.observation_space, env.action_space)
    env.close()
    return spaces


# --- MinAtar and continual classic control (dummy/subproc only) ---------------------------------------------
def _make_own_family(
    entry: EnvEntry,
    n_envs: int,
    backend: str,
    seed: int,
    max_episode_steps: int | None,
    env_kwargs: dict[str, Any],
    render_mode: str | None,
) -> VecEnv:
    """Families whose env factories live in their own modules: they register their ids in every worker process."""
    if entry.family == "minatar":
        minatar.probe_minatar(entry.env_id, env_kwargs)
        env_fn = minatar.minatar_env_fn(entry.env_id, max_episode_steps, env_kwargs, render_mode)
    else:
        continual.probe_continual(entry.env_id, env_kwargs)
        env_fn = continual.continual_env_fn(entry.env_id, max_episode_steps, env_kwargs, render_mode)
    return _sb3_vec_env([env_fn] * n_envs, backend, seed)


# --- shared -------------------------------------------------------------------------------------------------
def _sb3_vec_env(env_fns: list[Callable[[], gym.Env]], backend: str, seed: int) -> VecEnv:
    venv: VecEnv = SubprocVecEnv(env_fns) if backend == "subproc" else DummyVecEnv(env_fns)
    venv.seed(seed)  # env i gets seed + i at the first reset, as SB3's make_vec_env does
    venv.action_space.seed(seed)
    return venv


def _pool_factory(entry: EnvEntry, n_envs: int, kwargs: dict[str, Any]) -> Callable[[int], Any]:
    import envpool

    # One worker thread per core at most: more threads than cores only adds contention
    num_threads = min(n_envs, os.cpu_count() or 1)

    def make_pool(seed: int) -> Any:
        try:
            return envpool.make(
                entry.envpool_id,
                env_type="gymnasium",
                num_envs=n_envs,
                batch_size=n_envs,
                num_threads=num_threads,
                seed=seed,
                **kwargs,
            )
        except (TypeError, ValueError, KeyError) as err:
            raise UsageError(
                f"bad env_kwargs for {entry.env_id} on backend 'envpool': {err}; check the option names or use backend='dummy'"
            ) from err

    return make_pool
