"""What both self-distilling algorithms share: settings, teacher cadence, coefficient, logging."""

from __future__ import annotations

from collections.abc import Sequence

import torch as th
from stable_baselines3.common.logger import Logger
from torch import nn

from rl_selfdistill.distill.coefficient import DistillCoefficient
from rl_selfdistill.distill.kl import KL_DIRECTIONS, KLDirection
from rl_selfdistill.distill.teacher import Teacher
from rl_selfdistill.errors import UsageError
from rl_selfdistill.schedules import ScheduleLike


class Distiller:
    """Settings and state of self-distillation for one algorithm instance.

    Pickled with the model by SB3's ``save`` (counters, coefficient state); the teacher's
    networks are saved separately as a state dict (see ``Teacher``).
    """

    def __init__(
        self,
        distill_coef: ScheduleLike = 0.5,
        teacher_update_interval: int = 20_000,
        teacher_mode: str = "snapshot",
        teacher_tau: float = 0.05,
        teacher_ensemble_size: int = 3,
        kl_direction: str = "forward",
        distill_temperature: float = 1.0,
        distill_target_kl: float | None = None,
        distill_coef_bounds: tuple[float, float] = (1e-4, 10.0),
        allowed_teacher_modes: Sequence[str] = ("snapshot", "ema", "ensemble"),
    ) -> None:
        if kl_direction not in KL_DIRECTIONS:
            raise UsageError(f"unknown kl_direction {kl_direction!r}; use one of {', '.join(KL_DIRECTIONS)}")
        if (
            isinstance(distill_temperature, bool)
            or not isinstance(distill_temperature, int | float)
            or distill_temperature <= 0
        ):
            raise UsageError(f"distill_temperature must be a number > 0, got {distill_temperature!r}")
        if teacher_mode not in allowed_teacher_modes:
            raise UsageError(
                f"teacher_mode {teacher_mode!r} is not available here; use one of {', '.join(allowed_teacher_modes)}"
            )
        self.coefficient = DistillCoefficient(distill_coef, distill_target_kl, distill_coef_bounds)
        self.teacher = Teacher(teacher_mode, teacher_update_interval, teacher_tau, teacher_ensemble_size)
        self.direction: KLDirection = kl_direction  # type: ignore[assignment]  # checked above
        self.temperature = float(distill_temperature)

    @property
    def enabled(self) -> bool:
        """False for distill_coef=0: no teacher is ever built, training is exactly the SB3 parent's."""
        return not self.coefficient.is_off

    def refresh_if_due(self, student: nn.Module, num_timesteps: int) -> bool:
        if not self.enabled or not self.teacher.is_due(num_timesteps):
            return False
        self.teacher.refresh(student, num_timesteps)
        return True

    def end_phase(self, logger: Logger, kls: Sequence[th.Tensor], coef: float, num_timesteps: int) -> None:
        """Log one update phase (a PPO rollout's epochs, a DQN ``train()`` call) and adapt the coefficient.

        ``kls`` are the batch-mean KLs of the phase's minibatches; like SB3's ``train/`` keys the
        logged value is their mean. One device sync for the whole phase.
        """
        logger.record("distill/teacher_updates", self.teacher.n_updates)
        if self.teacher.last_update_step is not None:
            logger.record("distill/teacher_age", num_timesteps - self.teacher.last_update_step)
        logger.record("distill/coef", coef)
        if not kls:
            return
        mean_kl = kls[0].item() if len(kls) == 1 else th.stack(list(kls)).mean().item()
        logger.record("distill/kl", mean_kl)
        logger.record("distill/loss", coef * mean_kl)
        self.coefficient.update(mean_kl)
