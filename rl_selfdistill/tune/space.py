"""Search spaces: which hyperparameters a study samples, from which ranges, and which it fixes.

A space is a YAML mapping from hyperparameter names (the preset keys of the tuned algorithm) to
either a distribution or a fixed value:

    distill_coef: {type: float, low: 0.01, high: 2.0, log: true}
    teacher_update_interval: {type: int, low: 256, high: 65536, log: true}
    teacher_mode: {type: categorical, choices: [snapshot, ema, ensemble]}
    teacher_tau: {type: float, low: 0.001, high: 0.5, log: true, when: {teacher_mode: [ema]}}
    kl_direction: forward          # fixed for every trial

`float` and `int` take `low`, `high` and optionally `log: true` or `step: S`; `categorical` takes
`choices` (numbers, strings, booleans or null). `when: {KEY: [values]}` samples a key only in trials
where the earlier categorical KEY took one of the values. Every bound, choice and fixed value is
checked with the presets' validator of its key, and the point of first choices and low ends with
`config.validate_hyperparams` (which also checks keys that only work together), so a space the
presets would refuse is refused before any trial runs. Imports neither optuna nor torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl_selfdistill import config as cfg
from rl_selfdistill.algos import registry
from rl_selfdistill.errors import UsageError

SPACES_DIR = Path(__file__).resolve().parent / "spaces"
TYPES = ("float", "int", "categorical")
_FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}
_SCALAR = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One sampled hyperparameter: a float/int range or a list of choices, optionally conditional."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, sampled: dict[str, Any]) -> bool:
        """Whether this key is sampled, given the values sampled before it in this trial."""
        return all(key in sampled and sampled[key] in values for key, values in self.when.items())

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return any(value == choice and type(value) is type(choice) for choice in self.choices)
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high

    def to_yaml(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            entry["choices"] = list(self.choices)
        else:
            entry.update({"low": self.low, "high": self.high})
            if self.log:
                entry["log"] = True
            if self.step is not None:
                entry["step"] = self.step
        if self.when:
            entry["when"] = {key: list(values) for key, values in self.when.items()}
        return entry


@dataclass(frozen=True)
class SearchSpace:
    """Sampled params in sampling order, plus fixed values applied to every trial."""

    algo: str
    params: tuple[Param, ...]
    fixed: dict[str, Any]
    source: str

    def to_yaml(self) -> dict[str, Any]:
        return {**{param.name: param.to_yaml() for param in self.params}, **self.fixed}

    def names(self) -> list[str]:
        return [param.name for param in self.params]


def builtin_space_files(algo: str, *, tune_base: bool) -> list[Path]:
    """spaces/<preset>.yaml of a distilling algo (its distillation keys) and, with tune_base, of its base algo."""
    entry = registry.get(algo)
    files = []
    if tune_base or not entry.is_distilling:
        files.append(SPACES_DIR / f"{registry.get(entry.base_name).preset_name}.yaml")
    if entry.is_distilling:
        files.append(SPACES_DIR / f"{entry.preset_name}.yaml")
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise UsageError(f"no built-in search space for {algo} ({missing[0].name}); pass --space FILE")
    return files


def load_space(algo: str, space_file: Path | None = None, *, tune_base: bool = False) -> SearchSpace:
    """The study's space: FILE when given (it replaces the built-in spaces), else the built-in one(s)."""
    registry.get(algo)
    if space_file is not None and tune_base:
        raise UsageError("--space FILE replaces the built-in spaces that --tune-base adds; drop one of them")
    if space_file is not None:
        return parse_space(algo, cfg.read_yaml_mapping(Path(space_file), what="search space"), source=str(space_file))
    entries: dict[str, Any] = {}
    files = builtin_space_files(algo, tune_base=tune_base)
    for path in files:
        entries.update(yaml.safe_load(path.read_text()) or {})
    return parse_space(algo, entries, source="built-in " + " + ".join(f"spaces/{path.name}" for path in files))


def parse_space(algo: str, entries: dict[str, Any], *, source: str) -> SearchSpace:
    """Validate every entry; any problem is a one-line UsageError naming the file and the key."""
    what = f"search space {source!r}"
    unknown = [key for key in entries if key not in known_keys(algo)]
    if unknown:
        cfg.validate_hyperparams(algo, {unknown[0]: None}, what=what)  # the presets' message, naming the file, with a hint
    params: list[Param] = []
    fixed: dict[str, Any] = {}
    for key, entry in entries.items():
        if isinstance(entry, dict):
            params.append(_parse_param(algo, key, entry, params, what=what))
        else:
            fixed[key] = _validated(algo, key, entry, what=what)
    if not params:
        raise UsageError(f"{what} samples nothing; give at least one key a {{type: ...}} distribution")
    space = SearchSpace(algo=algo, params=tuple(params), fixed=fixed, source=source)
    _check_first_point(space, what=what)
    return space


def first_point(space: SearchSpace) -> dict[str, Any]:
    """The fixed values with every active key at its first choice or low end."""
    sampled: dict[str, Any] = {}
    for param in space.params:
        if param.active(sampled):
            sampled[param.name] = param.choices[0] if param.type == "categorical" else param.low
    return {**space.fixed, **sampled}


