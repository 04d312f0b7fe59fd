"""Schedules written as data: numbers and the RL Zoo's ``lin_<value>`` strings.

SB3 (and so torch) is imported only when a schedule object is built, so that validating a
config stays fast on the CLI's error path.
"""

from __future__ import annotations

from collections.abc import Callable

from rl_selfdistill.errors import UsageError

ScheduleLike = float | int | str | Callable[[float], float]


def _linear_to_zero(value: float) -> Callable[[float], float]:
    from stable_baselines3.common.utils import LinearSchedule

    # lin_<v>: v * progress_remaining, from v at the start to 0 at the end (RL Zoo convention).
    return LinearSchedule(start=value, end=0.0, end_fraction=1.0)


def _constant(value: float) -> Callable[[float], float]:
    from stable_baselines3.common.utils import ConstantSchedule

    return ConstantSchedule(value)


# The explicit registry of schedule strings: ``<prefix>_<number>``. Nothing is evaluated.
_PREFIXES: dict[str, Callable[[float], Callable[[float], float]]] = {"lin": _linear_to_zero}
SCHEDULE_PREFIX_NAMES: tuple[str, ...] = tuple(_PREFIXES)


def parse_schedule(value: ScheduleLike, name: str = "value") -> Callable[[float], float]:
    """Turn a number, a ``lin_<v>`` string or a callable of progress_remaining into a schedule."""
    if callable(value):
        return value
    if isinstance(value, bool):
        raise UsageError(f"{name} must be a number or a schedule like lin_0.5, got {value!r}")
    if isinstance(value, int | float):
        return _constant(float(value))
    if isinstance(value, str):
        prefix, _, number = value.partition("_")
        if prefix in _PREFIXES:
            try:
                return _PREFIXES[prefix](float(number))
            except ValueError:
                pass
        valid = ", ".join(f"{p}_<value>" for p in _PREFIXES)
        raise UsageError(f"{name}={value!r} is not a schedule; use a number or one of: {valid}")
    raise UsageError(f"{name} must be a number or a schedule like lin_0.5, got {type(value).__name__}")


def initial_value(schedule: Callable[[float], float]) -> float:
    """The schedule's value at the start of training (progress_remaining = 1)."""
    return float(schedule(1.0))
