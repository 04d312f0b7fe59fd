"""Distillation building blocks: KL divergences, teachers, coefficients."""

from rl_selfdistill.distill.coefficient import DistillCoefficient
from rl_selfdistill.distill.distiller import Distiller
from rl_selfdistill.distill.kl import bernoulli_kl, categorical_kl, gaussian_kl, multi_categorical_kl, q_softmax_kl
from rl_selfdistill.distill.teacher import Teacher, frozen_copy

__all__ = [
    "DistillCoefficient",
    "Distiller",
    "Teacher",
    "bernoulli_kl",
    "categorical_kl",
    "frozen_copy",
    "gaussian_kl",
    "multi_categorical_kl",
    "q_softmax_kl",
]
