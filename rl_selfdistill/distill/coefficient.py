"""The weight of the distillation term: constant, scheduled, or adapted towards a target KL."""

from __future__ import annotations

from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.schedules import parse_schedule


class DistillCoefficient:
    """Weight of the KL term (settings validated by ``DistillConfig``).

    Without ``distill_target_kl`` the weight follows ``distill_coef`` (a number, ``lin_<v>`` or a
    callable of progress_remaining). With it, the weight starts at ``distill_coef`` (a constant)
    and is adapted once per update phase (a PPO rollout, a DQN ``train()`` call) from the mean KL
    of that phase, with the rule of the adaptive-KL-penalty PPO variant (Schulman et al. 2017):
    double it when the KL exceeds 1.5 x target, halve it below target / 1.5, clamp to the bounds.
    Adapting per minibatch would chase noise; per phase it tracks the trend.
    """

    def __init__(self, config: DistillConfig) -> None:
        self.schedule = parse_schedule(config.distill_coef, "distill_coef")
        self.target_kl = config.distill_target_kl
        self.bounds = (float(config.distill_coef_bounds[0]), float(config.distill_coef_bounds[1]))
        self.is_off = config.is_off
        self.adaptive_value: float | None = None
        if self.target_kl is not None:
            self.adaptive_value = min(max(float(self.schedule(1.0)), self.bounds[0]), self.bounds[1])

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
