"""KL divergences between a teacher's and a student's action distributions.

Every function returns one KL value per sample (shape ``[batch]``); the caller takes the
mean over the batch, so the loss scale does not depend on the batch size (the categorical
KLs can return that mean themselves, ``reduction="mean"``). Everything is
computed from log-probabilities (log-softmax, log-sigmoid, log-std), never from
probabilities, so large logits and tiny standard deviations stay finite.

Temperature ``T`` tempers a distribution as ``p^(1/T)`` (renormalised): logits are divided
by ``T`` for categorical and Bernoulli distributions, and a Gaussian's variance is
multiplied by ``T`` (its log-std grows by ``log(T) / 2``). ``T = 1`` leaves them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeVar

import torch as th
import torch.nn.functional as F

from rl_selfdistill.distill.config import KL_DIRECTIONS

KLDirection = Literal["forward", "reverse"]
T = TypeVar("T")  # a tensor, or a tuple of tensors describing one distribution
KLReduction = Literal["none", "mean"]


def _order(teacher: T, student: T, direction: KLDirection) -> tuple[T, T]:
    """Return (p, q) of KL(p || q): forward is KL(teacher || student), reverse KL(student || teacher)."""
    if direction == "forward":
        return teacher, student
    if direction == "reverse":
        return student, teacher
    raise ValueError(f"unknown KL direction {direction!r}; use one of {KL_DIRECTIONS}")


def _ordered_logits(
    teacher_logits: th.Tensor, student_logits: th.Tensor, temperature: float, direction: KLDirection
) -> tuple[th.Tensor, th.Tensor]:
    """Logits (p, q) of KL(p || q), tempered; the division is skipped at T = 1 (this runs every gradient step)."""
    p_logits, q_logits = _order(teacher_logits, student_logits, direction)
    if temperature != 1.0:
        p_logits, q_logits = p_logits / temperature, q_logits / temperature
    return p_logits, q_logits


def categorical_kl(
    teacher_logits: th.Tensor,
    student_logits: th.Tensor,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
    reduction: KLReduction = "none",
) -> th.Tensor:
    """KL between categorical distributions given unnormalised logits ``[batch, n]`` -> ``[batch]``.

    ``reduction="mean"`` returns the batch mean as a scalar, the same value as ``.mean()`` of the
    per-sample KLs with fewer ops (this runs on every gradient step of SelfDistillDQN).
    """
    p_logits, q_logits = _ordered_logits(teacher_logits, student_logits, temperature, direction)
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    # kl_div with log_target computes exp(log_p) * (log_p - log_q) in one fused op; exp(log_p) underflows
    # to exactly 0 where p is negligible, which is the right limit of p * log(p / q).
    if reduction == "none":
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)
    if reduction == "mean":
        if log_q.dim() != 2:  # batchmean divides by the first dimension only
            log_p, log_q = log_p.reshape(-1, log_p.shape[-1]), log_q.reshape(-1, log_q.shape[-1])
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    raise ValueError(f"unknown reduction {reduction!r}; use 'none' or 'mean'")


def multi_categorical_kl(
    teacher_logits: th.Tensor,
    student_logits: th.Tensor,
    action_dims: Sequence[int],
    temperature: float = 1.0,
    direction: KLDirection = "forward",
) -> th.Tensor:
    """KL for independent categoricals (MultiDiscrete): logits concatenated along the last dim, KLs summed."""
    teacher_parts = th.split(teacher_logits, list(action_dims), dim=-1)
    student_parts = th.split(student_logits, list(action_dims), dim=-1)
    kls = [categorical_kl(t, s, temperature, direction) for t, s in zip(teacher_parts, student_parts)]
    return th.stack(kls, dim=-1).sum(dim=-1)


def bernoulli_kl(
    teacher_logits: th.Tensor,
    student_logits: th.Tensor,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
) -> th.Tensor:
    """KL for independent Bernoullis (MultiBinary) given logits ``[batch, n]``, summed over the n variables."""
    p_logits, q_logits = _ordered_logits(teacher_logits, student_logits, temperature, direction)
    log_p1, log_p0 = F.logsigmoid(p_logits), F.logsigmoid(-p_logits)
    log_q1, log_q0 = F.logsigmoid(q_logits), F.logsigmoid(-q_logits)
    kl = log_p1.exp() * (log_p1 - log_q1) + log_p0.exp() * (log_p0 - log_q0)
    return kl.sum(dim=-1)


def gaussian_kl(
    teacher_mean: th.Tensor,
    teacher_log_std: th.Tensor,
    student_mean: th.Tensor,
    student_log_std: th.Tensor,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
) -> th.Tensor:
    """KL between diagonal Gaussians ``[batch, d]``, summed over the d action dimensions -> ``[batch]``.

    Closed form per dimension: log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2,
    written with log-stds so that std -> 0 does not divide by zero.
    """
    (mean_p, log_std_p), (mean_q, log_std_q) = _order(
        (teacher_mean, teacher_log_std), (student_mean, student_log_std), direction
    )
    # Tempering scales both variances by T, which cancels in the variance ratio but not in the mean term.
    log_temperature = math.log(temperature)
    log_var_ratio = 2.0 * (log_std_p - log_std_q)
    mean_term = (mean_p - mean_q).pow(2) * th.exp(-2.0 * log_std_q - log_temperature)
    kl = 0.5 * (log_var_ratio.exp() + mean_term - 1.0 - log_var_ratio)
    return kl.sum(dim=-1)


def q_softmax_kl(
    teacher_q: th.Tensor,
    student_q: th.Tensor,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
    reduction: KLReduction = "none",
) -> th.Tensor:
    """KL between Boltzmann policies softmax(Q / temperature) of a teacher and a student Q-network."""
    return categorical_kl(teacher_q, student_q, temperature, direction, reduction)


def deterministic_kl(teacher_actions: th.Tensor, student_actions: th.Tensor, temperature: float = 1.0) -> th.Tensor:
    """Squared error ``||a_teacher - a_student||^2 / T`` per sample ``[batch, d] -> [batch]``: deterministic policies.

    This is exactly the KL between Gaussians of equal variance ``sigma^2 = T / 2`` centred on the two actions:
    ``KL(N(a_t, s^2 I) || N(a_s, s^2 I)) = ||a_t - a_s||^2 / (2 s^2)``, the same in both directions. A deterministic
    policy is the limit s -> 0, where every KL diverges; for any other common s the KL is this value times
    ``T / (2 s^2)`` (docs/algorithms.md). Tempering scales the variance by ``T``, as for ``gaussian_kl``.
    """
    squared_error = (teacher_actions - student_actions).pow(2).sum(dim=-1)
    return squared_error if temperature == 1.0 else squared_error / temperature


# Stands in for the logits of illegal actions: finite, so no product in the KL or its gradient meets inf - inf or
# 0 * inf (an -inf fill would turn the backward pass into NaN), and far below any logit a network produces.
_ILLEGAL_LOGIT = -1e30


def masked_categorical_kl(
    teacher_logits: th.Tensor,
    student_logits: th.Tensor,
    mask: th.Tensor,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
) -> th.Tensor:
    """KL between categoricals restricted to the legal actions of each state ``[batch, n]`` -> ``[batch]``.

    `mask` (bool or 0/1, True = legal) is one mask for both distributions: each is renormalised over the
    legal actions, and illegal actions contribute exactly 0 (the limit 0 log 0), whatever their logits
    (-inf or a large negative number from a masked policy included). A state without a legal action has KL 0.
    """
    p_logits, q_logits = _ordered_logits(teacher_logits, student_logits, temperature, direction)
    legal = mask.bool()
    log_p = F.log_softmax(p_logits.masked_fill(~legal, _ILLEGAL_LOGIT), dim=-1)
    log_q = F.log_softmax(q_logits.masked_fill(~legal, _ILLEGAL_LOGIT), dim=-1)
    terms = log_p.exp() * (log_p - log_q)
    return th.where(legal, terms, th.zeros_like(terms)).sum(dim=-1)


def masked_multi_categorical_kl(
    teacher_logits: th.Tensor,
    student_logits: th.Tensor,
    mask: th.Tensor,
    action_dims: Sequence[int],
    temperature: float = 1.0,
    direction: KLDirection = "forward",
) -> th.Tensor:
    """Masked KL for independent categoricals (MultiDiscrete; MultiBinary as categoricals of 2): logits and mask
    concatenated along the last dim, one masked KL per categorical, summed."""
    splits = list(action_dims)
    parts = zip(
        th.split(teacher_logits, splits, dim=-1), th.split(student_logits, splits, dim=-1), th.split(mask, splits, dim=-1)
    )
    kls = [masked_categorical_kl(t, s, m, temperature, direction) for t, s, m in parts]
    return kls[0] if len(kls) == 1 else th.stack(kls, dim=-1).sum(dim=-1)


def quantile_softmax_kl(
    teacher_quantiles: th.Tensor,
    student_quantiles: th.Tensor,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
    reduction: KLReduction = "none",
) -> th.Tensor:
    """KL between the Boltzmann policies of two quantile networks ``[batch, n_quantiles, n_actions]``: softmax over
    the mean of the quantiles (the Q-values a QR-DQN acts on) divided by the temperature."""
    return q_softmax_kl(teacher_quantiles.mean(dim=1), student_quantiles.mean(dim=1), temperature, direction, reduction)


def quantile_regression_loss(teacher_quantiles: th.Tensor, student_quantiles: th.Tensor) -> th.Tensor:
    """The quantile regression (pinball) loss of a student's quantiles towards a teacher's, batch-mean.

    Both are ``[batch, n_quantiles, n_actions]``; each action's quantiles are one distribution. Student quantile i
    (at tau_i = (i + 1/2) / N, QR-DQN's midpoints) regresses on every teacher quantile j with
    rho_tau(u) = u (tau - 1{u < 0}), u = teacher_j - student_i, summed over i, averaged over j and the actions.
    Its minimum is at the teacher's quantile function: the tau_i-quantile of N equally weighted teacher quantiles is
    the i-th smallest, since tau_i lies strictly between i/N and (i + 1)/N. QR-DQN's quantile Huber loss (threshold
    1) lacks that property: its minimum pulls the outer quantiles inwards.
    """
    n_quantiles = student_quantiles.shape[1]
    taus = (th.arange(n_quantiles, device=student_quantiles.device, dtype=student_quantiles.dtype) + 0.5) / n_quantiles
    # [batch, student i, teacher j, actions]
    errors = teacher_quantiles.unsqueeze(1) - student_quantiles.unsqueeze(2)
    weights = taus.view(1, -1, 1, 1) - (errors.detach() < 0).to(errors.dtype)
    return (weights * errors).mean(dim=2).sum(dim=1).mean()
