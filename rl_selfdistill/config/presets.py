"""Hyperparameter presets (agents/*.yaml): loading, validation and the registries that turn data into objects.

A preset file is RL Zoo style: top-level keys are env ids plus the fallbacks `default`,
`atari` and `mujoco`. For one env the sections are layered `default` < family < env id,
each overriding the keys of the previous one. A file may name another with `base: <algo>`:
the base file is resolved first and this file's sections are layered on top, so the
self-distilling presets only add their own keys.

This module deliberately imports neither torch nor SB3 at import time, so that bad
invocations are rejected in a fraction of a second.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import data_dir
from rl_selfdistill.schedules import SCHEDULE_PREFIX_NAMES, initial_value, parse_schedule

ALGOS = ("ppo", "sd_ppo", "dqn", "sd_dqn")
WANDB_MODES = ("auto", "online", "offline", "disabled")
FALLBACK_SECTIONS = ("default", "atari", "mujoco")
BASE_KEY = "base"

Validator = Callable[[str, Any], Any]


# ----------------------------------------------------------------------------- validators


def _fail(key: str, value: Any, expected: str) -> UsageError:
    return UsageError(f"hyperparameter {key!r}: got {value!r}, expected {expected}")


def _as_float(key: str, value: Any, expected: str) -> float:
    # YAML 1.1 reads `1e-3` (no dot) as a string, the RL Zoo writes `!!float 1e5`: accept both.
    if isinstance(value, bool):
        raise _fail(key, value, expected)
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise _fail(key, value, expected) from None
    else:
        raise _fail(key, value, expected)
    if not math.isfinite(result):
        raise _fail(key, value, expected)
    return result


def _as_int(key: str, value: Any, expected: str) -> int:
    number = _as_float(key, value, expected)
    if number != int(number):
        raise _fail(key, value, expected)
    return int(number)


def int_at_least(minimum: int) -> Validator:
    def check(key: str, value: Any) -> int:
        result = _as_int(key, value, f"an integer >= {minimum}")
        if result < minimum:
            raise _fail(key, value, f"an integer >= {minimum}")
        return result

    return check


def float_in(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Validator:
    lower = "" if low is None else (f"> {low}" if open_low else f">= {low}")
    upper = "" if high is None else f"<= {high}"
    expected = "a number " + " and ".join(part for part in (lower, upper) if part) if (lower or upper) else "a number"

    def check(key: str, value: Any) -> float:
        result = _as_float(key, value, expected)
        too_low = low is not None and (result <= low if open_low else result < low)
        if too_low or (high is not None and result > high):
            raise _fail(key, value, expected)
        return result

    return check


def optional(inner: Validator) -> Validator:
    def check(key: str, value: Any) -> Any:
        return None if value is None else inner(key, value)

    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def choice(*options: str) -> Validator:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise _fail(key, value, "one of " + ", ".join(options))
        return value

    return check


def mapping(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(key, value, "a mapping like {name: value}")
    return dict(value)


# ----------------------------------------------------------------------------- schedules


SCHEDULE_PREFIXES = tuple(f"{prefix}_" for prefix in SCHEDULE_PREFIX_NAMES)


def schedule_or_float(minimum: float, *, open_low: bool) -> Validator:
    bound = f"> {minimum}" if open_low else f">= {minimum}"
    expected = f"a number {bound} or a schedule 'lin_<initial value>'"

    def check(key: str, value: Any) -> float | str:
        if isinstance(value, str) and value.startswith(SCHEDULE_PREFIXES):
            try:
                start = initial_value(parse_schedule(value, key))
            except UsageError:
                raise _fail(key, value, expected) from None
        else:
            start = value = _as_float(key, value, expected)
        if not math.isfinite(start) or (start <= minimum if open_low else start < minimum):
            raise _fail(key, value, expected)
        return value

    return check


def make_schedule(value: float | str) -> float | Callable[[float], float]:
    """Turn a validated number or `lin_<v>` string into what SB3 expects (a float or a picklable schedule)."""
    return parse_schedule(value, "schedule") if isinstance(value, str) else value


# ----------------------------------------------------------------------------- policy_kwargs

ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU", "gelu": "GELU", "silu": "SiLU"}
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}


def _layer_list(key: str, value: Any) -> list[int]:
    valid = isinstance(value, list) and all(isinstance(size, int) and not isinstance(size, bool) for size in value)
    if not valid or not all(size > 0 for size in value):
        raise _fail(key, value, "a list of positive layer sizes like [64, 64]")
    return value


def net_arch(key: str, value: Any) -> list[int] | dict[str, list[int]]:
    if isinstance(value, Mapping):
        unknown = set(value) - {"pi", "vf", "qf"}
        if unknown:
            raise _fail(key, value, "a list like [64, 64] or a mapping with keys pi, vf (PPO) or qf")
        return {name: _layer_list(f"{key}.{name}", sizes) for name, sizes in value.items()}
    return _layer_list(key, value)


def registry_name(registry: Mapping[str, str]) -> Validator:
    def check(key: str, value: Any) -> str:
        if value not in registry:
            raise _fail(key, value, "one of " + ", ".join(sorted(registry)))
        return value

    return check


POLICY_KWARGS: dict[str, Validator] = {
    "net_arch": net_arch,
    "activation_fn": registry_name(ACTIVATIONS),
    "ortho_init": boolean,
    "log_std_init": float_in(),
    "full_std": boolean,
    "use_expln": boolean,
    "squash_output": boolean,
    "normalize_images": boolean,
    "share_features_extractor": boolean,
    "optimizer_class": registry_name(OPTIMIZERS),
    "optimizer_kwargs": mapping,
}


def policy_kwargs(key: str, value: Any) -> dict[str, Any]:
    return _validate_mapping(mapping(key, value), POLICY_KWARGS, what=key)


def build_policy_kwargs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Replace registry names by the torch classes they stand for."""
    import torch

    built = dict(raw)
    if "activation_fn" in built:
        built["activation_fn"] = getattr(torch.nn, ACTIVATIONS[built["activation_fn"]])
    if "optimizer_class" in built:
        built["optimizer_class"] = getattr(torch.optim, OPTIMIZERS[built["optimizer_class"]])
    return built


