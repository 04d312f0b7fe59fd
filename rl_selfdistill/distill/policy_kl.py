"""KL between the action distributions of two SB3 actor-critic policies.

A distribution is carried as one flat tensor of parameters per sample, so a whole
rollout's teacher distributions can be computed once and indexed by minibatch:
categorical logits, concatenated MultiDiscrete logits, Bernoulli logits, or
``[mean, log_std]`` for diagonal Gaussians.

A gSDE policy (``use_sde=True``) is a diagonal Gaussian too: for a state with gSDE features phi(s)
its action has mean mu(s) and, in dimension i, variance sum_j phi_j(s)^2 sigma_ji^2 (+ SB3's epsilon),
where sigma is the policy's exploration scale (``log_std`` matrix). The sampled noise matrix only
decides which action is drawn, not the distribution, so it takes no part in the KL. The distribution
is carried as ``[mean, log_std]`` with a log-std per state and dimension. Under ``squash_output`` the KL of the
tanh-squashed actions equals the KL of these pre-squash Gaussians (KL is invariant under a bijection).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch as th
import torch.nn.functional as F
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy

from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.distill.kl import (
    KLDirection,
    bernoulli_kl,
    categorical_kl,
    gaussian_kl,
    masked_multi_categorical_kl,
    multi_categorical_kl,
)
from rl_selfdistill.errors import UsageError

# Distributions carried as ``[mean, log_std]``: a fixed log-std parameter, or gSDE's per-state log-std.
GAUSSIAN_TYPES: tuple[type[Distribution], ...] = (DiagGaussianDistribution, StateDependentNoiseDistribution)


@dataclass(frozen=True)
class PolicyKL:
    """Flat distribution parameters and the matching KL for one SB3 distribution type."""

    distribution_type: type[Distribution]
    action_dims: tuple[int, ...] = ()
    temperature: float = 1.0
    direction: KLDirection = "forward"
    gaussian_target: str = "full"  # full KL | mean_mse | mean_kl (student std detached)

    @classmethod
    def for_policy(cls, policy: ActorCriticPolicy, config: DistillConfig) -> PolicyKL:
        distribution = policy.action_dist
        if _is_maskable(distribution):
            return MaskedPolicyKL.for_maskable(distribution, config)
        supported = (
            CategoricalDistribution,
            MultiCategoricalDistribution,
            BernoulliDistribution,
            DiagGaussianDistribution,
            StateDependentNoiseDistribution,
        )
        if not isinstance(distribution, supported):
            raise UsageError(
                f"self-distillation does not support the action distribution {type(distribution).__name__}; "
                "use a policy with a categorical, Bernoulli or Gaussian (incl. gSDE) distribution, or distill_coef=0"
            )
        # Only MultiDiscrete needs the split sizes of its concatenated logits.
        action_dims = (
            tuple(int(n) for n in distribution.action_dims) if isinstance(distribution, MultiCategoricalDistribution) else ()
        )
        direction: KLDirection = config.kl_direction  # type: ignore[assignment]  # validated by DistillConfig
        return cls(type(distribution), action_dims, config.distill_temperature, direction, config.distill_gaussian)

    def params(self, policy: ActorCriticPolicy, distribution: Distribution) -> th.Tensor:
        """Flat parameters of ``distribution``, as produced by ``policy`` (keeps the autograd graph)."""
        if self.distribution_type is DiagGaussianDistribution:
            mean = distribution.distribution.loc
            # The policy's log_std parameter itself, not log(std): stays exact for tiny stds.
            return th.cat([mean, policy.log_std.expand_as(mean)], dim=-1)
        if self.distribution_type is StateDependentNoiseDistribution:
            # The features the distribution was built from (already detached unless gSDE learns its features).
            return th.cat([distribution.distribution.loc, sde_log_std(policy, distribution._latent_sde)], dim=-1)
        if self.distribution_type is MultiCategoricalDistribution:
            return th.cat([part.logits for part in distribution.distribution], dim=-1)
        return distribution.distribution.logits

    def params_from_latent(self, policy: ActorCriticPolicy, latent_pi: th.Tensor) -> th.Tensor:
        """The same flat parameters as ``params``, straight from the policy's action head (no distribution
        object: a teacher run on every minibatch skips torch's argument checks)."""
        output = policy.action_net(latent_pi)
        if self.distribution_type is DiagGaussianDistribution:
            return th.cat([output, policy.log_std.expand_as(output)], dim=-1)
        if self.distribution_type is StateDependentNoiseDistribution:
            # SB3's ActorCriticPolicy feeds the policy latent to gSDE as its features.
            return th.cat([output, sde_log_std(policy, latent_pi)], dim=-1)
        if self.distribution_type is MultiCategoricalDistribution:
            return th.cat([_normalised(part) for part in th.split(output, list(self.action_dims), dim=-1)], dim=-1)
        if self.distribution_type is CategoricalDistribution:
            return _normalised(output)
        return output  # Bernoulli logits

    def per_sample(self, teacher_params: th.Tensor, student_params: th.Tensor) -> th.Tensor:
        """KL per sample ``[batch]`` between flat teacher and student parameters."""
        if self.distribution_type in GAUSSIAN_TYPES:
            teacher_mean, teacher_log_std = teacher_params.chunk(2, dim=-1)
            student_mean, student_log_std = student_params.chunk(2, dim=-1)
            if self.gaussian_target == "mean_mse":
                # Means only: the std gets no gradient from the distillation term (CHAIN's PPO regulariser).
                return (teacher_mean - student_mean).pow(2).sum(dim=-1)
            if self.gaussian_target == "mean_kl":
                # The KL's mean term, scaled by the student's variance, with the std held out of the gradient.
                student_log_std = student_log_std.detach()
            return gaussian_kl(teacher_mean, teacher_log_std, student_mean, student_log_std, self.temperature, self.direction)
        if self.distribution_type is MultiCategoricalDistribution:
            return multi_categorical_kl(teacher_params, student_params, self.action_dims, self.temperature, self.direction)
        if self.distribution_type is BernoulliDistribution:
            return bernoulli_kl(teacher_params, student_params, self.temperature, self.direction)
        return categorical_kl(teacher_params, student_params, self.temperature, self.direction)

    def batch_mean(self, teacher_params: th.Tensor, student_params: th.Tensor) -> th.Tensor:
        """Batch-mean KL to one teacher member; the common categorical case in one fused op."""
        if self._fused_categorical:
            # torch's Categorical stores normalised log-probabilities as `logits` (teacher's and student's alike),
            # so at T = 1 the forward KL is one kl_div over them: no log-softmax per minibatch.
            return F.kl_div(student_params, teacher_params, reduction="batchmean", log_target=True)
        return self.per_sample(teacher_params, student_params).mean()

    def mean_over_teachers(self, teacher_params: th.Tensor, student_params: th.Tensor) -> th.Tensor:
        """Batch-mean KL, averaged over the teacher members (``teacher_params`` is ``[members, batch, p]``)."""
        if len(teacher_params) == 1:  # the common case: no stack on the per-minibatch path
            return self.batch_mean(teacher_params[0], student_params)
        return th.stack([self.batch_mean(member, student_params) for member in teacher_params]).mean()

    @property
    def _fused_categorical(self) -> bool:
        return self.distribution_type is CategoricalDistribution and self.temperature == 1.0 and self.direction == "forward"


