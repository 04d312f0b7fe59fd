"""SelfDistillPPO: SB3's PPO plus a KL term towards a frozen copy of its own past policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from rl_selfdistill.algos.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rl_selfdistill.distill.mixin import SelfDistillMixin
from rl_selfdistill.distill.policy_kl import PolicyKL
from rl_selfdistill.errors import UsageError

# Rollouts are pushed through the teacher in chunks of this many samples: one pass per chunk,
# bounded memory for image observations and huge rollouts.
TEACHER_CHUNK_SIZE = 8192


class SelfDistillPPO(SelfDistillMixin, PPO):
    """PPO with policy self-distillation; a drop-in replacement for ``stable_baselines3.PPO``.

    Every ``teacher_update_interval`` environment steps (checked at rollout boundaries) the
    current policy is frozen as the teacher. After each rollout the teacher's distribution
    parameters for all its observations are computed in one no-grad pass; every PPO
    minibatch then adds ``distill_coef * KL(teacher || student)`` (batch mean) to the loss.

    Takes every ``PPO`` argument plus the distillation keywords of
    ``rl_selfdistill.distill.config.DistillConfig`` (``distill_coef``, ``teacher_update_interval``,
    ``teacher_mode`` = snapshot | ema | ensemble, ...). ``distill_coef=0`` trains exactly like PPO.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rollout_teacher_params: th.Tensor | None = None
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        if self.distiller.enabled:
            self.rollout_buffer_class = self._indexed_buffer_class()
        super()._setup_model()
        if self.distiller.enabled:
            self.policy_kl = PolicyKL.for_policy(self.policy, self.distiller.temperature, self.distiller.direction)
        self._bind_teacher_storage(self.policy)

    def _indexed_buffer_class(self) -> type[RolloutBuffer] | type[DictRolloutBuffer]:
        """The rollout buffer class to use: SB3's, recording minibatch indices for the teacher rows."""
        if self.rollout_buffer_class is None or self.rollout_buffer_class in (IndexedRolloutBuffer, IndexedDictRolloutBuffer):
            return IndexedDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else IndexedRolloutBuffer
        if issubclass(self.rollout_buffer_class, IndexedRolloutBuffer | IndexedDictRolloutBuffer):
            return self.rollout_buffer_class
        raise UsageError(
            f"rollout_buffer_class={self.rollout_buffer_class.__name__} cannot carry teacher outputs; "
            "subclass rl_selfdistill.algos.buffers.IndexedRolloutBuffer (or IndexedDictRolloutBuffer), or set distill_coef=0"
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_rollout_teacher_params", "policy_kl"]

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        # Refreshing only here, between rollouts, keeps one teacher per rollout.
        self.distiller.refresh_if_due(self.policy, self.num_timesteps)
        self._rollout_teacher_params = None
        complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        if complete and self.distiller.enabled and self.distiller.teacher.is_ready:
            self._rollout_teacher_params = self._teacher_params_for_rollout(rollout_buffer)
        return complete

    @th.no_grad()
    def _teacher_params_for_rollout(self, rollout_buffer: RolloutBuffer | DictRolloutBuffer) -> th.Tensor:
        """Distribution parameters of every teacher for every rollout sample: ``[members, n_samples, p]``.

        Rows follow the flat order (env-major) that ``RolloutBuffer.get`` uses for its indices.
        """
        observations = rollout_buffer.observations
        if isinstance(observations, dict):
            flat: np.ndarray | dict[str, np.ndarray] = {k: rollout_buffer.swap_and_flatten(v) for k, v in observations.items()}
            n_samples = len(next(iter(flat.values())))
        else:
            flat = rollout_buffer.swap_and_flatten(observations)
            n_samples = len(flat)
        members = []
        for teacher in self.teacher_networks:
            chunks = []
            for start in range(0, n_samples, TEACHER_CHUNK_SIZE):
                chunk = (
                    {k: v[start : start + TEACHER_CHUNK_SIZE] for k, v in flat.items()}
                    if isinstance(flat, dict)
                    else (flat[start : start + TEACHER_CHUNK_SIZE])
                )
                obs_tensor = (
                    {k: rollout_buffer.to_torch(v) for k, v in chunk.items()}
                    if isinstance(chunk, dict)
                    else (rollout_buffer.to_torch(chunk))
                )
                chunks.append(self.policy_kl.params(teacher, teacher.get_distribution(obs_tensor)))
            members.append(th.cat(chunks))
        return th.stack(members)

    def train(self) -> None:
        if not self.distiller.enabled:
            super().train()
            return
        self._train_with_distillation()

    def _train_with_distillation(self) -> None:
        """PPO's ``train()`` (SB3 2.x, line for line) with the KL term added to each minibatch loss."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        distill_coef = self.distiller.coefficient.value(self._current_progress_remaining)
        teacher_params = self._rollout_teacher_params
        buffer = self.rollout_buffer
        assert isinstance(buffer, IndexedRolloutBuffer | IndexedDictRolloutBuffer)

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []
        distill_kls: list[th.Tensor] = []

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

                if teacher_params is not None:
                    batch_indices = th.as_tensor(buffer.last_batch_indices, device=teacher_params.device)
                    # evaluate_actions left the distribution it built on the policy (SB3 reuses one object).
                    student_params = self.policy_kl.params(self.policy, self.policy.action_dist)
                    distill_kl = self.policy_kl.mean_over_teachers(teacher_params[:, batch_indices], student_params)
                    distill_kls.append(distill_kl.detach())
                    loss = loss + distill_coef * distill_kl

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

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

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
        self.distiller.end_phase(self.logger, distill_kls, distill_coef, self.num_timesteps)