# ----------------------------------------------------------------------------- other composite values

NORMALIZE_KWARGS: dict[str, Validator] = {
    "norm_obs": boolean,
    "norm_reward": boolean,
    "clip_obs": float_in(0.0, open_low=True),
    "clip_reward": float_in(0.0, open_low=True),
    "gamma": float_in(0.0, 1.0),
    "epsilon": float_in(0.0, open_low=True),
}


def normalize(key: str, value: Any) -> bool | dict[str, Any]:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return _validate_mapping(dict(value), NORMALIZE_KWARGS, what=key)
    raise _fail(key, value, "true, false or a mapping of VecNormalize options (norm_obs, norm_reward, clip_obs, ...)")


def train_freq(key: str, value: Any) -> int | list[Any]:
    expected = "a positive integer or [n, 'step' | 'episode']"
    if isinstance(value, list):
        if len(value) != 2 or value[1] not in ("step", "episode"):
            raise _fail(key, value, expected)
        return [int_at_least(1)(key, value[0]), value[1]]
    return int_at_least(1)(key, value)


def coef_bounds(key: str, value: Any) -> list[float]:
    expected = "[low, high] with 0 <= low <= high"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(key, value, expected)
    low, high = (_as_float(key, bound, expected) for bound in value)
    if not 0 <= low <= high:
        raise _fail(key, value, expected)
    return [low, high]


# ----------------------------------------------------------------------------- schemas

