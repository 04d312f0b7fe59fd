"""What every self-distilling algorithm instance holds: settings, teacher cadence, weight, one phase's record."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.logger import Logger
from torch import nn

from rl_selfdistill.distill.coefficient import DistillCoefficient
from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.distill.kl import KLDirection
from rl_selfdistill.distill.teacher import Teacher


@dataclass
class PhaseRecord:
    """The distillation side of one update phase: its weight, and the losses of its gradient steps.

    Losses are kept as detached tensors and read once at the end of the phase (one device sync).
    """

    coef: float
    # False when the weight is 0 and nothing needs the loss's value (the relative weight's running means do):
    # the term is then not computed at all, e.g. after a reset's weight has annealed to 0.
    distilling: bool = True
    value_coef: float = 0.0
    observations: Any = None  # what the phase trains on (PPO: the flat rollout), for separate batches and diagnostics
    raw_observations: np.ndarray | None = None
    n_rows: int = 0
    kls: list[th.Tensor] = field(default_factory=list)
    value_losses: list[th.Tensor] = field(default_factory=list)
    distill_losses: list[th.Tensor] = field(default_factory=list)
    rl_losses: list[float] = field(default_factory=list)  # |L_RL| of each step (already read by the algorithm)

    def record_distill(self, kl: th.Tensor, value_loss: th.Tensor | None = None) -> th.Tensor:
        """The unweighted distillation loss of one gradient step: KL (+ value_coef x value MSE)."""
        detached_kl = kl.detach()
        self.kls.append(detached_kl)
        if value_loss is None:
            self.distill_losses.append(detached_kl)
            return kl
        loss = kl + self.value_coef * value_loss
        self.value_losses.append(value_loss.detach())
        self.distill_losses.append(loss.detach())
        return loss

    def record_rl_loss(self, magnitude: float) -> None:
        self.rl_losses.append(abs(magnitude))

    def separate_indices(self, size: int) -> np.ndarray:
        """Rows of an independent minibatch of the same size (with replacement, like a replay sample)."""
        return np.random.randint(0, self.n_rows, size=size)


def _means(values: Sequence[th.Tensor]) -> list[float]:
    return th.stack(list(values)).cpu().tolist() if values else []


class Distiller:
    """Settings and state of self-distillation for one algorithm instance.

    Pickled with the model by SB3's ``save`` (counters, coefficient state, running means); the
    teacher's networks are saved separately as a state dict (see ``Teacher``).
    """

    def __init__(self, config: DistillConfig) -> None:
        self.config = config
        self.coefficient = DistillCoefficient(config)
        self.teacher = Teacher(config)
        self.direction: KLDirection = config.kl_direction  # type: ignore[assignment]  # validated by DistillConfig
        self.temperature = float(config.distill_temperature)
        window = config.distill_relative_window
        self.rl_loss_window: deque[float] = deque(maxlen=window)
        self.distill_loss_window: deque[float] = deque(maxlen=window)
        self.gradient_steps_with_teacher = 0
        self.teacher_return: float | None = None  # mean episode return when the teacher was taken (gate)
        self.last_factors: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        """False for distill_coef=0: no teacher is ever built, training is exactly the SB3 parent's."""
        return not self.coefficient.is_off

    def refresh_if_due(self, student: nn.Module, num_timesteps: int, obs_stats: Any = None) -> bool:
        if not self.enabled or not self.teacher.is_due(num_timesteps):
            return False
        self.teacher.refresh(student, num_timesteps, obs_stats)
        return True

    # ------------------------------------------------------------------ the weight of one phase

    def relative_factor(self) -> float:
        """mean |L_RL| / mean L_distill over the window; 0 during the warm-up or before any distillation loss."""
        if self.gradient_steps_with_teacher < self.config.distill_warmup or not self.distill_loss_window:
            return 0.0
        mean_distill = float(np.mean(self.distill_loss_window))
        return float(np.mean(self.rl_loss_window)) / mean_distill if mean_distill > 0 else 0.0

    def gate_factor(self, student_return: float | None) -> float:
        """max(0, (R_teacher - R_student) / |R_teacher|), at most 1: distil only while the student is behind.

        With positive returns this is QDagger's max(0, 1 - R_student / R_teacher); dividing by |R_teacher|
        keeps the sign right for negative returns (Pendulum). Unknown returns leave the weight unchanged.
        """
        if student_return is None or self.teacher_return is None:
            return 1.0
        gap = self.teacher_return - student_return
        if self.teacher_return == 0:
            return 1.0 if gap > 0 else 0.0
        return float(min(max(gap / abs(self.teacher_return), 0.0), 1.0))

    def reset_anneal_factor(self, num_timesteps: int) -> float:
        """Reset mode: from 1 just after a reset down to 0 after reset_anneal_steps env steps."""
        if self.teacher.last_update_step is None:
            return 0.0
        elapsed = num_timesteps - self.teacher.last_update_step
        return max(0.0, 1.0 - elapsed / self.config.reset_anneal_steps)

    def phase_coef(
        self,
        progress_remaining: float,
        num_timesteps: int,
        lr_fraction: Callable[[], float],
        student_return: Callable[[], float | None],
    ) -> float:
        """The weight of the distillation term for one update phase (logged as distill/coef).

        `lr_fraction` and `student_return` are called only when their option is on: a DQN phase can be a single
        gradient step, so the common case must cost next to nothing.
        """
        config = self.config
        coef = self.coefficient.value(progress_remaining)
        factors: dict[str, float] = {}
        if config.distill_coef_mode == "relative":
            factors["relative"] = self.relative_factor()
        if config.distill_lr_scaled:
            factors["lr"] = lr_fraction()
        if config.distill_gate:
            factors["gate"] = self.gate_factor(student_return())
        if config.teacher_mode == "reset":
            factors["reset_anneal"] = self.reset_anneal_factor(num_timesteps)
        self.last_factors = factors
        for factor in factors.values():
            coef *= factor
        return float(coef)

    # ------------------------------------------------------------------ end of a phase

    def end_phase(self, logger: Logger, phase: PhaseRecord, num_timesteps: int, adapt_after: int = 1) -> None:
        """Log one update phase (a PPO rollout's epochs, a DQN ``train()`` call), update running means and adapt.

        Like SB3's ``train/`` keys, each logged loss is the mean over the phase's gradient steps. An adaptive weight
        (distill_target_kl) adapts once the phases since its last change hold ``adapt_after`` gradient steps' KLs.
        """
        logger.record("distill/teacher_updates", self.teacher.n_updates)
        taken_at = self.teacher.distilled_member_step()
        if taken_at is not None:
            logger.record("distill/teacher_age", num_timesteps - taken_at)
        logger.record("distill/coef", phase.coef)
        for name, value in self.last_factors.items():
            logger.record(f"distill/coef_{name}", value)
        if phase.value_losses:  # also a phase that updated only the critics (TD3's delayed actor)
            logger.record("distill/value_loss", float(np.mean(_means(phase.value_losses))))
        if not phase.kls:
            return
        kls, distill_losses, rl_losses = _means(phase.kls), _means(phase.distill_losses), phase.rl_losses
        self.gradient_steps_with_teacher += len(kls)
        self.distill_loss_window.extend(distill_losses)
        self.rl_loss_window.extend(rl_losses)
        mean_kl = float(np.mean(kls))
        logger.record("distill/kl", mean_kl)
        logger.record("distill/loss", phase.coef * float(np.mean(distill_losses)))
        if rl_losses:
            logger.record("distill/loss_ratio", phase.coef * float(np.mean(distill_losses)) / max(np.mean(rl_losses), 1e-12))
        if self.config.distill_coef_mode == "relative":
            logger.record("distill/rl_loss_running", float(np.mean(self.rl_loss_window)))
            logger.record("distill/distill_loss_running", float(np.mean(self.distill_loss_window)))
        self.coefficient.update(kls, adapt_after)
