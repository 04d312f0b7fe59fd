"""The preset schema: which keys a preset may set for an algorithm, and how each value is checked.

Nothing here is a hand copy of SB3's signatures. The keys of an algorithm are

- the run-level META_KEYS (budget, env construction, policy and its kwargs);
- the keyword parameters of its SB3 class's constructor, each checked by a validator derived
  from its type annotation, with the ranges of ``RANGES`` (SB3's annotations say ``float``,
  not "in [0, 1]");
- for a self-distilling algorithm, the settings of ``DistillConfig`` with its own validators.

Deriving the keys imports the algorithm class (and so torch); it happens on the first
validation for that algorithm and is cached. Unknown algorithm names fail before that.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from rl_selfdistill import validators as v
from rl_selfdistill.algos import registry
from rl_selfdistill.config.policy import META_KEYS, REPLAY_BUFFERS
from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.errors import UsageError

# Constructor parameters that are not hyperparameters: the run sets them (seed, device, logging) or they are objects.
NOT_HYPERPARAMETERS = frozenset(
    {
        "self",
        "policy",
        "env",
        "policy_kwargs",  # a META key with its own validator
        "tensorboard_log",
        "verbose",
        "seed",
        "device",
        "_init_setup_model",
        "rollout_buffer_class",  # the self-distilling PPO needs its own buffer class
        "rollout_buffer_kwargs",
        "supported_action_spaces",
        "support_multi_env",
        "monitor_wrapper",
        "sde_support",
    }
)

# (low, high, low_is_open) of the numbers SB3 annotates only as int or float.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "learning_rate": (0.0, None, True),
    "gamma": (0.0, 1.0, False),
    "gae_lambda": (0.0, 1.0, False),
    "clip_range": (0.0, None, True),
    "clip_range_vf": (0.0, None, True),
    "ent_coef": (0.0, None, False),
    "vf_coef": (0.0, None, False),
    "max_grad_norm": (0.0, None, True),
    "target_kl": (0.0, None, True),
    "tau": (0.0, 1.0, True),
    "exploration_fraction": (0.0, 1.0, False),
    "exploration_initial_eps": (0.0, 1.0, False),
    "exploration_final_eps": (0.0, 1.0, False),
    "n_steps": (1, None, False),
    "batch_size": (1, None, False),
    "n_epochs": (1, None, False),
    "buffer_size": (1, None, False),
    "learning_starts": (0, None, False),
    "gradient_steps": (-1, None, False),
    "target_update_interval": (1, None, False),
    "stats_window_size": (1, None, False),
    "sde_sample_freq": (-1, None, False),
    "rms_prop_eps": (0.0, None, True),
}

SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool}

# Parameters typed `type[...]` are chosen by name from these registries.
CLASS_REGISTRIES: dict[str, Mapping[str, str]] = {"replay_buffer_class": REPLAY_BUFFERS}


def _number(key: str, integer: bool) -> v.Validator:
    low, high, open_low = RANGES.get(key, (None, None, False))
    if integer:
        return v.int_at_least(int(low)) if low is not None else v.integer
    return v.float_in(low, high, open_low=open_low)


def _is_schedule(annotation: Any) -> bool:
    return any(typing.get_origin(arg) is Callable for arg in typing.get_args(annotation))


def validator_for(key: str, annotation: Any) -> v.Validator | None:
    """The validator of a constructor parameter from its annotation; None when a preset cannot express it."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        inner = validator_for(key, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)])  # noqa: UP007
        return v.optional(inner) if inner is not None else None
    if annotation is bool:
        return v.boolean
    if annotation is int:
        return _number(key, integer=True)
    if annotation is float:
        return _number(key, integer=False)
    if _is_schedule(annotation):
        low, _, open_low = RANGES.get(key, (0.0, None, False))
        return v.schedule_or_float(float(low or 0.0), open_low=open_low)
    if int in args and any(typing.get_origin(arg) is tuple for arg in args):
        return v.train_freq
    if typing.get_origin(annotation) is type and key in CLASS_REGISTRIES:
        return v.registry_name(CLASS_REGISTRIES[key])
    if typing.get_origin(annotation) is dict:
        return v.mapping
    return None


def sb3_parent(cls: type) -> type:
    """The SB3 (or sb3-contrib) class an algorithm class is, or extends."""
    return next(klass for klass in cls.__mro__ if klass.__module__.split(".")[0] in ("stable_baselines3", "sb3_contrib"))


