"""Configuration as data: presets (agents/*.yaml), the schema derived from the algorithms'
constructors, the registries that turn names into objects, and `-params` parsing.

- ``presets``: loading and layering preset files, validation, ``-params``;
- ``schema``: which keys an algorithm takes and how each value is checked;
- ``policy``: run-level keys (budget, env, policy kwargs) and the name -> class registries.
"""

from rl_selfdistill.config.policy import META_KEYS, build_policy_kwargs, model_kwargs
from rl_selfdistill.config.presets import (
    BASE_KEY,
    FALLBACK_SECTIONS,
    FAMILIES,
    WANDB_MODES,
    check_algo,
    env_family,
    load_preset,
    parse_params,
    preset_path,
    read_yaml_mapping,
    resolve_hyperparams,
    validate_hyperparams,
)
from rl_selfdistill.config.schema import hyperparameter_schema

__all__ = [
    "BASE_KEY",
    "FALLBACK_SECTIONS",
    "FAMILIES",
    "META_KEYS",
    "WANDB_MODES",
    "build_policy_kwargs",
    "check_algo",
    "env_family",
    "load_preset",
    "model_kwargs",
    "parse_params",
    "preset_path",
    "read_yaml_mapping",
    "resolve_hyperparams",
    "hyperparameter_schema",
    "validate_hyperparams",
]
