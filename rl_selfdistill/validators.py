"""Validators of configuration values: each checks one key's value and returns it coerced to its type.

A validator is ``(key, value) -> value``; a bad value raises a one-line UsageError naming the
key, the value and what is expected. Shared by the preset schema, the tuning search spaces and
``DistillConfig``, so a value is accepted or refused the same way wherever it is given.
Imports neither torch nor SB3.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

from rl_selfdistill.errors import UsageError
from rl_selfdistill.schedules import SCHEDULE_PREFIX_NAMES, initial_value, parse_schedule

Validator = Callable[[str, Any], Any]


# ----------------------------------------------------------------------------- validators


def fail(key: str, value: Any, expected: str) -> UsageError:
    return UsageError(f"hyperparameter {key!r}: got {value!r}, expected {expected}")


def as_float(key: str, value: Any, expected: str) -> float:
    # YAML 1.1 reads `1e-3` (no dot) as a string, the RL Zoo writes `!!float 1e5`: accept both.
    if isinstance(value, bool):
        raise fail(key, value, expected)
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise fail(key, value, expected) from None
    else:
        raise fail(key, value, expected)
    if not math.isfinite(result):
        raise fail(key, value, expected)
    return result


def as_int(key: str, value: Any, expected: str) -> int:
    number = as_float(key, value, expected)
    if number != int(number):
        raise fail(key, value, expected)
    return int(number)


def int_at_least(minimum: int) -> Validator:
    def check(key: str, value: Any) -> int:
        result = as_int(key, value, f"an integer >= {minimum}")
        if result < minimum:
            raise fail(key, value, f"an integer >= {minimum}")
        return result

    return check


def float_in(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Validator:
    lower = "" if low is None else (f"> {low}" if open_low else f">= {low}")
    upper = "" if high is None else f"<= {high}"
    expected = "a number " + " and ".join(part for part in (lower, upper) if part) if (lower or upper) else "a number"

    def check(key: str, value: Any) -> float:
        result = as_float(key, value, expected)
        too_low = low is not None and (result <= low if open_low else result < low)
        if too_low or (high is not None and result > high):
            raise fail(key, value, expected)
        return result

    return check


def optional(inner: Validator) -> Validator:
    def check(key: str, value: Any) -> Any:
        return None if value is None else inner(key, value)

    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(key, value, "true or false")
    return value


def choice(*options: str) -> Validator:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise fail(key, value, "one of " + ", ".join(options))
        return value

    return check


def mapping(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(key, value, "a mapping like {name: value}")
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
                raise fail(key, value, expected) from None
        else:
            start = value = as_float(key, value, expected)
        if not math.isfinite(start) or (start <= minimum if open_low else start < minimum):
            raise fail(key, value, expected)
        return value

    return check


def make_schedule(value: float | str) -> float | Callable[[float], float]:
    """Turn a validated number or `lin_<v>` string into what SB3 expects (a float or a picklable schedule)."""
    return parse_schedule(value, "schedule") if isinstance(value, str) else value


# ----------------------------------------------------------------------------- policy_kwargs


def train_freq(key: str, value: Any) -> int | list[Any]:
    expected = "a positive integer or [n, 'step' | 'episode']"
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[1] not in ("step", "episode"):
            raise fail(key, value, expected)
        return [int_at_least(1)(key, value[0]), value[1]]
    return int_at_least(1)(key, value)


def registry_name(registry: Mapping[str, Any]) -> Validator:
    def check(key: str, value: Any) -> str:
        if value not in registry:
            raise fail(key, value, "one of " + ", ".join(sorted(registry)))
        return value

    return check


def validate_mapping(values: Mapping[str, Any], schema: Mapping[str, Validator], *, what: str) -> dict[str, Any]:
    """Every key of `values` must be in `schema`; returns the values as each key's validator coerced them."""
    unknown = sorted(set(values) - set(schema))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(schema), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown key {key!r} in {what}{hint}; valid keys: {', '.join(sorted(schema))}")
    return {key: schema[key](key, value) for key, value in values.items()}


def integer(key: str, value: Any) -> int:
    return as_int(key, value, "an integer")
