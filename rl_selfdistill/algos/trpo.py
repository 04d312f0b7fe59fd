"""SelfDistillTRPO: sb3-contrib's TRPO with the distillation term inside the surrogate it maximises.

TRPO maximises a surrogate L(theta) = mean(A * ratio) under a trust region KL(pi_theta || pi_old) <= target_kl:
one natural-gradient direction (conjugate gradients on the Fisher matrix of that KL), then a backtracking line
search that accepts the first step that keeps the KL inside the region and improves the surrogate. Here the
surrogate becomes

    L_SD(theta) = mean(A * ratio) - coef * KL(teacher || pi_theta)

and it is used in both places: its gradient gives the search direction, and the line search compares
L_SD after the step with L_SD before it. The trust region itself is unchanged (the KL to the policy that
collected the rollout), so distillation never lets a step leave it. The critic is fitted separately, as in TRPO.

The teacher's distribution for every rollout sample is computed once per rollout (``OnPolicyDistillMixin``),
or on the rollout in ``train()`` when it moves every policy update (``teacher_update_unit="gradient_steps"``
counts TRPO's policy updates: one per rollout, after the line search).

Refused, with the reason: a relative weight (the surrogate is about 0 where it is measured, at ratio 1 with
normalised advantages), value distillation (the trust region and the surrogate concern the policy only) and a
separate batch (TRPO's update uses the whole rollout).
"""

from __future__ import annotations

import copy
from functools import partial
from typing import ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import TRPO
from sb3_contrib.common.utils import conjugate_gradient_solver
from stable_baselines3.common.distributions import Distribution, kl_divergence
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from rl_selfdistill.algos.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rl_selfdistill.algos.on_policy import OnPolicyDistillMixin
from rl_selfdistill.distill.mixin import PhaseRecord


