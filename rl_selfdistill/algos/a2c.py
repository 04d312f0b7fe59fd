"""SelfDistillA2C: SB3's A2C plus a distillation term towards a teacher built from its own past."""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from rl_selfdistill.algos.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rl_selfdistill.algos.on_policy import OnPolicyDistillMixin


class SelfDistillA2C(OnPolicyDistillMixin, A2C):
    """A2C with policy self-distillation; a drop-in replacement for ``stable_baselines3.A2C``.

    A2C makes one gradient step per rollout, on the whole rollout: the distillation term is the KL to
    the teacher averaged over every rollout sample. A teacher fixed for the rollout (refreshes counted in
    env steps or update phases) is run once when the rollout is complete, as in ``SelfDistillPPO``; a
    teacher that moves every gradient step (``lagged`` or ``teacher_update_unit="gradient_steps"``) is run
    on the rollout in ``train()``. Either way that is one teacher pass per rollout.

    Takes every ``A2C`` argument plus the distillation keywords of
    ``rl_selfdistill.distill.config.DistillConfig``. ``distill_coef=0`` trains exactly like A2C
    (``train()`` is then A2C's own).
    """

    def _train_with_distillation(self) -> None:
        """A2C's ``train()`` (SB3 2.7-2.9, line for line; see algos/ported.py) plus the distillation term."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        buffer = self.rollout_buffer
        assert isinstance(buffer, IndexedRolloutBuffer | IndexedDictRolloutBuffer)
        phase = self._start_rollout_phase()

        # This will only loop once (get all data in one go); the batch holds every row of the rollout, permuted.
        for rollout_data in buffer.get(batch_size=None):
            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.long().flatten()

            values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
            values = values.flatten()

            # Normalize advantage (not present in the original implementation)
            advantages = rollout_data.advantages
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            policy_loss = -(advantages * log_prob).mean()

            # Value loss using the TD(gae_lambda) target
            value_loss = F.mse_loss(rollout_data.returns, values)

            if entropy is None:
                # Approximate entropy when no analytical form
                entropy_loss = -th.mean(-log_prob)
            else:
                entropy_loss = -th.mean(entropy)

            loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
            loss = self._with_distill_term(phase, loss, policy_loss, buffer.last_batch_indices, values)

            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            self._teacher_tick_gradient_step()

        explained_var = explained_variance(buffer.values.flatten(), buffer.returns.flatten())

        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self._end_distill_phase(phase)
