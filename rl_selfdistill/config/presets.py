"""Hyperparameter presets (agents/*.yaml): loading, layering and validation.

A preset file is RL Zoo style: top-level keys are env ids plus the fallbacks `default` and
one per env family (`atari`, `mujoco`, `minatar`). For one env the sections are layered
`default` < family < env id, each overriding the keys of the previous one. A file may name
another with `base: <algo>`: the base file is resolved first and this file's sections are
layered on top, so the self-distilling presets only add their own keys.

Reading presets imports neither torch nor SB3; validating values against an algorithm's
schema imports its class once (see `schema`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rl_selfdistill import validators as v
from rl_selfdistill.algos import registry
from rl_selfdistill.config.schema import check_combination, hyperparameter_schema
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import data_dir

WANDB_MODES = ("auto", "online", "offline", "disabled")
FAMILIES = ("atari", "mujoco", "minatar")
FALLBACK_SECTIONS = ("default", *FAMILIES)
BASE_KEY = "base"


def validate_hyperparams(algo: str, values: Mapping[str, Any], *, what: str = "hyperparameters") -> dict[str, Any]:
    """Check every key and value for `algo`; returns the values with numbers coerced to their types."""
    registry.get(algo)
    validated = v.validate_mapping(dict(values), hyperparameter_schema(algo), what=what)
    check_combination(algo, validated)
    return validated


def check_algo(algo: str) -> str:
    registry.get(algo)
    return algo


# ----------------------------------------------------------------------------- env families


def env_family(env_id: str) -> str:
    """A family of FAMILIES or 'other': which fallback section of a preset applies. Unknown ids are a UsageError."""
    from rl_selfdistill.envs.registry import resolve

    family = resolve(env_id).family
    return family if family in FAMILIES else "other"


# ----------------------------------------------------------------------------- preset files


def preset_path(algo: str) -> Path:
    return data_dir("agents") / f"{registry.get(algo).preset_name}.yaml"


def load_yaml_text(text: str, what: str) -> Any:
    """yaml.safe_load `text`; a syntax error or a tag safe loading refuses (`!!python/...`) is a one-line UsageError."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as error:
        # Safe loading builds plain data only: a tag naming Python objects is refused, never executed.
        mark = error.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        tag = str(error.problem).rsplit("tag ", 1)[-1].replace("tag:yaml.org,2002:", "!!")
        raise UsageError(f"{what} uses the YAML tag {tag}{where}, which is not allowed (plain data only); remove it") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{what} is not valid YAML{where}; fix the syntax") from None


def read_text_file(path: Path, *, what: str) -> str:
    """A UTF-8 text file's content; unreadable or not UTF-8 text is a one-line UsageError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read {what} {str(path)!r}: {error.strerror or error}; check the path") from None
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {error.start}); pass a YAML text file, saved as UTF-8"
        ) from None


def read_yaml_mapping(path: Path, *, what: str) -> dict[str, Any]:
    """yaml.safe_load a file that must hold a mapping; every failure is a one-line UsageError."""
    data = load_yaml_text(read_text_file(path, what=what), f"{what} {str(path)!r}")
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
        if base not in registry.names() or base in _seen or (base == algo and conf_file is None):
            choices = ", ".join(registry.names())
            raise UsageError(f"'base: {base}' in {str(path)!r} must name another preset: one of {choices}")
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
        overrides[key.strip()] = load_yaml_text(text, f"-params {key.strip()}:{text}") if text.strip() else None
    return overrides


def resolve_hyperparams(
    algo: str, env_id: str, overrides: Mapping[str, Any] | None = None, *, conf_file: Path | None = None
) -> dict[str, Any]:
    """Preset for `algo`/`env_id` with `overrides` applied; everything validated the same way."""
    hyperparams = load_preset(algo, env_id, conf_file=conf_file)
    hyperparams.update(validate_hyperparams(algo, overrides or {}, what="-params"))
    hyperparams.setdefault("n_envs", 1)  # the RL Zoo's default, for a --conf-file that leaves it out
    check_combination(algo, hyperparams)
    if "n_timesteps" not in hyperparams:
        where = repr(str(conf_file)) if conf_file is not None else f"the {algo} preset"
        raise UsageError(f"no n_timesteps for {env_id!r} in {where}; pass -n TIMESTEPS")
    return hyperparams
