"""SelfDistillQRDQN: sb3-contrib's QR-DQN plus a distillation term towards a teacher quantile network."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from sb3_contrib import QRDQN
from sb3_contrib.common.utils import quantile_huber_loss
from torch import nn
from torch.nn import functional as F

from rl_selfdistill.algos.dqn import SelfDistillDQN
from rl_selfdistill.distill.config import QUANTILE_LOSSES
from rl_selfdistill.distill.kl import quantile_regression_loss, quantile_softmax_kl
from rl_selfdistill.distill.mixin import PhaseRecord, SelfDistillMixin


class SelfDistillQRDQN(SelfDistillMixin, QRDQN):
    """QR-DQN with self-distillation; a drop-in replacement for ``sb3_contrib.QRDQN``.

    On each sampled replay batch the loss gains ``distill_coef`` times, with the default
    ``distill_quantile_loss="boltzmann"``, ``mean_batch KL(softmax(Q_teacher / T) || softmax(Q_student / T))``
    where Q is the mean of a network's quantiles (the values QR-DQN acts on), as in ``SelfDistillDQN``.
    ``distill_quantile_loss="quantile"`` distils the whole return distribution instead: the student's quantiles of
    every action regress on the teacher's quantiles of that action with the quantile regression loss (summed over
    the student's quantiles, averaged over the teacher's, the actions and the batch), smallest, not 0, where the
    student's quantiles are the teacher's (sorted). ``"quantile_huber"`` uses QR-DQN's quantile Huber loss instead,
    whose minimum sits inside the teacher's outer quantiles (docs/algorithms.md).

    Takes every ``QRDQN`` argument plus the distillation keywords of
    ``rl_selfdistill.distill.config.DistillConfig``. ``teacher_mode="target"`` makes the target quantile
    network the teacher (no extra copy). ``distill_coef=0`` trains exactly like QR-DQN (``train()`` is then
    QR-DQN's own).
    """

    supported_teacher_modes = (*SelfDistillMixin.supported_teacher_modes, "target")
    supported_choices: ClassVar[dict[str, tuple[str, ...]]] = {
        **SelfDistillMixin.supported_choices,
        "distill_quantile_loss": QUANTILE_LOSSES,
    }

    # The replay batch stores observations normalised with the statistics of sampling time; one implementation.
    _teacher_observations = SelfDistillDQN._teacher_observations

    def _setup_model(self) -> None:
        super()._setup_model()
        self._bind_teacher_storage(self.quantile_net)

    def _on_step(self) -> None:
        super()._on_step()
        if not self.distiller.enabled:
            return
        if self.distiller.teacher.mode == "target":
            # QRDQN's update of the target network happened in super()._on_step() on exactly this condition.
            if self._n_calls % max(self.target_update_interval // self.n_envs, 1) == 0:
                self.distiller.teacher.refresh(self.quantile_net, self.num_timesteps)
            return
        if self.distiller.refresh_if_due(self.quantile_net, self.num_timesteps, self._teacher_obs_stats()):
            self._on_teacher_refreshed()

    def _teachers(self) -> list[tuple[nn.Module, Any]]:
        """(quantile network, observation statistics) of each teacher member the loss distils from now."""
        if not self.distiller.teacher.is_ready:
            return []
        if self.distiller.teacher.mode == "target":
            return [(self.quantile_net_target, None)]
        return self.distiller.teacher.active_members()

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if not self.distiller.enabled:
            super().train(gradient_steps, batch_size)
            return
        self._train_with_distillation(gradient_steps, batch_size)

    def _train_with_distillation(self, gradient_steps: int, batch_size: int) -> None:
        """QRDQN's ``train()`` (sb3-contrib 2.7-2.9, line for line; see algos/ported.py) plus the distillation term."""
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
                # Compute the quantiles of next observation
                next_quantiles = self.quantile_net_target(replay_data.next_observations)
                # Compute the greedy actions which maximize the next Q values
                next_greedy_actions = next_quantiles.mean(dim=1, keepdim=True).argmax(dim=2, keepdim=True)
                # Make "n_quantiles" copies of actions, and reshape to (batch_size, n_quantiles, 1)
                next_greedy_actions = next_greedy_actions.expand(batch_size, self.n_quantiles, 1)
                # Follow greedy policy: use the one with the highest Q values
                next_quantiles = next_quantiles.gather(dim=2, index=next_greedy_actions).squeeze(dim=2)
                # 1-step TD target
                target_quantiles = replay_data.rewards + (1 - replay_data.dones) * discounts * next_quantiles

            # Get current quantile estimates (of every action: the distillation term reads them all)
            all_quantiles = self.quantile_net(replay_data.observations)

            # Make "n_quantiles" copies of actions, and reshape to (batch_size, n_quantiles, 1).
            actions = replay_data.actions[..., None].long().expand(batch_size, self.n_quantiles, 1)
            # Retrieve the quantiles for the actions from the replay buffer
            current_quantiles = th.gather(all_quantiles, dim=2, index=actions).squeeze(dim=2)

            # Compute Quantile Huber loss, summing over a quantile dimension as in the paper.
            loss = quantile_huber_loss(current_quantiles, target_quantiles, sum_over_quantiles=True)
            losses.append(loss.item())

            teachers = self._teachers() if phase.distilling else []
            if teachers:
                phase.record_rl_loss(losses[-1])
                if phase.observations is None:
                    phase.observations = replay_data.observations  # the diagnostics' reference states
                distill_loss = self._distill_term(phase, teachers, replay_data.observations, all_quantiles, batch_size)
                # loss + coef * term as one op: on a small network the per-op overhead is most of the cost.
                loss = th.add(loss, distill_loss, alpha=phase.coef)

            # Optimize the policy
            self.policy.optimizer.zero_grad()
            loss.backward()
            # Clip gradient norm
            if self.max_grad_norm is not None:
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            self._teacher_tick_gradient_step()

        # Increase update counter
        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        self._end_distill_phase(phase)

    def _teacher_tick_phase(self) -> None:
        if self.distiller.teacher.tick("phases", self.quantile_net, self.num_timesteps, self._teacher_obs_stats()):
            self._on_teacher_refreshed()

    def _distill_term(
        self,
        phase: PhaseRecord,
        teachers: list[tuple[nn.Module, Any]],
        observations: th.Tensor,
        student_quantiles: th.Tensor,
        batch_size: int,
    ) -> th.Tensor:
        """Distillation loss (+ Q-value MSE) averaged over the teacher members, before weighting.

        Quantiles are ``[batch, n_quantiles, n_actions]``; the value term compares their means (the Q-values).
        """
        config = self.distiller.config
        if config.distill_separate_batch:
            observations = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env).observations  # type: ignore[union-attr]
            student_quantiles = self.quantile_net(observations)
        with th.no_grad():
            teacher_quantiles = [network(self._teacher_observations(observations, stats)) for network, stats in teachers]
        terms = [self._distribution_loss(teacher, student_quantiles) for teacher in teacher_quantiles]
        # One teacher is the common case: skip the stack on this per-gradient-step path.
        term = terms[0] if len(terms) == 1 else th.stack(terms).mean()
        value_loss = None
        if config.distill_value_coef > 0:
            student_q = student_quantiles.mean(dim=1)
            value_loss = th.stack([F.mse_loss(student_q, teacher.mean(dim=1)) for teacher in teacher_quantiles]).mean()
        return phase.record_distill(term, value_loss)

    def _distribution_loss(self, teacher_quantiles: th.Tensor, student_quantiles: th.Tensor) -> th.Tensor:
        """The batch-mean distance of the student's quantiles from one teacher's (logged as distill/kl)."""
        loss = self.distiller.config.distill_quantile_loss
        if loss == "quantile":
            return quantile_regression_loss(teacher_quantiles, student_quantiles)
        if loss == "quantile_huber":
            # [batch, n_actions, n_quantiles]: each action's quantiles are one set, as the critics of TQC's loss.
            return quantile_huber_loss(student_quantiles.transpose(1, 2), teacher_quantiles.transpose(1, 2))
        temperature, direction = self.distiller.temperature, self.distiller.direction
        return quantile_softmax_kl(teacher_quantiles, student_quantiles, temperature, direction, reduction="mean")

    # ------------------------------------------------------------------ hooks of the shared mixin

    def _student_network(self) -> nn.Module:
        return self.quantile_net

    def _reference_outputs(self, network: Any, observations: Any) -> th.Tensor:
        return network(observations).mean(dim=1)  # the Q-values: the diagnostics' entropy is of softmax(Q / T)

    def _reset_prefixes(self) -> tuple[str, ...]:
        if self.distiller.config.reset_parts == "all":
            return ("quantile_net.",)  # the target network keeps bootstrapping from the pre-reset weights until its update
        last_layer = len(self.quantile_net.quantile_net) - 1
        return (f"quantile_net.quantile_net.{last_layer}.",)
