"""SelfDistillDQN: SB3's DQN plus a KL term between Boltzmann policies of a teacher and the student."""

from __future__ import annotations

import numpy as np
import torch as th
from stable_baselines3 import DQN
from torch import nn
from torch.nn import functional as F

from rl_selfdistill.distill.kl import q_softmax_kl
from rl_selfdistill.distill.mixin import SelfDistillMixin


class SelfDistillDQN(SelfDistillMixin, DQN):
    """DQN with self-distillation; a drop-in replacement for ``stable_baselines3.DQN``.

    On each sampled replay batch the loss gains
    ``distill_coef * mean_batch KL(softmax(Q_teacher / T) || softmax(Q_student / T))``.

    Takes every ``DQN`` argument plus the distillation keywords of
    ``rl_selfdistill.distill.config.DistillConfig``. ``teacher_mode="target"`` makes the target
    Q-network the teacher (no extra copy; it follows DQN's own target updates and
    ``teacher_update_interval`` is unused). ``distill_coef=0`` trains exactly like DQN
    (``train()`` is then DQN's own).
    """

    supported_teacher_modes = ("snapshot", "ema", "ensemble", "target")

    def _setup_model(self) -> None:
        super()._setup_model()
        self._bind_teacher_storage(self.q_net)

    def _on_step(self) -> None:
        super()._on_step()
        if self.distiller.teacher.mode == "target":
            # DQN.update of the target network happened in super()._on_step() on exactly this condition.
            target_updated = self._n_calls % max(self.target_update_interval // self.n_envs, 1) == 0
            if self.distiller.enabled and target_updated:
                self.distiller.teacher.refresh(self.q_net, self.num_timesteps)
            return
        self.distiller.refresh_if_due(self.q_net, self.num_timesteps)

    def _teacher_q_networks(self) -> list[nn.Module]:
        if not self.distiller.enabled or not self.distiller.teacher.is_ready:
            return []
        if self.distiller.teacher.mode == "target":
            return [self.q_net_target]
        return list(self.teacher_networks)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if not self.distiller.enabled:
            super().train(gradient_steps, batch_size)
            return
        self._train_with_distillation(gradient_steps, batch_size)

    def _train_with_distillation(self, gradient_steps: int, batch_size: int) -> None:
        """DQN's ``train()`` (SB3 2.7-2.9, line for line) with the distillation term added to the TD loss."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        teachers = self._teacher_q_networks()
        distill_coef = self.distiller.coefficient.value(self._current_progress_remaining)

        losses = []
        distill_kls: list[th.Tensor] = []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # For n-step replay, discount factor is gamma**n_steps (when no early termination)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            with th.no_grad():
                next_q_values = self.q_net_target(replay_data.next_observations)
                next_q_values, _ = next_q_values.max(dim=1)
                next_q_values = next_q_values.reshape(-1, 1)
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

            all_q_values = self.q_net(replay_data.observations)
            current_q_values = th.gather(all_q_values, dim=1, index=replay_data.actions.long())
            loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())

            if teachers:
                distill_kl = self._distill_kl(teachers, replay_data.observations, all_q_values)
                distill_kls.append(distill_kl.detach())
                # loss + coef * kl as one op: on a small network the per-op overhead is most of the cost.
                loss = th.add(loss, distill_kl, alpha=distill_coef)

            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        self.distiller.end_phase(self.logger, distill_kls, distill_coef, self.num_timesteps)

    def _distill_kl(self, teachers: list[nn.Module], observations: th.Tensor, student_q: th.Tensor) -> th.Tensor:
        """Batch-mean KL between the Boltzmann policies, averaged over the teacher members."""
        temperature, direction = self.distiller.temperature, self.distiller.direction
        with th.no_grad():
            teacher_qs = [teacher(observations) for teacher in teachers]
        kls = [q_softmax_kl(teacher_q, student_q, temperature, direction, reduction="mean") for teacher_q in teacher_qs]
        # One teacher is the common case: skip the stack on this per-gradient-step path.
        return kls[0] if len(kls) == 1 else th.stack(kls).mean()
