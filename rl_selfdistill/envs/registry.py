"""Which environment ids exist, what family they belong to, and which backends can run them."""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from rl_selfdistill.envs import continual, masked, minatar, partial
from rl_selfdistill.errors import UsageError

BACKENDS = ("dummy", "subproc", "envpool")

MUJOCO_IDS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5", "Swimmer-v5")
CLASSIC_IDS = ("CartPole-v1", "Acrobot-v1", "LunarLander-v3", "Pendulum-v1")

# Both spellings users meet in the wild: Gymnasium's `ALE/Pong-v5` and the RL Zoo's `PongNoFrameskip-v4`.
# They build the *same* environment here (see atari.py): the id picks the game, never the settings.
_ATARI_V5 = re.compile(r"^ALE/(?P<game>[A-Za-z0-9]+)-v5$")
_ATARI_V4 = re.compile(r"^(?P<game>[A-Za-z0-9]+)NoFrameskip-v4$")


@dataclass(frozen=True)
class EnvEntry:
    """A resolved environment id.

    family: "atari", "mujoco", "classic", "minatar", "continual" or "gym" (any other Gymnasium id, dummy/subproc
    only). MinAtar and continual ids run on dummy/subproc only: EnvPool has neither.
    gym_id: id passed to gymnasium.make. envpool_id: EnvPool task id, or None when EnvPool lacks it.
    """

    env_id: str
    family: str
    gym_id: str
    envpool_id: str | None
    game: str | None = None


@functools.cache
def _gymnasium_ids() -> tuple[str, ...]:
    import gymnasium as gym

    try:  # registers ALE/... and ...NoFrameskip-v4 ids when ale-py is installed
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:
        pass
    return tuple(gym.registry.keys())


def _registered_since(env_id: str) -> bool:
    """Whether `env_id` was registered after the cached id list was read (a --gym-packages module imported later)."""
    import gymnasium as gym

    return env_id in gym.registry


@functools.cache
def _envpool_ids() -> frozenset[str]:
    try:
        import envpool
    except ImportError:
        return frozenset()
    return frozenset(envpool.list_all_envs())


@functools.cache
def atari_games() -> tuple[str, ...]:
    """CamelCase names of the games with an `ALE/<Game>-v5` id (empty without ale-py)."""
    return tuple(sorted(m["game"] for i in _gymnasium_ids() if (m := _ATARI_V5.match(i))))


def _atari_entry(env_id: str) -> EnvEntry | None:
    match = _ATARI_V5.match(env_id) or _ATARI_V4.match(env_id)
    if match is None or match["game"] not in atari_games():
        return None
    game = match["game"]
    envpool_id = f"{game}-v5" if f"{game}-v5" in _envpool_ids() else None
    return EnvEntry(env_id, "atari", f"ALE/{game}-v5", envpool_id, game)


def resolve(env_id: str) -> EnvEntry:
    """Resolve `env_id` or raise a one-line UsageError listing the closest valid ids."""
    if not isinstance(env_id, str) or not env_id:
        raise UsageError(f"env id must be a non-empty string, got {env_id!r}; e.g. 'CartPole-v1' or 'ALE/Pong-v5'")
    atari = _atari_entry(env_id)
    if atari is not None:
        return atari
    if minatar.game_of(env_id) is not None:
        return EnvEntry(env_id, "minatar", env_id, None, minatar.game_of(env_id))
    if continual.is_continual(env_id):
        return EnvEntry(env_id, "continual", env_id, None)
    if env_id in partial.PARTIAL_IDS:  # velocity-hidden classic control (the RL Zoo's NoVel ids)
        return EnvEntry(env_id, "classic", partial.gym_id(env_id), None)
    if env_id in masked.MASKED_IDS:  # a toy task with action masks, for MaskablePPO
        return EnvEntry(env_id, "gym", masked.gym_id(env_id), None)
    if env_id in MUJOCO_IDS or env_id in CLASSIC_IDS:
        family = "mujoco" if env_id in MUJOCO_IDS else "classic"
        return EnvEntry(env_id, family, env_id, env_id if env_id in _envpool_ids() else None)
    if env_id in _gymnasium_ids() or _registered_since(env_id):
        return EnvEntry(env_id, "gym", env_id, None)
    raise UsageError(f"unknown env id {env_id!r}; closest valid ids: {', '.join(closest_ids(env_id))}")


def valid_ids() -> list[str]:
    """Every id make_vec_env accepts: the curated ids, both Atari spellings, and any Gymnasium id."""
    atari = [f"ALE/{g}-v5" for g in atari_games()] + [f"{g}NoFrameskip-v4" for g in atari_games()]
    extra = set(minatar.minatar_ids()) | set(continual.continual_ids()) | set(partial.PARTIAL_IDS) | set(masked.MASKED_IDS)
    return sorted(set(MUJOCO_IDS) | set(CLASSIC_IDS) | set(atari) | extra | set(_gymnasium_ids()))


def closest_ids(env_id: str, n: int = 3) -> list[str]:
    """Closest valid ids by spelling; compared case-insensitively so 'pong' finds 'ALE/Pong-v5'."""
    ids = valid_ids()
    lowered = {i.lower(): i for i in ids}
    matches = difflib.get_close_matches(env_id.lower(), list(lowered), n=n, cutoff=0.5)
    if not matches:  # e.g. a bare game name: fall back to substring hits
        matches = [k for k in lowered if env_id.lower() in k][:n]
    return [lowered[m] for m in matches] or ["CartPole-v1", "ALE/Pong-v5", "HalfCheetah-v5"]


def available_backends(entry: EnvEntry) -> list[str]:
    """Backends that can build `entry`."""
    return ["dummy", "subproc"] + (["envpool"] if entry.envpool_id is not None else [])


def choose_backend(entry: EnvEntry, backend: str, n_envs: int, allow_envpool: bool = True) -> str:
    """Validate `backend` and turn "auto" into a concrete one.

    auto: EnvPool where it has the env (C++ threads, no Python per step) unless `allow_envpool` is False
    (rendering); else a plain loop for classic control, whose steps cost less than a message to a worker
    process (SB3's advice), and for a single env (no IPC); else subprocesses, to overlap several envs.
    """
    if backend not in (*BACKENDS, "auto"):
        raise UsageError(f"unknown backend {backend!r}; use one of: auto, {', '.join(BACKENDS)}")
    if backend == "auto":
        if entry.envpool_id is not None and allow_envpool:
            return "envpool"
        return "subproc" if n_envs > 1 and not is_classic_control(entry) else "dummy"
    if backend not in available_backends(entry):
        hint = " (or pip install 'rl-selfdistill[envpool]')" if backend == "envpool" and not _envpool_ids() else ""
        raise UsageError(
            f"{entry.env_id!r} is not available on backend {backend!r}; "
            f"backends that have it: {', '.join(available_backends(entry))}{hint}"
        )
    return backend


def is_classic_control(entry: EnvEntry) -> bool:
    """Whether Gymnasium's classic control builds `entry` (CartPole, Acrobot, MountainCar, Pendulum and variants)."""
    import gymnasium as gym

    try:
        entry_point = gym.spec(entry.gym_id).entry_point
    except gym.error.Error:
        return False
    name = entry_point if isinstance(entry_point, str) else getattr(entry_point, "__module__", "")
    return name.startswith("gymnasium.envs.classic_control")


def resolve_backend(env_id: str, backend: str = "auto", n_envs: int = 1) -> str:
    """The concrete backend make_vec_env will use (e.g. to pass to configure_torch_threads)."""
    return choose_backend(resolve(env_id), backend, n_envs)
