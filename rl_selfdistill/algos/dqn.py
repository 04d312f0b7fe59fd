"""SelfDistillDQN: SB3's DQN plus a KL term between Boltzmann policies of a teacher and the student."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import DQN
from torch import nn
from torch.nn import functional as F

from rl_selfdistill.distill.kl import q_softmax_kl
from rl_selfdistill.distill.mixin import PhaseRecord, SelfDistillMixin
from rl_selfdistill.distill.teacher import renormalised_for_teacher


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

    supported_teacher_modes = (*SelfDistillMixin.supported_teacher_modes, "target")

    def _setup_model(self) -> None:
        super()._setup_model()
        self._bind_teacher_storage(self.q_net)

    def _on_step(self) -> None:
        super()._on_step()
        if not self.distiller.enabled:
            return
        if self.distiller.teacher.mode == "target":
            # DQN.update of the target network happened in super()._on_step() on exactly this condition.
            if self._n_calls % max(self.target_update_interval // self.n_envs, 1) == 0:
                self.distiller.teacher.refresh(self.q_net, self.num_timesteps)
            return
        if self.distiller.refresh_if_due(self.q_net, self.num_timesteps, self._teacher_obs_stats()):
            self._on_teacher_refreshed()

    def _teachers(self) -> list[tuple[nn.Module, Any]]:
        """(Q-network, observation statistics) of each teacher member the loss distils from now."""
        if not self.distiller.teacher.is_ready:
            return []
        if self.distiller.teacher.mode == "target":
            return [(self.q_net_target, None)]
        return self.distiller.teacher.active_members()

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if not self.distiller.enabled:
            super().train(gradient_steps, batch_size)
            return
        self._train_with_distillation(gradient_steps, batch_size)

    def _train_with_distillation(self, gradient_steps: int, batch_size: int) -> None:
        """DQN's ``train()`` (SB3 2.7-2.9, line for line; see algos/ported.py) plus the distillation term."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        self._teacher_tick_phase()
        phase = self._start_distill_phase()

        losses = []
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

            teachers = self._teachers() if phase.distilling else []
            if teachers:
                phase.record_rl_loss(losses[-1])
                if phase.observations is None:
                    phase.observations = replay_data.observations  # the diagnostics' reference states
                distill_loss = self._distill_term(phase, teachers, replay_data.observations, all_q_values, batch_size)
                # loss + coef * term as one op: on a small network the per-op overhead is most of the cost.
                loss = th.add(loss, distill_loss, alpha=phase.coef)

            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            self._teacher_tick_gradient_step()

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        self._end_distill_phase(phase)

    def _teacher_tick_phase(self) -> None:
        teacher = self.distiller.teacher
        if teacher.tick("phases", self.q_net, self.num_timesteps, self._teacher_obs_stats()):
            self._on_teacher_refreshed()

    def _distill_term(
        self,
        phase: PhaseRecord,
        teachers: list[tuple[nn.Module, Any]],
        observations: th.Tensor,
        student_q: th.Tensor,
        batch_size: int,
    ) -> th.Tensor:
        """KL between the Boltzmann policies (+ Q-value MSE), averaged over the teacher members, before weighting."""
        config = self.distiller.config
        if config.distill_separate_batch:
            observations = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env).observations  # type: ignore[union-attr]
            student_q = self.q_net(observations)
        temperature, direction = self.distiller.temperature, self.distiller.direction
        with th.no_grad():
            teacher_qs = [network(self._teacher_observations(observations, stats)) for network, stats in teachers]
        kls = [q_softmax_kl(teacher_q, student_q, temperature, direction, reduction="mean") for teacher_q in teacher_qs]
        # One teacher is the common case: skip the stack on this per-gradient-step path.
        kl = kls[0] if len(kls) == 1 else th.stack(kls).mean()
        value_loss = None
        if config.distill_value_coef > 0:
            value_loss = th.stack([F.mse_loss(student_q, teacher_q) for teacher_q in teacher_qs]).mean()
        return phase.record_distill(kl, value_loss)

    def _teacher_observations(self, observations: Any, stats: Any) -> Any:
        """Replay observations as a teacher sees them: re-normalised with its own statistics (VecNormalize)."""
        return renormalised_for_teacher(self._vec_normalize_env, observations, stats)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ hooks of the shared mixin

    def _student_network(self) -> nn.Module:
        return self.q_net

    def _reference_outputs(self, network: Any, observations: Any) -> th.Tensor:
        return network(observations)

    def _reset_prefixes(self) -> tuple[str, ...]:
        if self.distiller.config.reset_parts == "all":
            return ("q_net.",)  # the target network keeps bootstrapping from the pre-reset weights until its next update
        last_layer = len(self.q_net.q_net) - 1
        return (f"q_net.q_net.{last_layer}.",)
