"""MinAtar (Young & Tian 2019, arXiv:1903.03176): five Atari-like games on a 10x10 grid, cheap enough for CPUs.

Ids are MinAtar's own Gymnasium registrations (`minatar.gym.register_envs`):

- `MinAtar/<Game>-v1`: the game's minimal action set (Breakout 3 actions, Asterix 5, ...). The suite uses these,
  as gymnax does, whose PPO checkpoints give the suite's reference scores.
- `MinAtar/<Game>-v0`: all six actions, as in the MinAtar paper's DQN experiments.

Settings and why:

- Observations are the game's (10, 10, n_channels) boolean state, channels last, unchanged. SB3 treats a bool Box
  as a non-image (no /255 scaling, no transposition); `rl_selfdistill.policies.MinAtarCNN` reads channels last.
  With `frame_stack` the stack grows along the channel axis.
- Sticky actions with probability 0.1 and difficulty ramping: MinAtar's defaults, the paper's setting. Change them
  with env_kwargs `{"sticky_action_prob": 0.0, "difficulty_ramping": false}`.
- Episode cap: DEFAULT_MAX_EPISODE_STEPS agent steps (gymnax's caps: 1000, Freeway 2500, where Freeway ends
  on its own). MinAtar itself has no cap, and a good agent in Breakout or Space Invaders can play for a very
  long time, which would make a single evaluation on 2 CPU cores unbounded. Pass max_episode_steps to change it.

Only the dummy and subproc backends have MinAtar (EnvPool does not); `backend="auto"` picks one of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from rl_selfdistill.errors import UsageError

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
ID_PATTERN = re.compile(r"^MinAtar/(?P<game>[A-Za-z]+)-v(?P<version>[01])$")
DEFAULT_MAX_EPISODE_STEPS = {"Asterix": 1000, "Breakout": 1000, "Freeway": 2500, "Seaquest": 1000, "SpaceInvaders": 1000}
INSTALL_HINT = "pip install 'rl-selfdistill[minatar]' (or pip install minatar)"


def game_of(env_id: str) -> str | None:
    """'Breakout' for 'MinAtar/Breakout-v1'; None for any id that is not a MinAtar game."""
    match = ID_PATTERN.match(env_id)
    return match["game"] if match and match["game"] in GAMES else None


def minatar_ids() -> list[str]:
    return [f"MinAtar/{game}-v{version}" for game in GAMES for version in (0, 1)]


def register_minatar() -> None:
    """Register MinAtar's Gymnasium ids in this process (idempotent).

    Called in every process that builds an env: SubprocVecEnv starts its workers with forkserver/spawn,
    which do not inherit the parent's Gymnasium registry.
    """
    if "MinAtar/Breakout-v1" in gym.registry:
        return
    try:
        from minatar.gym import register_envs
    except ImportError as err:
        raise UsageError(f"MinAtar envs need the minatar package; {INSTALL_HINT}") from err
    register_envs()


def minatar_env_fn(
    env_id: str, max_episode_steps: int | None, env_kwargs: dict[str, Any], render_mode: str | None = None
) -> Callable[[], gym.Env]:
    """A factory (cloudpickled by SubprocVecEnv) for one Monitor-wrapped MinAtar env."""
    game = game_of(env_id)
    assert game is not None, env_id
    limit = max_episode_steps or DEFAULT_MAX_EPISODE_STEPS[game]
    kwargs = dict(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode

    def make() -> gym.Env:
        from stable_baselines3.common.monitor import Monitor

        register_minatar()
        # Monitor outermost (above TimeLimit) so episode stats cover what the agent experiences
        return Monitor(gym.make(env_id, max_episode_steps=limit, **kwargs))

    return make


def probe_minatar(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Build one env here so a missing package or a bad keyword fails with one clear line, not in a worker."""
    register_minatar()
    try:
        gym.make(env_id, **env_kwargs).close()
    except TypeError as err:
        raise UsageError(
            f"bad env_kwargs for {env_id}: {err}; MinAtar takes sticky_action_prob and difficulty_ramping"
        ) from err
