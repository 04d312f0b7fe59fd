"""SelfDistillTD3: SB3's TD3 plus a squared-error term towards a teacher actor (and critic) from its own past."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import TD3
from stable_baselines3.common.utils import polyak_update
from torch import nn
from torch.nn import functional as F

from rl_selfdistill.algos.off_policy_continuous import ActorCriticParts, Member, OffPolicyActorCriticDistillMixin
from rl_selfdistill.distill.kl import deterministic_kl


class SelfDistillTD3(OffPolicyActorCriticDistillMixin, TD3):
    """TD3 with self-distillation; a drop-in replacement for ``stable_baselines3.TD3``.

    TD3's policy is deterministic, so at each delayed actor update the actor loss gains
    ``distill_coef * mean_batch ||a_teacher(s) - a_student(s)||^2 / T``: the KL between Gaussians of equal
    variance T/2 centred on the two actions (``distill.kl.deterministic_kl``; its scale against other variances
    is in docs/algorithms.md). The KL direction does not matter (the term is symmetric); ``distill_gaussian``
    does not apply and is refused. With ``distill_value_coef > 0`` every critic update gains
    ``distill_coef * distill_value_coef * MSE`` to the teacher critic's Q-values.

    Teacher modes: snapshot, ema, ensemble, lagged (``teacher_update_unit="gradient_steps"`` counts actor
    updates, one every ``policy_delay`` gradient steps: the actor does not change in between), and ``target``:
    TD3's own target actor (and target critic) is the teacher, a Polyak average of the student with rate
    ``tau`` updated with every actor update. It costs no copy, and ``teacher_update_interval`` is unused.
    ``distill_coef=0`` trains exactly like TD3 (``train()`` is then TD3's own).
    """

    supported_teacher_modes = (*OffPolicyActorCriticDistillMixin.supported_teacher_modes, "target")
    # A deterministic policy has no variance to hold out: only the full term (the squared action error) applies.
    supported_choices = {**OffPolicyActorCriticDistillMixin.supported_choices, "distill_gaussian": ("full",)}

    _target_parts: ActorCriticParts

    def _setup_model(self) -> None:
        super()._setup_model()
        critic_target = self.critic_target if self.distiller.config.distill_value_coef > 0 else None
        self._target_parts = ActorCriticParts(self.actor_target, critic_target)

    def _teachers(self) -> list[Member]:
        if self.distiller.teacher.mode == "target":
            return [(self._target_parts, None)] if self.distiller.teacher.is_ready else []
        return super()._teachers()

    def _after_target_update(self) -> None:
        """A Polyak update of the target networks moved the teacher of ``teacher_mode="target"``: count it."""
        if self.distiller.teacher.mode == "target":
            self.distiller.teacher.refresh(self._target_parts, self.num_timesteps)

    def _policy_outputs(self, actor: nn.Module, observations: Any) -> th.Tensor:
        return actor(observations)

    def _policy_divergence(self, teacher: th.Tensor, student: th.Tensor) -> th.Tensor:
        return deterministic_kl(teacher, student, self.distiller.temperature).mean()

    def _train_with_distillation(self, gradient_steps: int, batch_size: int) -> None:
        """TD3's ``train()`` (SB3 2.7-2.9, line for line; see algos/ported.py) plus the distillation terms."""
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)

        # Update learning rate according to lr schedule
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        phase = self._start_distill_phase()

        actor_losses, critic_losses = [], []
        for _ in range(gradient_steps):
            self._n_updates += 1
            # Sample replay buffer
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # For n-step replay, discount factor is gamma**n_steps (when no early termination)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            with th.no_grad():
                # Select action according to policy and add clipped noise
                noise = replay_data.actions.clone().data.normal_(0, self.target_policy_noise)
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = (self.actor_target(replay_data.next_observations) + noise).clamp(-1, 1)

                # Compute the next Q-values: min over all critics targets
                next_q_values = th.cat(self.critic_target(replay_data.next_observations, next_actions), dim=1)
                next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

            # Get current Q-values estimates for each critic network
            current_q_values = self.critic(replay_data.observations, replay_data.actions)

            # Compute critic loss
            critic_loss = sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.item())

            observations, actions, teachers = self._distill_batch(phase, replay_data, batch_size)
            same_rows = observations is replay_data.observations
            value_loss = self._critic_distill_term(teachers, observations, actions, current_q_values if same_rows else None)
            critic_loss = self._with_critic_distill(phase, critic_loss, value_loss)

            # Optimize the critics
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            # Delayed policy updates
            if self._n_updates % self.policy_delay == 0:
                # Compute actor loss
                actor_loss = -self.critic.q1_forward(replay_data.observations, self.actor(replay_data.observations)).mean()
                actor_losses.append(actor_loss.item())
                actor_loss = self._with_actor_distill(phase, actor_loss, actor_losses[-1], teachers, observations, value_loss)

                # Optimize the actor
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()
                self._teacher_tick_gradient_step()

                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
                # Copy running stats, see GH issue #996
                polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)
                self._after_target_update()
            else:
                self._record_critic_only_step(phase, value_loss)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if len(actor_losses) > 0:
            self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        self._end_distill_phase(phase)
