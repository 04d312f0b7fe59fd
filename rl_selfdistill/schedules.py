"""Schedules written as data: numbers and the RL Zoo's ``lin_<value>`` strings."""

from __future__ import annotations

from collections.abc import Callable

from stable_baselines3.common.utils import ConstantSchedule, LinearSchedule

from rl_selfdistill.errors import UsageError

ScheduleLike = float | int | str | Callable[[float], float]

_PREFIXES = {
    # lin_<v>: v * progress_remaining, i.e. from v at the start to 0 at the end (RL Zoo convention).
    "lin": lambda value: LinearSchedule(start=value, end=0.0, end_fraction=1.0),
}


def parse_schedule(value: ScheduleLike, name: str = "value") -> Callable[[float], float]:
    """Turn a number, a ``lin_<v>`` string or a callable of progress_remaining into a schedule.

    Strings go through an explicit registry of prefixes; nothing is evaluated.
    """
    if callable(value):
        return value
    if isinstance(value, bool):
        raise UsageError(f"{name} must be a number or a schedule like lin_0.5, got {value!r}")
    if isinstance(value, int | float):
        return ConstantSchedule(float(value))
    if isinstance(value, str):
        prefix, _, number = value.partition("_")
        if prefix in _PREFIXES:
            try:
                return _PREFIXES[prefix](float(number))
            except ValueError:
                pass
        raise UsageError(
            f"{name}={value!r} is not a schedule; use a number or one of {sorted(p + '_<value>' for p in _PREFIXES)}"
        )
    raise UsageError(f"{name} must be a number or a schedule like lin_0.5, got {type(value).__name__}")


def initial_value(schedule: Callable[[float], float]) -> float:
    """The schedule's value at the start of training (progress_remaining = 1)."""
    return float(schedule(1.0))
