"""The one list of algorithm names the toolkit knows.

Every other module asks this registry: which class a name trains, which plain algorithm a
self-distilling one is compared against, whether it needs a discrete action space, which
preset file it reads, how it trains (on-policy rollouts or a replay buffer) and its plot
colour. Adding an algorithm is one `register(AlgoEntry(...))` call, a class and a preset.

Classes are named by import path and imported only when asked for, so that looking a name
up (the CLI's fast error path, config validation) never imports torch.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Literal

from rl_selfdistill.errors import UsageError

Training = Literal["on_policy", "off_policy"]


@dataclass(frozen=True)
class AlgoEntry:
    """What the toolkit needs to know about one algorithm name.

    :param name: the name users type (``--algo``, benchmark grids, run folders).
    :param class_path: ``"module:Class"`` of the SB3 (or SB3-compatible) algorithm class.
    :param base: for a self-distilling algorithm, the name of the plain algorithm it extends
        (its comparison partner in reports); None for a plain algorithm.
    :param training: ``on_policy`` (rollout buffer, like PPO) or ``off_policy`` (replay buffer, like DQN).
    :param discrete_only: True when the algorithm needs a Discrete action space.
    :param continuous_only: True when the algorithm needs a Box (continuous) action space.
    :param needs_action_masks: True when the algorithm trains only on envs with an ``action_masks()`` method.
    :param colour: matplotlib colour of its curves and intervals.
    :param preset: name of its preset file in ``agents/`` (default: the algorithm's name).
    :param extra: the pip extra that provides its dependencies, named in the error when it is missing.
    """

    name: str
    class_path: str
    base: str | None = None
    training: Training = "on_policy"
    discrete_only: bool = False
    continuous_only: bool = False
    needs_action_masks: bool = False
    colour: str | None = None
    preset: str | None = None
    extra: str | None = None

    @property
    def is_distilling(self) -> bool:
        return self.base is not None

    @property
    def base_name(self) -> str:
        """The plain algorithm this one is compared with (itself for a plain algorithm)."""
        return self.base or self.name

    @property
    def preset_name(self) -> str:
        return self.preset or self.name

    def load_class(self) -> type:
        module_name, _, class_name = self.class_path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # The extra's package itself is missing (a class of it, or one of ours built on it), not a module of ours.
            missing = str(error.name)
            if self.extra is None or missing.split(".")[0] == __name__.split(".")[0]:
                raise
            raise UsageError(
                f"{self.name} needs the {error.name!r} package; pip install 'rl-selfdistill[{self.extra}]'"
            ) from None
        return getattr(module, class_name)


_REGISTRY: dict[str, AlgoEntry] = {}


def register(entry: AlgoEntry) -> AlgoEntry:
    """Add an algorithm (a plugin's, or a test's). A name can be registered once; its base must exist."""
    if entry.name in _REGISTRY and _REGISTRY[entry.name] != entry:
        raise ValueError(f"algorithm {entry.name!r} is already registered")
    if entry.base is not None and entry.base not in _REGISTRY:
        raise ValueError(f"algorithm {entry.name!r}: its base {entry.base!r} is not registered")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a name registered by a plugin or a test; the built-in algorithms stay."""
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is built in and cannot be unregistered")
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered name, in registration order (the order `--help` and reports list them)."""
    return tuple(_REGISTRY)


def get(name: str) -> AlgoEntry:
    """The entry of `name`; an unknown name is a one-line UsageError with the closest match."""
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown algorithm {name!r}{hint}; choose one of {', '.join(_REGISTRY)}")
    return entry


def algo_class(name: str) -> type:
    return get(name).load_class()


def base_name(name: str) -> str:
    return get(name).base_name


def is_distilling(name: str) -> bool:
    return get(name).is_distilling


def comparison_pairs(algos: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(distilling, base) pairs among `algos` whose base is also among them, in the order given."""
    chosen = set(algos)
    return [(name, get(name).base_name) for name in algos if is_distilling(name) and get(name).base_name in chosen]


def colour(name: str) -> str | None:
    return _REGISTRY[name].colour if name in _REGISTRY else None


BUILT_IN: tuple[AlgoEntry, ...] = (
    AlgoEntry("ppo", "stable_baselines3:PPO", colour="#1f77b4"),
    AlgoEntry("sd_ppo", "rl_selfdistill.algos.ppo:SelfDistillPPO", base="ppo", colour="#ff7f0e"),
    # Named variants: the same class with another preset file, so a benchmark can hold them side by side.
    AlgoEntry("sd_ppo_snapshot", "rl_selfdistill.algos.ppo:SelfDistillPPO", base="ppo", colour="#9467bd"),
    AlgoEntry("sd_ppo_reset", "rl_selfdistill.algos.ppo:SelfDistillPPO", base="ppo", colour="#8c564b"),
    AlgoEntry("dqn", "stable_baselines3:DQN", training="off_policy", discrete_only=True, colour="#2ca02c"),
    AlgoEntry(
        "sd_dqn",
        "rl_selfdistill.algos.dqn:SelfDistillDQN",
        base="dqn",
        training="off_policy",
        discrete_only=True,
        colour="#d62728",
    ),
    AlgoEntry("a2c", "stable_baselines3:A2C", colour="#006d5b"),
    AlgoEntry("sd_a2c", "rl_selfdistill.algos.a2c:SelfDistillA2C", base="a2c", colour="#b8860b"),
    AlgoEntry("sac", "stable_baselines3:SAC", training="off_policy", continuous_only=True, colour="#4682b4"),
    AlgoEntry(
        "sd_sac",
        "rl_selfdistill.algos.sac:SelfDistillSAC",
        base="sac",
        training="off_policy",
        continuous_only=True,
        colour="#c71585",
    ),
    AlgoEntry("td3", "stable_baselines3:TD3", training="off_policy", continuous_only=True, colour="#800000"),
    AlgoEntry(
        "sd_td3",
        "rl_selfdistill.algos.td3:SelfDistillTD3",
        base="td3",
        training="off_policy",
        continuous_only=True,
        colour="#7b68ee",
    ),
    # sb3-contrib algorithms, under the RL Zoo's names.
    AlgoEntry("qrdqn", "sb3_contrib:QRDQN", training="off_policy", discrete_only=True, colour="#8b4513", extra="contrib"),
    AlgoEntry(
        "sd_qrdqn",
        "rl_selfdistill.algos.qrdqn:SelfDistillQRDQN",
        base="qrdqn",
        training="off_policy",
        discrete_only=True,
        colour="#ff6347",
        extra="contrib",
    ),
    AlgoEntry("ppo_mask", "sb3_contrib:MaskablePPO", colour="#2f4f4f", extra="contrib", needs_action_masks=True),
    AlgoEntry(
        "sd_ppo_mask",
        "rl_selfdistill.algos.maskable_ppo:SelfDistillMaskablePPO",
        base="ppo_mask",
        colour="#da70d6",
        extra="contrib",
        needs_action_masks=True,
    ),
    AlgoEntry("ppo_lstm", "sb3_contrib:RecurrentPPO", colour="#4b0082", extra="contrib"),
    AlgoEntry(
        "sd_ppo_lstm",
        "rl_selfdistill.algos.recurrent_ppo:SelfDistillRecurrentPPO",
        base="ppo_lstm",
        colour="#ff1493",
        extra="contrib",
    ),
    AlgoEntry("trpo", "sb3_contrib:TRPO", colour="#556b2f", extra="contrib"),
    AlgoEntry("sd_trpo", "rl_selfdistill.algos.trpo:SelfDistillTRPO", base="trpo", colour="#00bfff", extra="contrib"),
)
for _entry in BUILT_IN:
    register(_entry)