def _check_first_point(space: SearchSpace, *, what: str) -> None:
    """Keys that only work together (teacher_mode lagged needs teacher_update_unit, ...) are checked on one point.

    Each value was checked on its own; this catches a space whose fixed values conflict, before any trial.
    A sampled combination the algorithm refuses fails its trial, with the reason in trial.json.
    """
    point = first_point(space)
    try:
        cfg.validate_hyperparams(space.algo, point, what=what)
    except UsageError as error:
        raise UsageError(f"{what}: its first point (first choices, low ends) is refused: {error}") from None


def known_keys(algo: str) -> set[str]:
    """Every hyperparameter key the presets of `algo` accept."""
    return set(cfg.hyperparameter_schema(algo))


def _validated(algo: str, key: str, value: Any, *, what: str) -> Any:
    """`value` checked by the presets' validator of `key` (on its own: combinations are checked on a whole point)."""
    try:
        return cfg.hyperparameter_schema(algo)[key](key, value)
    except UsageError as error:
        raise UsageError(f"{what}: {error}") from None


def _parse_param(algo: str, key: str, entry: dict[str, Any], earlier: list[Param], *, what: str) -> Param:
    kind = entry.get("type")
    if kind not in TYPES:
        raise UsageError(f"{what}: {key!r} needs type: float, int or categorical, got {kind!r}")
    extra = sorted(set(entry) - _FIELDS[kind] - {"type", "when"})
    if extra:
        raise UsageError(f"{what}: {key!r} ({kind}) does not take {extra[0]!r}; it takes {', '.join(sorted(_FIELDS[kind]))}")
    when = _parse_when(key, entry.get("when"), earlier, what=what)
    if kind == "categorical":
        return Param(key, kind, choices=_parse_choices(algo, key, entry.get("choices"), what=what), when=when)
    low, high = (_bound(algo, key, kind, entry.get(name), name, what=what) for name in ("low", "high"))
    log, step = entry.get("log", False), entry.get("step")
    if not isinstance(log, bool):
        raise UsageError(f"{what}: {key!r} log must be true or false, got {log!r}")
    if not low < high:
        raise UsageError(f"{what}: {key!r} needs low < high, got low={low!r} high={high!r}")
    if log and low <= 0:
        raise UsageError(f"{what}: {key!r} has log: true, so low must be > 0, got {low!r}")
    if step is not None:
        if (
            log
            or isinstance(step, bool)
            or not isinstance(step, int | float)
            or step <= 0
            or (kind == "int" and step != int(step))
        ):
            raise UsageError(f"{what}: {key!r} step must be a positive {kind} and cannot go with log: true, got {step!r}")
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def _bound(algo: str, key: str, kind: str, value: Any, name: str, *, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{what}: {key!r} needs a numeric {name}, got {value!r}")
    if kind == "int" and value != int(value):
        raise UsageError(f"{what}: {key!r} is an int range, its {name} must be an integer, got {value!r}")
    value = int(value) if kind == "int" else float(value)
    _validated(algo, key, value, what=what)  # each end of the range must be a value the presets accept
    return value


def _parse_choices(algo: str, key: str, choices: Any, *, what: str) -> tuple[Any, ...]:
    if not isinstance(choices, list) or not choices:
        raise UsageError(f"{what}: {key!r} needs a non-empty list of choices, got {choices!r}")
    for choice in choices:
        if not isinstance(choice, _SCALAR):
            raise UsageError(f"{what}: {key!r} choices must be numbers, strings, booleans or null, got {choice!r}")
        _validated(algo, key, choice, what=what)
    if len(set(map(repr, choices))) < len(choices):
        raise UsageError(f"{what}: {key!r} lists a choice twice: {choices!r}")
    return tuple(choices)


def _parse_when(key: str, when: Any, earlier: list[Param], *, what: str) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise UsageError(f"{what}: {key!r} when must map an earlier categorical key to a list of its values")
    by_name = {param.name: param for param in earlier}
    parsed = {}
    for name, values in when.items():
        parent = by_name.get(name)
        if parent is None or parent.type != "categorical":
            raise UsageError(f"{what}: {key!r} is conditioned on {name!r}, which must be a categorical key listed above it")
        values = values if isinstance(values, list) else [values]
        strays = [value for value in values if not parent.contains(value)]
        if strays:
            raise UsageError(f"{what}: {key!r} when {name}: {strays[0]!r} is not one of its choices {list(parent.choices)}")
        parsed[name] = tuple(values)
    return parsed


def check_candidate(space: SearchSpace, params: Any, *, what: str) -> dict[str, Any]:
    """An enqueued trial: keys of the space, values inside its ranges (TPE cannot weigh points outside them)."""
    if not isinstance(params, dict) or not params:
        raise UsageError(f"{what}: each candidate must be a mapping of space keys to values, got {params!r}")
    by_name = {param.name: param for param in space.params}
    for key, value in params.items():
        if key not in by_name:
            raise UsageError(f"{what}: {key!r} is not sampled by the search space; its keys: {', '.join(by_name)}")
        _validated(space.algo, key, value, what=what)
        if not by_name[key].contains(value):
            raise UsageError(f"{what}: {key}={value!r} lies outside the space's {by_name[key].to_yaml()}; widen the space")
    return dict(params)