class SelfDistillTRPO(OnPolicyDistillMixin, TRPO):
    """TRPO with policy self-distillation in its surrogate; a drop-in replacement for ``sb3_contrib.TRPO``.

    Takes every ``TRPO`` argument plus the distillation keywords of
    ``rl_selfdistill.distill.config.DistillConfig``. ``distill_coef=0`` trains exactly like TRPO
    (``train()`` is then TRPO's own).
    """

    unsupported_distill_features: ClassVar[dict[str, str]] = {
        "relative_weight": "TRPO's surrogate is about 0 where it is measured (ratio 1, normalised advantages), so a "
        "weight relative to it means nothing; use distill_coef_mode=fixed",
        "value_distillation": "TRPO's trust region and surrogate concern the policy only and the critic is fitted "
        "apart; set distill_value_coef=0",
        "separate_batch": "TRPO updates on the whole rollout, there is no minibatch to draw apart from; set "
        "distill_separate_batch=False",
    }

    def _setup_model(self) -> None:
        self.distiller.config.check_supported(type(self).__name__, self.unsupported_distill_features)
        super()._setup_model()

    def _distill_penalty(self, phase: PhaseRecord, indices: np.ndarray, distribution: Distribution) -> th.Tensor:
        """coef x KL(teacher || `distribution`) on the rollout rows `indices` (not recorded: the line search's)."""
        teacher_params, _ = self._teacher_rows(phase, indices)
        kl = self.policy_kl.mean_over_teachers(teacher_params, self.policy_kl.params(self.policy, distribution))
        return phase.coef * kl

    def _train_with_distillation(self) -> None:
        """TRPO's ``train()`` (sb3-contrib 2.8-2.9, line for line; see algos/ported.py) with the distillation term in
        the surrogate, in its gradient and in the line search alike."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        buffer = self.rollout_buffer
        assert isinstance(buffer, IndexedRolloutBuffer | IndexedDictRolloutBuffer)
        phase = self._start_rollout_phase()
        distilling = phase.distilling and self.distiller.teacher.is_ready

        policy_objective_values = []
        kl_divergences = []
        line_search_results = []
        value_losses = []

        # This will only loop once (get all data in one go)
        for rollout_data in buffer.get(batch_size=None):
            indices = buffer.last_batch_indices
            if self.sub_sampling_factor > 1:
                indices = indices[:: self.sub_sampling_factor]
                rollout_data = RolloutBufferSamples(
                    rollout_data.observations[:: self.sub_sampling_factor],
                    rollout_data.actions[:: self.sub_sampling_factor],
                    None,  # type: ignore[arg-type]  # old values, not used here
                    rollout_data.old_log_prob[:: self.sub_sampling_factor],
                    rollout_data.advantages[:: self.sub_sampling_factor],
                    None,  # type: ignore[arg-type]  # returns, not used here
                )

            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                actions = rollout_data.actions.long().flatten()

            with th.no_grad():
                # A shallow copy keeps the old distribution's parameters (SB3 rebuilds them on each call).
                old_distribution = copy.copy(self.policy.get_distribution(rollout_data.observations))

            distribution = self.policy.get_distribution(rollout_data.observations)
            log_prob = distribution.log_prob(actions)

            advantages = rollout_data.advantages
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean()) / (rollout_data.advantages.std() + 1e-8)

            ratio = th.exp(log_prob - rollout_data.old_log_prob)

            policy_objective = (advantages * ratio).mean()
            if distilling:  # the surrogate to maximise: minus (the loss to minimise, with its distillation term)
                policy_objective = -self._with_distill_term(phase, -policy_objective, policy_objective, indices, None)  # type: ignore[arg-type]

            kl_div = kl_divergence(distribution, old_distribution).mean()

            self.policy.optimizer.zero_grad()

            actor_params, policy_objective_gradients, grad_kl, grad_shape = self._compute_actor_grad(kl_div, policy_objective)

            hessian_vector_product_fn = partial(self.hessian_vector_product, actor_params, grad_kl)

            search_direction = conjugate_gradient_solver(
                hessian_vector_product_fn,
                policy_objective_gradients,
                max_iter=self.cg_max_steps,
            )

            line_search_max_step_size = 2 * self.target_kl
            line_search_max_step_size /= float(
                th.matmul(search_direction, hessian_vector_product_fn(search_direction, retain_graph=False))
            )
            line_search_max_step_size = np.sqrt(line_search_max_step_size)

            line_search_backtrack_coeff = 1.0
            original_actor_params = [param.detach().clone() for param in actor_params]

            is_line_search_success = False
            with th.no_grad():
                for _ in range(self.line_search_max_iter):
                    start_idx = 0
                    for param, original_param, shape in zip(actor_params, original_actor_params, grad_shape, strict=True):
                        n_params = param.numel()
                        param.data = (
                            original_param.data
                            + line_search_backtrack_coeff
                            * line_search_max_step_size
                            * search_direction[start_idx : (start_idx + n_params)].view(shape)
                        )
                        start_idx += n_params

                    distribution = self.policy.get_distribution(rollout_data.observations)
                    log_prob = distribution.log_prob(actions)

                    ratio = th.exp(log_prob - rollout_data.old_log_prob)
                    new_policy_objective = (advantages * ratio).mean()
                    if distilling:  # the same surrogate as the gradient's
                        new_policy_objective = new_policy_objective - self._distill_penalty(phase, indices, distribution)

                    kl_div = kl_divergence(distribution, old_distribution).mean()

                    if (kl_div < self.target_kl) and (new_policy_objective > policy_objective):
                        is_line_search_success = True
                        break

                    line_search_backtrack_coeff *= self.line_search_shrinking_factor

                line_search_results.append(is_line_search_success)

                if not is_line_search_success:
                    for param, original_param in zip(actor_params, original_actor_params, strict=True):
                        param.data = original_param.data.clone()

                    policy_objective_values.append(policy_objective.item())
                    kl_divergences.append(0.0)
                else:
                    policy_objective_values.append(new_policy_objective.item())
                    kl_divergences.append(kl_div.item())
            self._teacher_tick_gradient_step()

        for _ in range(self.n_critic_updates):
            for rollout_data in buffer.get(self.batch_size):
                values_pred = self.policy.predict_values(rollout_data.observations)
                value_loss = F.mse_loss(rollout_data.returns, values_pred.flatten())
                value_losses.append(value_loss.item())

                self.policy.optimizer.zero_grad()
                value_loss.backward()
                # Removing gradients of parameters shared with the actor
                # otherwise it defeats the purposes of the KL constraint
                for param in actor_params:
                    param.grad = None
                self.policy.optimizer.step()

        self._n_updates += 1
        explained_var = explained_variance(buffer.values.flatten(), buffer.returns.flatten())

        self.logger.record("train/policy_objective", np.mean(policy_objective_values))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/kl_divergence_loss", np.mean(kl_divergences))
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/is_line_search_success", np.mean(line_search_results))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self._end_distill_phase(phase)
