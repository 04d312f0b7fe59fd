"""The weight of the distillation term: constant, scheduled, or adapted towards a target KL."""

from __future__ import annotations

from collections.abc import Sequence

from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.schedules import parse_schedule


class DistillCoefficient:
    """Weight of the KL term (settings validated by ``DistillConfig``).

    Without ``distill_target_kl`` the weight follows ``distill_coef`` (a number, ``lin_<v>`` or a
    callable of progress_remaining). With it, the weight starts at ``distill_coef`` (a constant)
    and is adapted from the mean KL of the gradient steps since its last change, with the rule of the
    adaptive-KL-penalty PPO variant (Schulman et al. 2017): double it when the KL exceeds 1.5 x target,
    halve it below target / 1.5, clamp to the bounds. The caller says how many gradient steps one
    adaptation needs: one PPO rollout's epochs, or a window of single-step DQN / SAC ``train()`` calls.
    Adapting on one minibatch's KL would chase noise; over many it tracks the trend.
    """

    # Class-level defaults: coefficients pickled before these were kept load with them.
    pending_kl_sum = 0.0
    pending_steps = 0

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

    def update(self, kls: Sequence[float], adapt_after: int = 1) -> None:
        """Add gradient steps' KLs; adapt towards the target KL once ``adapt_after`` steps are in (no-op when fixed)."""
        if self.adaptive_value is None or self.target_kl is None:
            return
        self.pending_kl_sum += float(sum(kls))
        self.pending_steps += len(kls)
        if self.pending_steps == 0 or self.pending_steps < adapt_after:
            return
        mean_kl = self.pending_kl_sum / self.pending_steps
        self.pending_kl_sum, self.pending_steps = 0.0, 0
        if mean_kl > 1.5 * self.target_kl:
            self.adaptive_value *= 2.0
        elif mean_kl < self.target_kl / 1.5:
            self.adaptive_value /= 2.0
        self.adaptive_value = min(max(self.adaptive_value, self.bounds[0]), self.bounds[1])