# Keys the run itself consumes (env construction, budget), as in the RL Zoo.
META_KEYS: dict[str, Validator] = {
    "n_timesteps": int_at_least(1),
    "policy": choice("MlpPolicy", "CnnPolicy", "MultiInputPolicy"),
    "n_envs": int_at_least(1),
    "normalize": normalize,
    "frame_stack": optional(int_at_least(1)),
    "env_kwargs": mapping,
    "wrapper_kwargs": mapping,  # Atari preprocessing options (rl_selfdistill.envs.AtariSettings fields)
    "max_episode_steps": optional(int_at_least(1)),
    "policy_kwargs": policy_kwargs,
}

COMMON_KEYS: dict[str, Validator] = {
    "learning_rate": schedule_or_float(0.0, open_low=True),
    "gamma": float_in(0.0, 1.0),
    "batch_size": int_at_least(1),
    "max_grad_norm": float_in(0.0, open_low=True),
    "stats_window_size": int_at_least(1),
}

PPO_KEYS: dict[str, Validator] = {
    "n_steps": int_at_least(1),
    "n_epochs": int_at_least(1),
    "gae_lambda": float_in(0.0, 1.0),
    "clip_range": schedule_or_float(0.0, open_low=True),
    "clip_range_vf": optional(schedule_or_float(0.0, open_low=True)),
    "normalize_advantage": boolean,
    "ent_coef": float_in(0.0),
    "vf_coef": float_in(0.0),
    "use_sde": boolean,
    "sde_sample_freq": int_at_least(-1),
    "target_kl": optional(float_in(0.0, open_low=True)),
}

DQN_KEYS: dict[str, Validator] = {
    "buffer_size": int_at_least(1),
    "learning_starts": int_at_least(0),
    "tau": float_in(0.0, 1.0, open_low=True),
    "train_freq": train_freq,
    "gradient_steps": int_at_least(-1),
    "optimize_memory_usage": boolean,
    "target_update_interval": int_at_least(1),
    "exploration_fraction": float_in(0.0, 1.0),
    "exploration_initial_eps": float_in(0.0, 1.0),
    "exploration_final_eps": float_in(0.0, 1.0),
}


def distill_keys(teacher_modes: Sequence[str]) -> dict[str, Validator]:
    return {
        "distill_coef": schedule_or_float(0.0, open_low=False),
        "teacher_update_interval": int_at_least(1),
        "teacher_mode": choice(*teacher_modes),
        "teacher_tau": float_in(0.0, 1.0, open_low=True),
        "teacher_ensemble_size": int_at_least(1),
        "kl_direction": choice("forward", "reverse"),
        "distill_temperature": float_in(0.0, open_low=True),
        "distill_target_kl": optional(float_in(0.0, open_low=True)),
        "distill_coef_bounds": coef_bounds,
    }


SCHEMAS: dict[str, dict[str, Validator]] = {
    "ppo": {**META_KEYS, **COMMON_KEYS, **PPO_KEYS},
    "dqn": {**META_KEYS, **COMMON_KEYS, **DQN_KEYS},
    "sd_ppo": {**META_KEYS, **COMMON_KEYS, **PPO_KEYS, **distill_keys(("snapshot", "ema", "ensemble"))},
    "sd_dqn": {**META_KEYS, **COMMON_KEYS, **DQN_KEYS, **distill_keys(("snapshot", "ema", "ensemble", "target"))},
}


def _validate_mapping(values: dict[str, Any], schema: Mapping[str, Validator], *, what: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(schema))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(schema), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown key {key!r} in {what}{hint}; valid keys: {', '.join(sorted(schema))}")
    return {key: schema[key](key, value) for key, value in values.items()}


def validate_hyperparams(algo: str, values: Mapping[str, Any], *, what: str = "hyperparameters") -> dict[str, Any]:
    """Check every key and value for `algo`; returns the values with numbers coerced to their types."""
    check_algo(algo)
    return _validate_mapping(dict(values), SCHEMAS[algo], what=what)


