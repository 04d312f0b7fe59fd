"""SelfDistillPPO: SB3's PPO plus a distillation term towards a teacher built from its own past."""

from __future__ import annotations

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from rl_selfdistill.algos.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rl_selfdistill.algos.on_policy import OnPolicyDistillMixin


class SelfDistillPPO(OnPolicyDistillMixin, PPO):
    """PPO with policy self-distillation; a drop-in replacement for ``stable_baselines3.PPO``.

    The teacher is a copy of the policy from its own past (see ``DistillConfig`` for the modes).
    When the teacher stays fixed for a whole rollout (refreshes counted in env steps or update
    phases), its distribution parameters for every rollout sample are computed once, in one
    no-grad pass when the rollout is complete, and each minibatch reads its rows from them.
    A teacher that moves every gradient step (``lagged`` or ``teacher_update_unit="gradient_steps"``)
    is run on each minibatch instead: one extra forward pass per gradient step.

    Takes every ``PPO`` argument plus the distillation keywords of
    ``rl_selfdistill.distill.config.DistillConfig``. ``distill_coef=0`` trains exactly like PPO.
    """

    # ------------------------------------------------------------------ train

    def _train_with_distillation(self) -> None:
        """PPO's ``train()`` (SB3 2.7-2.9, line for line; see algos/ported.py) plus the distillation term."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        buffer = self.rollout_buffer
        assert isinstance(buffer, IndexedRolloutBuffer | IndexedDictRolloutBuffer)
        phase = self._start_rollout_phase()

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()

                values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
                values = values.flatten()
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1, see SB3 GH issue #325
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                # Approximate reverse KL to the behaviour policy for early stopping (SB3 issue #417).
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # After the early stop: a minibatch that takes no step adds nothing to the distill/* records.
                loss = self._with_distill_term(phase, loss, pg_losses[-1], buffer.last_batch_indices, values)

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                self._teacher_tick_gradient_step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(buffer.values.flatten(), buffer.returns.flatten())

        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        self._end_distill_phase(phase)
