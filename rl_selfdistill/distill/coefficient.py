"""The weight of the distillation term: constant, scheduled, or adapted towards a target KL."""

from __future__ import annotations

from rl_selfdistill.errors import UsageError
from rl_selfdistill.schedules import ScheduleLike, parse_schedule


class DistillCoefficient:
    """Weight of the KL term.

    Without ``target_kl`` the weight follows ``value`` (a number, ``lin_<v>`` or a callable
    of progress_remaining). With ``target_kl`` it starts at ``value`` (a constant) and is
    adapted once per update phase (a PPO rollout, a DQN ``train()`` call) from the mean KL
    of that phase, with the rule of the adaptive-KL-penalty PPO variant (Schulman et al. 2017):
    double it when the KL exceeds 1.5 x target, halve it below target / 1.5, clamp to ``bounds``.
    Adapting per minibatch would chase noise; per phase it tracks the trend.
    """

    def __init__(
        self,
        value: ScheduleLike,
        target_kl: float | None = None,
        bounds: tuple[float, float] = (1e-4, 10.0),
    ) -> None:
        self.schedule = parse_schedule(value, "distill_coef")
        self.target_kl = target_kl
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self._validate(value)
        self._constant_zero = isinstance(value, int | float) and not isinstance(value, bool) and value == 0
        self.adaptive_value: float | None = self.schedule(1.0) if target_kl is not None else None
        if self.adaptive_value is not None:
            self.adaptive_value = min(max(self.adaptive_value, self.bounds[0]), self.bounds[1])

    def _validate(self, value: ScheduleLike) -> None:
        start = self.schedule(1.0)
        if start < 0 or self.schedule(0.0) < 0:
            raise UsageError(f"distill_coef must be >= 0, got {value!r}; use 0 to turn distillation off")
        low, high = self.bounds
        if not 0 < low <= high:
            raise UsageError(f"distill_coef_bounds must satisfy 0 < low <= high, got {self.bounds}")
        if self.target_kl is not None:
            if self.target_kl <= 0:
                raise UsageError(f"distill_target_kl must be > 0 or None, got {self.target_kl}")
            if not isinstance(value, int | float):
                raise UsageError(
                    "an adaptive coefficient (distill_target_kl) starts from a constant distill_coef, not a schedule"
                )

    @property
    def is_off(self) -> bool:
        """True when the coefficient is the constant 0: no teacher is built and training is plain SB3."""
        return self._constant_zero and self.target_kl is None

    def value(self, progress_remaining: float) -> float:
        if self.adaptive_value is not None:
            return self.adaptive_value
        return float(self.schedule(progress_remaining))

    def update(self, mean_kl: float) -> None:
        """Adapt towards the target KL from the mean KL of one update phase (no-op when not adaptive)."""
        if self.adaptive_value is None or self.target_kl is None:
            return
        if mean_kl > 1.5 * self.target_kl:
            self.adaptive_value *= 2.0
        elif mean_kl < self.target_kl / 1.5:
            self.adaptive_value /= 2.0
        self.adaptive_value = min(max(self.adaptive_value, self.bounds[0]), self.bounds[1])