def check_algo(algo: str) -> str:
    if algo not in ALGOS:
        raise UsageError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")
    return algo


# ----------------------------------------------------------------------------- env families


def env_family(env_id: str) -> str:
    """'atari', 'mujoco' or 'other': which fallback section of a preset applies. Unknown ids are a UsageError."""
    from rl_selfdistill.envs.registry import resolve

    family = resolve(env_id).family
    return family if family in ("atari", "mujoco") else "other"


# ----------------------------------------------------------------------------- preset files


def preset_path(algo: str) -> Path:
    return data_dir("agents") / f"{check_algo(algo)}.yaml"


def read_yaml_mapping(path: Path, *, what: str) -> dict[str, Any]:
    """yaml.safe_load a file that must hold a mapping; every failure is a one-line UsageError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read {what} {str(path)!r}: {error.strerror or error}; check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{what} {str(path)!r} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _layered_section(preset: Mapping[str, Any], env_id: str, family: str, *, source: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in ("default", family, env_id):
        section = preset.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise UsageError(f"section {name!r} in {str(source)!r} must be a mapping of hyperparameters")
        merged.update(section)
    return merged


def load_preset(algo: str, env_id: str, *, conf_file: Path | None = None, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Resolved, validated preset hyperparameters of `algo` for `env_id` (before -params overrides)."""
    check_algo(algo)
    path = Path(conf_file) if conf_file is not None else preset_path(algo)
    preset = read_yaml_mapping(path, what="preset file")
    merged: dict[str, Any] = {}
    base = preset.get(BASE_KEY)
    if base is not None:
        # A custom --conf-file may extend the shipped preset of its own algorithm; shipped presets may not loop.
        if base not in ALGOS or base in _seen or (base == algo and conf_file is None):
            raise UsageError(f"'base: {base}' in {str(path)!r} must name another preset: one of {', '.join(ALGOS)}")
        merged.update(load_preset(base, env_id, _seen=(*_seen, algo)))
    merged.update(_layered_section(preset, env_id, env_family(env_id), source=path))
    return validate_hyperparams(algo, merged, what=f"preset {str(path)!r}")


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """`-params key:value ...` -> {key: yaml.safe_load(value)}; values are validated later with the preset."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"-params expects key:value items, got {item!r}; e.g. -params n_steps:128 learning_rate:lin_3e-4")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UsageError(f"-params {key.strip()}: cannot parse {text!r} as YAML; quote it or fix the syntax") from None
    return overrides


def resolve_hyperparams(
    algo: str, env_id: str, overrides: Mapping[str, Any] | None = None, *, conf_file: Path | None = None
) -> dict[str, Any]:
    """Preset for `algo`/`env_id` with `overrides` applied; everything validated the same way."""
    hyperparams = load_preset(algo, env_id, conf_file=conf_file)
    hyperparams.update(validate_hyperparams(algo, overrides or {}, what="-params"))
    if "n_timesteps" not in hyperparams:
        raise UsageError(f"no n_timesteps for {env_id!r} in the {algo} preset; pass -n TIMESTEPS")
    return hyperparams


def model_kwargs(hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs for the SB3 algorithm: the non-meta keys, with registry names turned into objects."""
    kwargs = {key: value for key, value in hyperparams.items() if key not in META_KEYS or key in ("policy_kwargs",)}
    for key in ("learning_rate", "clip_range", "clip_range_vf", "distill_coef"):
        if kwargs.get(key) is not None:
            kwargs[key] = make_schedule(kwargs[key])
    if "train_freq" in kwargs and isinstance(kwargs["train_freq"], list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    if "distill_coef_bounds" in kwargs:
        kwargs["distill_coef_bounds"] = tuple(kwargs["distill_coef_bounds"])
    if "policy_kwargs" in kwargs:
        kwargs["policy_kwargs"] = build_policy_kwargs(kwargs["policy_kwargs"])
    return kwargs