def constructor_keys(cls: type) -> dict[str, v.Validator]:
    """Validators of the hyperparameters of the SB3 class `cls` is or extends, from its constructor, and of the
    keywords that the classes between them add (a user's `kl_beta: float = 1.0`), so that a preset can set them."""
    keys: dict[str, v.Validator] = {}
    for klass in _classes_up_to_sb3_parent(cls):
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if name in NOT_HYPERPARAMETERS or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            # SB3 writes real annotations; a string one (postponed evaluation) is read only for the plain scalars.
            annotation = parameter.annotation
            annotation = SCALARS.get(annotation, annotation) if isinstance(annotation, str) else annotation
            validator = validator_for(name, annotation)
            if validator is not None:
                keys.setdefault(name, validator)
    return keys


def _classes_up_to_sb3_parent(cls: type) -> list[type]:
    """The SB3 parent first, then each class below it that defines its own constructor (mixins included)."""
    parent = sb3_parent(cls)
    below = cls.__mro__[: cls.__mro__.index(parent)]
    return [parent, *(klass for klass in reversed(below) if "__init__" in vars(klass))]


def distill_keys(cls: type) -> dict[str, v.Validator]:
    """DistillConfig's validators, with teacher_mode and the algorithm-specific choices narrowed to what `cls` supports."""
    keys = DistillConfig.validators()
    keys["teacher_mode"] = v.choice(*cls.supported_teacher_modes)
    for name, choices in cls.supported_choices.items():
        keys[name] = v.choice(*choices)
    return keys


@cache
def hyperparameter_schema(algo: str) -> dict[str, v.Validator]:
    """Every key a preset may set for `algo`, with its validator."""
    entry = registry.get(algo)
    cls = entry.load_class()
    # The policy names are the class's own aliases (RecurrentPPO's are MlpLstmPolicy, ...).
    keys = {**META_KEYS, "policy": v.choice(*sb3_parent(cls).policy_aliases), **constructor_keys(cls)}
    if entry.is_distilling:
        keys.update(distill_keys(cls))
    return keys


def check_combination(algo: str, values: Mapping[str, Any]) -> None:
    """Checks across keys, once each key is valid on its own."""
    if registry.is_distilling(algo):
        DistillConfig.check_combination(values)
        check_distill_features(registry.algo_class(algo), values)
    check_sb3_combination(registry.algo_class(algo), values)


def check_distill_features(cls: type, values: Mapping[str, Any]) -> None:
    """The class's own refusal (`unsupported_distill_features`, checked again when it is built), made before any
    env is built or run directory written."""
    unsupported = getattr(cls, "unsupported_distill_features", {})
    if unsupported:
        settings = DistillConfig(**{key: values[key] for key in DistillConfig.names() if key in values})
        settings.check_supported(cls.__name__, unsupported)


def check_sb3_combination(cls: type, values: Mapping[str, Any]) -> None:
    """What SB3 would assert on later (after the envs are built, or once training runs), refused now in one line.

    Read from the SB3 parent's constructor, not from algorithm names: a class that normalises advantages (PPO,
    and A2C when asked) needs more than one sample per rollout and per minibatch (one sample normalises to NaN;
    SB3 asserts for PPO); one that trains every N episodes (off-policy `train_freq: [N, episode]`) needs a
    single env. Keys not given yet are not checked.
    """
    parameters = inspect.signature(sb3_parent(cls).__init__).parameters

    def value(key: str) -> Any:
        return values[key] if key in values else getattr(parameters.get(key), "default", None)

    if "normalize_advantage" in parameters and value("normalize_advantage"):
        if "batch_size" in parameters and isinstance(value("batch_size"), int) and value("batch_size") <= 1:
            raise UsageError(
                "batch_size must be at least 2 with normalize_advantage (one sample normalises to NaN); "
                "raise batch_size or set normalize_advantage: false"
            )
        if "n_envs" in values and isinstance(value("n_steps"), int) and value("n_steps") * values["n_envs"] <= 1:
            raise UsageError(
                f"n_steps x n_envs = {value('n_steps')} x {values['n_envs']}: a rollout of one sample cannot normalise "
                "its advantages; raise n_steps or n_envs to give at least 2 samples, or set normalize_advantage: false"
            )
    train_freq = values.get("train_freq")
    if isinstance(train_freq, list | tuple) and train_freq[1] == "episode" and values.get("n_envs", 1) > 1:
        raise UsageError(f"train_freq {list(train_freq)} counts episodes, which needs n_envs 1; count steps or use one env")


def constructor_defaults(algo: str) -> dict[str, Any]:
    """Default value of every schema key that has one in the algorithm's constructor (distillation keys included)."""
    parameters = inspect.signature(registry.algo_class(algo)).parameters
    defaults: dict[str, Any] = {}
    for key in hyperparameter_schema(algo):
        parameter = parameters.get(key)
        if key in META_KEYS or parameter is None or parameter.default is inspect.Parameter.empty:
            continue
        defaults[key] = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
    return defaults
