"""DistillConfig: every self-distillation setting, validated in one place.

The algorithms take these settings as flat SB3-style keywords (``distill_coef=0.2``); the
shared mixin gathers them into one ``DistillConfig``. Presets, ``-params`` and tuning spaces
validate the same keys with the same validators (``DistillConfig.validators()``), so a value
is accepted or refused identically wherever it is given. Imports neither torch nor SB3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rl_selfdistill import validators as v
from rl_selfdistill.errors import UsageError
from rl_selfdistill.schedules import ScheduleLike, parse_schedule

TEACHER_MODES: tuple[str, ...] = ("snapshot", "ema", "ensemble", "lagged", "reset", "target")
TEACHER_UNITS: tuple[str, ...] = ("env_steps", "gradient_steps", "phases")
KL_DIRECTIONS: tuple[str, ...] = ("forward", "reverse")
COEF_MODES: tuple[str, ...] = ("fixed", "relative")
GAUSSIAN_TARGETS: tuple[str, ...] = ("full", "mean_mse", "mean_kl")
RESET_PARTS: tuple[str, ...] = ("all", "heads")
QUANTILE_LOSSES: tuple[str, ...] = ("boltzmann", "quantile", "quantile_huber")
MAX_LAG = 1000  # a lagged teacher stores lag + 1 copies of the network


def _coefficient(key: str, value: Any) -> Any:
    """A number >= 0, a ``lin_<v>`` string, or (Python API only) a callable of progress_remaining."""
    if callable(value):
        return value
    return v.schedule_or_float(0.0, open_low=False)(key, value)


def _coef_bounds(key: str, value: Any) -> tuple[float, float]:
    # The adaptive coefficient is doubled and halved: a lower bound of 0 would let it reach 0 and stay there.
    expected = "[low, high] with 0 < low <= high"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise v.fail(key, value, expected)
    low, high = (v.as_float(key, bound, expected) for bound in value)
    if not 0 < low <= high:
        raise v.fail(key, value, expected)
    return (low, high)


def _setting(default: Any, validator: v.Validator, doc: str) -> Any:
    return field(default=default, metadata={"validator": validator, "doc": doc})


@dataclass(frozen=True)
class DistillConfig:
    """The distillation settings of one self-distilling algorithm (see the README's options table)."""

    distill_coef: ScheduleLike = _setting(
        0.5, _coefficient, "weight of the distillation term: number, lin_<v> or callable; 0 = plain SB3"
    )
    teacher_update_interval: int = _setting(
        20_000, v.int_at_least(1), "teacher_update_units between refreshes; for lagged: the lag; for reset: between resets"
    )
    teacher_update_unit: str = _setting(
        "env_steps", v.choice(*TEACHER_UNITS), "env_steps (summed over envs) | gradient_steps | phases (update phases)"
    )
    teacher_mode: str = _setting(
        "snapshot", v.choice(*TEACHER_MODES), "snapshot | ema | ensemble | lagged | reset | target (DQN)"
    )
    teacher_tau: float = _setting(0.05, v.float_in(0.0, 1.0, open_low=True), "Polyak rate of the ema teacher")
    teacher_ensemble_size: int = _setting(3, v.int_at_least(1), "snapshots kept by the ensemble teacher")
    kl_direction: str = _setting("forward", v.choice(*KL_DIRECTIONS), "forward = KL(teacher||student), reverse")
    distill_temperature: float = _setting(1.0, v.float_in(0.0, open_low=True), "distributions tempered as p^(1/T)")
    distill_target_kl: float | None = _setting(
        None, v.optional(v.float_in(0.0, open_low=True)), "adapt the coefficient towards this mean KL"
    )
    distill_coef_bounds: tuple[float, float] = _setting((1e-4, 10.0), _coef_bounds, "clamp range of the adaptive coefficient")
    distill_coef_mode: str = _setting(
        "fixed",
        v.choice(*COEF_MODES),
        "fixed: the weight is distill_coef; relative: distill_coef x mean|L_RL| / mean L_distill",
    )
    distill_relative_window: int = _setting(
        100,
        v.int_at_least(1),
        "gradient steps in the relative weight's running means (off-policy: also in one target-KL adaptation)",
    )
    distill_warmup: int = _setting(0, v.int_at_least(0), "gradient steps with a teacher before the relative weight starts")
    distill_lr_scaled: bool = _setting(False, v.boolean, "multiply the weight by the learning-rate schedule's fraction")
    distill_gate: bool = _setting(False, v.boolean, "multiply the weight by max(0, (R_teacher - R_student) / |R_teacher|)")
    distill_separate_batch: bool = _setting(False, v.boolean, "distil on an independent minibatch / replay sample")
    distill_gaussian: str = _setting(
        "full", v.choice(*GAUSSIAN_TARGETS), "Gaussian policies: full KL | mean_mse | mean_kl (student std detached)"
    )
    distill_quantile_loss: str = _setting(
        "boltzmann",
        v.choice(*QUANTILE_LOSSES),
        "QR-DQN: boltzmann = KL of softmax(mean quantile / T) | quantile = quantile regression loss to teacher quantiles"
        " | quantile_huber = QR-DQN's quantile Huber loss to them",
    )
    distill_value_coef: float = _setting(0.0, v.float_in(0.0), "weight of the MSE to the teacher's values / Q-values")
    reset_parts: str = _setting("all", v.choice(*RESET_PARTS), "reset mode: re-initialise the whole network or its heads")
    reset_anneal_steps: int = _setting(
        10_000, v.int_at_least(1), "reset mode: env steps over which the weight falls from distill_coef to 0"
    )

    def __post_init__(self) -> None:
        for name, validator in self.validators().items():
            object.__setattr__(self, name, validator(name, getattr(self, name)))
        self.check_combination(dataclasses.asdict(self))

    @classmethod
    def validators(cls) -> dict[str, v.Validator]:
        """The validator of every setting, keyed by its keyword name."""
        return {item.name: item.metadata["validator"] for item in dataclasses.fields(cls)}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in dataclasses.fields(cls))

    @classmethod
    def docs(cls) -> dict[str, str]:
        return {item.name: item.metadata["doc"] for item in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {item.name: item.default for item in dataclasses.fields(cls)}

    @staticmethod
    def check_combination(values: Mapping[str, Any]) -> None:
        """Checks across settings (each value already valid on its own); `values` may hold a subset."""
        coef = values.get("distill_coef", 0.5)
        if values.get("distill_target_kl") is not None and (callable(coef) or isinstance(coef, str)):
            raise UsageError("an adaptive coefficient (distill_target_kl) starts from a constant distill_coef, not a schedule")
        if values.get("distill_target_kl") is not None and values.get("distill_coef_mode", "fixed") != "fixed":
            raise UsageError("distill_target_kl adapts a fixed coefficient; drop it or use distill_coef_mode: fixed")
        mode, unit = values.get("teacher_mode", "snapshot"), values.get("teacher_update_unit", "env_steps")
        if mode in ("reset", "target") and unit != "env_steps":
            raise UsageError(f"teacher_mode {mode!r} counts env steps; drop teacher_update_unit or set it to env_steps")
        if mode == "lagged":
            if unit == "env_steps":
                raise UsageError("teacher_mode 'lagged' lags by gradient steps or phases; set teacher_update_unit to one")
            lag = values.get("teacher_update_interval", 20_000)
            if lag > MAX_LAG:
                raise UsageError(f"a lagged teacher keeps lag + 1 network copies; teacher_update_interval {lag} > {MAX_LAG}")
        quantile_loss = values.get("distill_quantile_loss", "boltzmann")
        if quantile_loss != "boltzmann" and (
            values.get("kl_direction", "forward") != "forward" or values.get("distill_temperature", 1.0) != 1.0
        ):
            raise UsageError(
                f"the {quantile_loss} distillation loss has no direction or temperature; "
                "drop kl_direction and distill_temperature, or use distill_quantile_loss: boltzmann"
            )
        if quantile_loss != "boltzmann" and values.get("distill_target_kl") is not None:
            # Not 0 at a fresh copy (it is the spread of the teacher's distribution): a target KL would be meaningless.
            raise UsageError(f"distill_target_kl needs a KL that is 0 at a fresh copy; the {quantile_loss} loss is not")
        if callable(coef):
            schedule: Callable[[float], float] = parse_schedule(coef, "distill_coef")
            if schedule(1.0) < 0 or schedule(0.0) < 0:
                raise UsageError(f"distill_coef must be >= 0, got {coef!r}; use 0 to turn distillation off")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> DistillConfig:
        """Pop this config's keys out of an algorithm's keyword arguments (the rest go to SB3)."""
        return cls(**{name: kwargs.pop(name) for name in cls.names() if name in kwargs})

    @property
    def is_off(self) -> bool:
        """The constant weight 0 without adaptation: no teacher is built, training is the SB3 parent's."""
        coef = self.distill_coef
        constant_zero = isinstance(coef, int | float) and not isinstance(coef, bool) and coef == 0
        return constant_zero and self.distill_target_kl is None

    def features(self) -> set[str]:
        """What these settings ask of an algorithm beyond a teacher fixed for each update phase and a KL on the batch
        it trains on; an algorithm that cannot provide one refuses it with ``check_supported``."""
        used = set()
        if self.teacher_update_unit == "gradient_steps":
            used.add("teacher_per_gradient_step")
        if self.distill_separate_batch:
            used.add("separate_batch")
        if self.distill_value_coef > 0:
            used.add("value_distillation")
        if self.distill_coef_mode == "relative":
            used.add("relative_weight")
        return used

    def check_supported(self, owner: str, unsupported: Mapping[str, str]) -> None:
        """A one-line UsageError for the first feature in use that `owner` cannot apply (`unsupported`: feature ->
        why not, and the fix)."""
        used = self.features()
        for feature, reason in unsupported.items():
            if feature in used:
                raise UsageError(f"{owner}: {reason}")

    def check_choices(self, supported: Mapping[str, tuple[str, ...]], owner: str) -> None:
        """Settings whose value only some algorithms can use (e.g. distill_quantile_loss): `supported` gives
        the values `owner` accepts for each."""
        for name, choices in supported.items():
            value = getattr(self, name)
            if value not in choices:
                raise UsageError(f"{name} {value!r} is not available for {owner}; use one of {', '.join(choices)}")

    def check_teacher_mode(self, supported: tuple[str, ...], owner: str) -> None:
        if self.teacher_mode not in supported:
            choices = ", ".join(supported)
            raise UsageError(f"teacher_mode {self.teacher_mode!r} is not available for {owner}; use one of {choices}")
