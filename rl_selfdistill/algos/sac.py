"""SelfDistillSAC: SB3's SAC plus a KL term towards a teacher actor (and critic) from its own past."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.utils import polyak_update
from torch import nn
from torch.nn import functional as F

from rl_selfdistill.algos.off_policy_continuous import OffPolicyActorCriticDistillMixin
from rl_selfdistill.distill.policy_kl import PolicyKL, sde_log_std


class SelfDistillSAC(OffPolicyActorCriticDistillMixin, SAC):
    """SAC with self-distillation; a drop-in replacement for ``stable_baselines3.SAC``.

    On each sampled replay batch the actor loss gains ``distill_coef * mean_batch KL(teacher || student)``
    between the tanh-squashed Gaussian policies. The tanh is a bijection applied to both, so this KL equals
    the KL of the pre-squash diagonal Gaussians (proof in docs/algorithms.md), computed in closed form from
    each actor's mean and (clamped) log-std; under gSDE (``use_sde=True``) from the mean and the per-state std
    that the actor's own exploration matrix and features give. ``distill_gaussian`` (mean_mse, mean_kl), the
    temperature and the KL direction apply to those Gaussians as for PPO. With ``distill_value_coef > 0`` the critic loss
    gains ``distill_coef * distill_value_coef * MSE`` to the teacher critic's Q-values, every critic head.

    Teacher modes: snapshot, ema, ensemble, lagged (``teacher_update_unit="gradient_steps"`` counts SAC's
    gradient steps). Reset-and-distill is not available (SAC's actor and critics have their own optimizers and
    target network). ``ent_coef="auto"`` is SAC's own: the entropy coefficient is tuned as without distillation.
    ``distill_coef=0`` trains exactly like SAC (``train()`` is then SAC's own).

    Cost: per gradient step, one student and one teacher actor forward pass on the batch (and a teacher critic
    pass when the critic is distilled).
    """

    def _setup_model(self) -> None:
        super()._setup_model()
        config = self.distiller.config
        # The pre-squash policy is a diagonal Gaussian: PPO's Gaussian KL (and its mean-only variants) applies as is.
        self.policy_kl = PolicyKL(
            DiagGaussianDistribution, (), config.distill_temperature, self.distiller.direction, config.distill_gaussian
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "policy_kl"]

    def _policy_outputs(self, actor: nn.Module, observations: Any) -> th.Tensor:
        mean, log_std, extra = actor.get_action_dist_params(observations)
        if "latent_sde" in extra:  # gSDE: log_std is the exploration matrix; the state's std also depends on the features
            return th.cat([mean, sde_log_std(actor, extra["latent_sde"])], dim=-1)
        return th.cat([mean, log_std], dim=-1)

    def _outputs_are_mean_and_log_std(self) -> bool:
        return True  # the pre-squash Gaussian's [mean, log_std] (_policy_outputs); the log_std lives on the actor

    def _policy_divergence(self, teacher: th.Tensor, student: th.Tensor) -> th.Tensor:
        return self.policy_kl.per_sample(teacher, student).mean()

    def _train_with_distillation(self, gradient_steps: int, batch_size: int) -> None:
        """SAC's ``train()`` (SB3 2.7-2.9, line for line; see algos/ported.py) plus the distillation terms."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizers learning rate
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]

        # Update learning rate according to lr schedule
        self._update_learning_rate(optimizers)
        phase = self._start_distill_phase()

        ent_coef_losses, ent_coefs = [], []
        actor_losses, critic_losses = [], []

        for gradient_step in range(gradient_steps):
            # Sample replay buffer
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # For n-step replay, discount factor is gamma**n_steps (when no early termination)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            # We need to sample because `log_std` may have changed between two gradient steps
            if self.use_sde:
                self.actor.reset_noise()

            # Action by the current actor for the sampled state
            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
            log_prob = log_prob.reshape(-1, 1)

            ent_coef_loss = None
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                # Important: detach the variable from the graph
                # so we don't change it with other losses
                # see https://github.com/rail-berkeley/softlearning/issues/60
                ent_coef = th.exp(self.log_ent_coef.detach())
                assert isinstance(self.target_entropy, float)
                ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                ent_coef_losses.append(ent_coef_loss.item())
            else:
                ent_coef = self.ent_coef_tensor

            ent_coefs.append(ent_coef.item())

            # Optimize entropy coefficient, also called
            # entropy temperature or alpha in the paper
            if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
                self.ent_coef_optimizer.zero_grad()
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()

            with th.no_grad():
                # Select action according to policy
                next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
                # Compute the next Q values: min over all critics targets
                next_q_values = th.cat(self.critic_target(replay_data.next_observations, next_actions), dim=1)
                next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
                # add entropy term
                next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
                # td error + entropy term
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

            # Get current Q-values estimates for each critic network
            # using action from the replay buffer
            current_q_values = self.critic(replay_data.observations, replay_data.actions)

            # Compute critic loss
            critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)  # for type checker
            critic_losses.append(critic_loss.item())  # type: ignore[union-attr]

            observations, actions, teachers = self._distill_batch(phase, replay_data, batch_size)
            same_rows = observations is replay_data.observations
            value_loss = self._critic_distill_term(teachers, observations, actions, current_q_values if same_rows else None)
            critic_loss = self._with_critic_distill(phase, critic_loss, value_loss)

            # Optimize the critic
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            # Compute actor loss
            # Alternative: actor_loss = th.mean(log_prob - qf1_pi)
            # Min over all critic networks
            q_values_pi = th.cat(self.critic(replay_data.observations, actions_pi), dim=1)
            min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
            actor_loss = (ent_coef * log_prob - min_qf_pi).mean()
            actor_losses.append(actor_loss.item())
            actor_loss = self._with_actor_distill(phase, actor_loss, actor_losses[-1], teachers, observations, value_loss)

            # Optimize the actor
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            self._teacher_tick_gradient_step()

            # Update target networks
            if gradient_step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                # Copy running stats, see GH issue #996
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        if len(ent_coef_losses) > 0:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))
        self._end_distill_phase(phase)
