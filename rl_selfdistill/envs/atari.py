"""Atari: one set of DeepMind preprocessing settings, built with SB3's wrappers or with EnvPool's C++ copy.

Settings (the defaults of `AtariSettings`) and why:

- noop reset: up to 30 no-op frames at the start of a game (Mnih et al. 2015), so starts differ.
- frame skip 4, max-pool over the last two raw frames (removes sprite flicker).
- episodic life: a lost life ends the training episode (no bootstrapping through it) but the game goes on;
  the next life starts with a fire reset. Episode statistics still count whole games.
- fire reset: press FIRE after a reset in games that wait for it (Breakout, ...).
- 84x84 grayscale (cv2 INTER_AREA under both backends), reward clipping to {-1, 0, 1} for training.
- frame stack 4, channel first: observations are (4, 84, 84) uint8, ready for SB3's CnnPolicy.
- sticky actions: repeat_action_probability = 0.0. The RL Zoo (`*NoFrameskip-v4`), CleanRL's EnvPool scripts
  and the published human/random tables (Mnih et al. 2015, Badia et al. 2020) use deterministic ALE
  dynamics plus no-op starts, so scores stay comparable with them. Machado et al. (2018) recommend 0.25;
  pass `repeat_action_probability=0.25` to get it (applied per raw frame by the ALE under every backend).
- minimal action set (full_action_space=False): what the Zoo and the published tables use.
- episode cap: 27,000 agent steps = 108,000 frames = 30 minutes of play, the standard evaluation cap.
  Counted over whole games, in agent steps, under every backend.

`ALE/<Game>-v5` and `<Game>NoFrameskip-v4` build the same thing: Gymnasium's v5 defaults (frameskip 4 inside
the ALE, sticky actions 0.25) are overridden to frameskip=1 and the settings above, so the wrappers skip.

Known, documented differences between the SB3 wrappers and EnvPool (both implement the same recipe):
SB3's fire reset is two agent steps (FIRE, then action 2) and a lost life first costs one no-op agent step,
and these count towards the time limit and the Monitor's episode length; EnvPool does its no-ops and FIRE as raw
frames inside its reset, outside the step count. EnvPool keeps the frame stack across a lost life while SB3's
VecFrameStack zero-fills it. The no-op counts come from different random generators. EnvPool ships its own ALE
build, so a frame can differ now and then.
With noop_max=1, fire_reset=False and terminal_on_life_loss=False both give the same frames and scores for
the same actions (tested in tests/test_envs_atari.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from rl_selfdistill.errors import UsageError


@dataclass(frozen=True)
class AtariSettings:
    """DeepMind Atari preprocessing; the defaults are the documented settings above."""

    noop_max: int = 30
    frame_skip: int = 4
    screen_size: int = 84
    terminal_on_life_loss: bool = True
    fire_reset: bool = True
    clip_reward: bool = True
    frame_stack: int = 4
    repeat_action_probability: float = 0.0
    full_action_space: bool = False
    max_episode_steps: int = 27_000


def atari_settings(
    wrapper_kwargs: dict[str, Any] | None, frame_stack: int | None, max_episode_steps: int | None
) -> AtariSettings:
    """Merge user overrides into the defaults; unknown keys or bad values raise UsageError."""
    overrides = dict(wrapper_kwargs or {})
    fields = {f.name for f in dataclasses.fields(AtariSettings)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UsageError(f"unknown Atari wrapper option(s) {unknown}; valid options: {', '.join(sorted(fields))}")
    if frame_stack is not None:
        overrides["frame_stack"] = frame_stack
    if max_episode_steps is not None:
        overrides["max_episode_steps"] = max_episode_steps
    settings = dataclasses.replace(AtariSettings(), **overrides)
    _check_settings(settings)
    return settings


def _check_settings(s: AtariSettings) -> None:
    positive = {
        "frame_skip": s.frame_skip,
        "screen_size": s.screen_size,
        "frame_stack": s.frame_stack,
        "max_episode_steps": s.max_episode_steps,
    }
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"Atari option {name} must be a positive integer, got {value!r}")
    if not isinstance(s.noop_max, int) or s.noop_max < 0:
        raise UsageError(f"Atari option noop_max must be an integer >= 0, got {s.noop_max!r}")
    if not 0.0 <= float(s.repeat_action_probability) <= 1.0:
        raise UsageError(f"repeat_action_probability must be in [0, 1], got {s.repeat_action_probability!r}")


def make_atari_gym_env(game: str, settings: AtariSettings, render_mode: str | None = None) -> gym.Env:
    """One preprocessed Atari env built from SB3's atari_wrappers (frame stacking is done by the VecEnv).

    Order matters: the Monitor sits above frame skipping (so lengths are agent steps) but below the
    episodic-life and reward-clipping wrappers, so `episode` infos report unclipped whole-game scores,
    as SB3's make_atari_env does. The TimeLimit sits below the Monitor and the life wrapper: it counts
    agent steps over the whole game and a truncation is a real end of game.
    """
    import ale_py
    from stable_baselines3.common import atari_wrappers as aw
    from stable_baselines3.common.monitor import Monitor

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{game}-v5",
        frameskip=1,
        repeat_action_probability=float(settings.repeat_action_probability),
        full_action_space=settings.full_action_space,
        max_num_frames_per_episode=None,  # the cap is the TimeLimit below, in agent steps like EnvPool's
        render_mode=render_mode,
    )
    if settings.noop_max > 0:
        env = aw.NoopResetEnv(env, noop_max=settings.noop_max)
    if settings.frame_skip > 1:
        env = aw.MaxAndSkipEnv(env, skip=settings.frame_skip)
    env = gym.wrappers.TimeLimit(env, max_episode_steps=settings.max_episode_steps)
    env = Monitor(env)
    if settings.terminal_on_life_loss:
        env = aw.EpisodicLifeEnv(env)
    if settings.fire_reset and _needs_fire(env):
        env = aw.FireResetEnv(env)
    env = aw.WarpFrame(env, width=settings.screen_size, height=settings.screen_size)
    if settings.clip_reward:
        env = aw.ClipRewardEnv(env)
    return env


def _needs_fire(env: gym.Env) -> bool:
    meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
    return len(meanings) >= 3 and meanings[1] == "FIRE"


def atari_gym_env_fn(game: str, settings: AtariSettings, render_mode: str | None = None) -> Callable[[], gym.Env]:
    """A picklable factory for SubprocVecEnv."""
    return lambda: make_atari_gym_env(game, settings, render_mode)


def envpool_atari_kwargs(settings: AtariSettings) -> dict[str, Any]:
    """The same settings in EnvPool's vocabulary (its Atari env does all of it in C++)."""
    return {
        "noop_max": settings.noop_max,
        "frame_skip": settings.frame_skip,
        "img_height": settings.screen_size,
        "img_width": settings.screen_size,
        "episodic_life": settings.terminal_on_life_loss,
        "use_fire_reset": settings.fire_reset,
        "reward_clip": settings.clip_reward,
        "stack_num": settings.frame_stack,
        "repeat_action_probability": float(settings.repeat_action_probability),
        "full_action_space": settings.full_action_space,
        "max_episode_steps": settings.max_episode_steps,
        "gray_scale": True,
        "use_inter_area_resize": True,  # same interpolation as SB3's WarpFrame
    }