def sde_log_std(policy: BasePolicy, latent_sde: th.Tensor) -> th.Tensor:
    """Per-state log-std ``[batch, d]`` of a gSDE policy: 0.5 log(sum_j phi_j^2 sigma_ji^2 + epsilon), as SB3 builds it.

    `policy` is an ``ActorCriticPolicy`` or SAC's actor (both keep ``action_dist`` and the ``log_std`` matrix), and
    `latent_sde` its gSDE features (both use their policy latent). Reads the policy's own distribution settings
    (full_std, use_expln, learn_features, epsilon) and exploration scale, so a teacher copy uses its own ``log_std``.
    One function for the student and the teacher: equal weights give bit-equal parameters (a fresh snapshot's KL is
    exactly 0).
    """
    distribution = policy.action_dist
    assert isinstance(distribution, StateDependentNoiseDistribution)
    # Without learn_features SB3 stops the gradient into the features: the std then trains only through log_std.
    features = latent_sde if distribution.learn_features else latent_sde.detach()
    variance = th.mm(features**2, distribution.get_std(policy.log_std) ** 2)  # type: ignore[operator]
    return 0.5 * th.log(variance + distribution.epsilon)


def _is_maskable(distribution: Distribution) -> bool:
    """Whether `distribution` is one of sb3-contrib's maskable distributions (MaskablePPO), without importing
    sb3-contrib here: such a distribution exists only once its module has been imported."""
    module = sys.modules.get("sb3_contrib.common.maskable.distributions")
    return module is not None and isinstance(distribution, module.MaskableDistribution)


@dataclass(frozen=True)
class MaskedPolicyKL(PolicyKL):
    """Maskable categorical policies (sb3-contrib's MaskablePPO; MultiDiscrete and MultiBinary as categoricals):
    the KL over the legal actions of each state.

    Parameters are the normalised logits before masking, concatenated over the categoricals. A teacher's rows
    carry the state's action mask after its logits (``[logits, mask]``: the mask the student acted and trains
    under, from the rollout buffer), and both distributions are restricted to that one mask.
    """

    @classmethod
    def for_maskable(cls, distribution: Distribution, config: DistillConfig) -> MaskedPolicyKL:
        # MaskableCategoricalDistribution has one action_dim; the multi-categorical and Bernoulli ones a list.
        dims = getattr(distribution, "action_dims", None) or [distribution.action_dim]  # type: ignore[attr-defined]
        direction: KLDirection = config.kl_direction  # type: ignore[assignment]  # validated by DistillConfig
        return cls(type(distribution), tuple(int(n) for n in dims), config.distill_temperature, direction)

    def params(self, policy: ActorCriticPolicy, distribution: Distribution) -> th.Tensor:
        # Unmasked, as params_from_latent computes a teacher's (torch's normalisation of the same logits).
        parts = getattr(distribution, "distributions", None) or [distribution.distribution]
        logits = [part._original_logits for part in parts]
        return logits[0] if len(logits) == 1 else th.cat(logits, dim=-1)

    def params_from_latent(self, policy: ActorCriticPolicy, latent_pi: th.Tensor) -> th.Tensor:
        output = policy.action_net(latent_pi)
        return th.cat([_normalised(part) for part in th.split(output, list(self.action_dims), dim=-1)], dim=-1)

    def per_sample(self, teacher_params: th.Tensor, student_params: th.Tensor) -> th.Tensor:
        width = student_params.shape[-1]
        teacher_logits, mask = teacher_params[..., :width], teacher_params[..., width:]
        return masked_multi_categorical_kl(
            teacher_logits, student_params, mask, self.action_dims, self.temperature, self.direction
        )


def _normalised(logits: th.Tensor) -> th.Tensor:
    """torch's Categorical normalisation of logits, with the same floating-point ops (a fresh snapshot's KL is exactly 0)."""
    return logits - logits.logsumexp(dim=-1, keepdim=True)
