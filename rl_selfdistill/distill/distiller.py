"""What every self-distilling algorithm instance holds: its settings, teacher cadence, coefficient, logging."""

from __future__ import annotations

from collections.abc import Sequence

import torch as th
from stable_baselines3.common.logger import Logger
from torch import nn

from rl_selfdistill.distill.coefficient import DistillCoefficient
from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.distill.kl import KLDirection
from rl_selfdistill.distill.teacher import Teacher


class Distiller:
    """Settings and state of self-distillation for one algorithm instance.

    Pickled with the model by SB3's ``save`` (counters, coefficient state); the teacher's
    networks are saved separately as a state dict (see ``Teacher``).
    """

    def __init__(self, config: DistillConfig) -> None:
        self.config = config
        self.coefficient = DistillCoefficient(config)
        self.teacher = Teacher(config)
        self.direction: KLDirection = config.kl_direction  # type: ignore[assignment]  # validated by DistillConfig
        self.temperature = float(config.distill_temperature)

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
