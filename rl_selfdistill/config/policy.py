"""Run-level preset keys (META_KEYS) and the registries that turn names in presets into objects.

Configs are data: classes (activations, optimizers, features extractors, replay buffers)
are named in presets and looked up here, never evaluated. Imports neither torch nor SB3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from rl_selfdistill import validators as v
from rl_selfdistill.errors import UsageError

ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU", "gelu": "GELU", "silu": "SiLU"}
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}
# name -> "module:Class"; a new features extractor is one entry here.
FEATURES_EXTRACTORS: dict[str, str] = {
    "flatten": "stable_baselines3.common.torch_layers:FlattenExtractor",
    "nature_cnn": "stable_baselines3.common.torch_layers:NatureCNN",
    "combined": "stable_baselines3.common.torch_layers:CombinedExtractor",
    "minatar_cnn": "rl_selfdistill.policies:MinAtarCNN",  # the MinAtar paper's small CNN, for MinAtar/* ids
}
REPLAY_BUFFERS: dict[str, str] = {
    "ReplayBuffer": "stable_baselines3.common.buffers:ReplayBuffer",
    "DictReplayBuffer": "stable_baselines3.common.buffers:DictReplayBuffer",
    "HerReplayBuffer": "stable_baselines3.her.her_replay_buffer:HerReplayBuffer",
}
POLICIES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
ACTION_NOISES: dict[str, str] = {
    "normal": "stable_baselines3.common.noise:NormalActionNoise",
    "ornstein-uhlenbeck": "stable_baselines3.common.noise:OrnsteinUhlenbeckActionNoise",
}


def import_named(path: str) -> Any:
    """The object at "module:attribute"."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _layer_list(key: str, value: Any) -> list[int]:
    valid = isinstance(value, list) and all(isinstance(size, int) and not isinstance(size, bool) for size in value)
    if not valid or not all(size > 0 for size in value):
        raise v.fail(key, value, "a list of positive layer sizes like [64, 64]")
    return value


def net_arch(key: str, value: Any) -> list[int] | dict[str, list[int]]:
    if isinstance(value, Mapping):
        unknown = set(value) - {"pi", "vf", "qf"}
        if unknown:
            raise v.fail(key, value, "a list like [64, 64] or a mapping with keys pi, vf (PPO) or qf")
        return {name: _layer_list(f"{key}.{name}", sizes) for name, sizes in value.items()}
    return _layer_list(key, value)


POLICY_KWARGS: dict[str, v.Validator] = {
    "net_arch": net_arch,
    "activation_fn": v.registry_name(ACTIVATIONS),
    "ortho_init": v.boolean,
    "log_std_init": v.float_in(),
    "full_std": v.boolean,
    "use_expln": v.boolean,
    "squash_output": v.boolean,
    "normalize_images": v.boolean,
    "share_features_extractor": v.boolean,
    "features_extractor_class": v.registry_name(FEATURES_EXTRACTORS),
    "features_extractor_kwargs": v.mapping,
    "optimizer_class": v.registry_name(OPTIMIZERS),
    "optimizer_kwargs": v.mapping,
    # Quantile networks (sb3-contrib's QRDQN)
    "n_quantiles": v.int_at_least(1),
    # Recurrent policies (sb3-contrib's RecurrentPPO)
    "lstm_hidden_size": v.int_at_least(1),
    "n_lstm_layers": v.int_at_least(1),
    "shared_lstm": v.boolean,
    "enable_critic_lstm": v.boolean,
}


def policy_kwargs(key: str, value: Any) -> dict[str, Any]:
    return v.validate_mapping(v.mapping(key, value), POLICY_KWARGS, what=key)


def build_policy_kwargs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Replace registry names by the classes they stand for."""
    import torch

    built = dict(raw)
    if "activation_fn" in built:
        built["activation_fn"] = getattr(torch.nn, ACTIVATIONS[built["activation_fn"]])
    if "optimizer_class" in built:
        built["optimizer_class"] = getattr(torch.optim, OPTIMIZERS[built["optimizer_class"]])
    if "features_extractor_class" in built:
        built["features_extractor_class"] = import_named(FEATURES_EXTRACTORS[built["features_extractor_class"]])
    return built


NORMALIZE_KWARGS: dict[str, v.Validator] = {
    "norm_obs": v.boolean,
    "norm_reward": v.boolean,
    "clip_obs": v.float_in(0.0, open_low=True),
    "clip_reward": v.float_in(0.0, open_low=True),
    "gamma": v.float_in(0.0, 1.0),
    "epsilon": v.float_in(0.0, open_low=True),
}


def normalize(key: str, value: Any) -> bool | dict[str, Any]:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return v.validate_mapping(dict(value), NORMALIZE_KWARGS, what=key)
    raise v.fail(key, value, "true, false or a mapping of VecNormalize options (norm_obs, norm_reward, clip_obs, ...)")


# Keys the run itself consumes (env construction, budget), as in the RL Zoo.
META_KEYS: dict[str, v.Validator] = {
    "n_timesteps": v.int_at_least(1),
    "policy": v.choice(*POLICIES),
    "n_envs": v.int_at_least(1),
    "normalize": normalize,
    "frame_stack": v.optional(v.int_at_least(1)),
    "env_kwargs": v.mapping,
    "wrapper_kwargs": v.mapping,  # Atari preprocessing options (rl_selfdistill.envs.AtariSettings fields)
    "max_episode_steps": v.optional(v.int_at_least(1)),
    "policy_kwargs": policy_kwargs,
    # Exploration noise of off-policy algorithms with a deterministic actor (TD3), as the Zoo writes it.
    "noise_type": v.optional(v.choice(*ACTION_NOISES)),
    "noise_std": v.float_in(0.0, open_low=True),
}


def action_noise(hyperparams: Mapping[str, Any], action_space: Any) -> Any:
    """The Zoo's ``noise_type`` / ``noise_std`` as an SB3 ActionNoise over every action dimension, or None."""
    kind = hyperparams.get("noise_type")
    if kind is None:
        return None
    if "noise_std" not in hyperparams:
        raise UsageError(f"noise_type {kind!r} needs noise_std, the standard deviation of the action noise")
    import numpy as np

    n_actions = int(np.prod(action_space.shape))
    sigma = float(hyperparams["noise_std"]) * np.ones(n_actions)
    return import_named(ACTION_NOISES[kind])(mean=np.zeros(n_actions), sigma=sigma)


# Values that SB3 takes as objects, built from their validated data form.
SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf", "distill_coef")


def model_kwargs(hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs for the algorithm: the non-meta keys, with registry names turned into objects."""
    kwargs = {key: value for key, value in hyperparams.items() if key not in META_KEYS or key == "policy_kwargs"}
    for key in SCHEDULE_KEYS:
        if kwargs.get(key) is not None:
            kwargs[key] = v.make_schedule(kwargs[key])
    builders: dict[str, Callable[[Any], Any]] = {
        "train_freq": lambda value: tuple(value) if isinstance(value, list) else value,
        "distill_coef_bounds": tuple,
        "policy_kwargs": build_policy_kwargs,
        "replay_buffer_class": lambda name: import_named(REPLAY_BUFFERS[name]),
    }
    for key, build in builders.items():
        if kwargs.get(key) is not None:
            kwargs[key] = build(kwargs[key])
    return kwargs
