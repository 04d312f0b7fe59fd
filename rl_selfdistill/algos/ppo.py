"""SelfDistillPPO: SB3's PPO plus a distillation term towards a teacher built from its own past."""

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
from rl_selfdistill.distill.mixin import PhaseRecord, SelfDistillMixin
from rl_selfdistill.distill.policy_kl import PolicyKL
from rl_selfdistill.errors import UsageError

# Rollouts are pushed through the teacher in chunks of this many samples: one pass per chunk,
# bounded memory for image observations and huge rollouts.
TEACHER_CHUNK_SIZE = 8192
Observations = th.Tensor | dict[str, th.Tensor]


class SelfDistillPPO(SelfDistillMixin, PPO):
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rollout_teacher: tuple[th.Tensor, th.Tensor | None] | None = None
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        if self.distiller.enabled:
            self.rollout_buffer_class = self._indexed_buffer_class()
        super()._setup_model()
        if self.distiller.enabled:
            self.policy_kl = PolicyKL.for_policy(self.policy, self.distiller.config)
            vec_normalize = self.get_vec_normalize_env()
            if vec_normalize is not None and vec_normalize.norm_obs and isinstance(self.rollout_buffer, IndexedRolloutBuffer):
                self.rollout_buffer.raw_observation_source = vec_normalize.get_original_obs
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
        return [*super()._excluded_save_params(), "_rollout_teacher", "policy_kl"]

    # ------------------------------------------------------------------ teacher refresh and rollout outputs

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        # Refreshes counted in env steps or phases happen only here, between rollouts: one teacher per rollout.
        if self.distiller.enabled:
            self._teacher_tick_between_phases()
        self._rollout_teacher = None
        complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        teacher = self.distiller.teacher
        if complete and self.distiller.enabled and teacher.is_ready and not teacher.changes_every_gradient_step:
            self._rollout_teacher = self._teacher_outputs_for_rollout(rollout_buffer)
        return complete

    def _flat_rollout_observations(self, buffer: RolloutBuffer | DictRolloutBuffer) -> np.ndarray | dict[str, np.ndarray]:
        if buffer.generator_ready:  # get() has already flattened them in place
            return buffer.observations
        if isinstance(buffer.observations, dict):
            return {key: buffer.swap_and_flatten(value) for key, value in buffer.observations.items()}
        return buffer.swap_and_flatten(buffer.observations)

    @th.no_grad()
    def _teacher_outputs_for_rollout(self, buffer: RolloutBuffer | DictRolloutBuffer) -> tuple[th.Tensor, th.Tensor | None]:
        """Distribution parameters ``[members, n_samples, p]`` (and values ``[members, n_samples]`` when the
        value is distilled) of every teacher for every rollout sample, in ``get``'s flat (env-major) order."""
        observations = self._flat_rollout_observations(buffer)
        raw = buffer.flat_raw_observations()  # type: ignore[union-attr]
        n_samples = len(next(iter(observations.values()))) if isinstance(observations, dict) else len(observations)
        chunks = [slice(start, start + TEACHER_CHUNK_SIZE) for start in range(0, n_samples, TEACHER_CHUNK_SIZE)]
        params, values = [], []
        for network, stats in self.distiller.teacher.active_members():
            outputs = [self._teacher_forward(network, stats, observations, raw, rows) for rows in chunks]
            params.append(th.cat([output[0] for output in outputs]))
            if self.distiller.config.distill_value_coef > 0:
                values.append(th.cat([output[1] for output in outputs]))
        return th.stack(params), (th.stack(values) if values else None)

    def _teacher_forward(
        self, network: Any, stats: Any, observations: Any, raw: np.ndarray | None, rows: Any
    ) -> tuple[th.Tensor, th.Tensor | None]:
        """One teacher's distribution parameters and values on the given rows, with its own normalisation."""
        obs = self._teacher_observations(stats, observations, raw, rows)
        features = network.extract_features(obs)
        if network.share_features_extractor:
            latent_pi, latent_vf = network.mlp_extractor(features)
        else:
            latent_pi = network.mlp_extractor.forward_actor(features[0])
            latent_vf = network.mlp_extractor.forward_critic(features[1])
        values = network.value_net(latent_vf).flatten() if self.distiller.config.distill_value_coef > 0 else None
        return self.policy_kl.params_from_latent(network, latent_pi), values

    def _teacher_observations(self, stats: Any, observations: Any, raw: np.ndarray | None, rows: Any) -> Observations:
        """Rows of the rollout as the teacher must see them: re-normalised with its own statistics when known."""
        vec_normalize = self.get_vec_normalize_env()
        if stats is not None and raw is not None and vec_normalize is not None:
            return self.rollout_buffer.to_torch(vec_normalize._normalize_obs(raw[rows], stats).astype(np.float32))
        if isinstance(observations, dict):
            return {key: self.rollout_buffer.to_torch(value[rows]) for key, value in observations.items()}
        return self.rollout_buffer.to_torch(observations[rows])

    # ------------------------------------------------------------------ the distillation term of one minibatch

    def _distill_term(self, phase: PhaseRecord, indices: np.ndarray, student_values: th.Tensor) -> th.Tensor:
        """Distillation loss on the rollout rows `indices` (before weighting), recorded in `phase`.

        The student's distribution on these rows is the one ``evaluate_actions`` just built (SB3 keeps it on
        ``policy.action_dist``), unless a separate batch is drawn, which costs one more student pass.
        """
        config = self.distiller.config
        if config.distill_separate_batch:
            indices = phase.separate_indices(len(indices))
            obs = self._teacher_observations(None, phase.observations, None, indices)
            distribution = self.policy.get_distribution(obs)
            student_values = self.policy.predict_values(obs).flatten() if config.distill_value_coef > 0 else student_values
        else:
            distribution = self.policy.action_dist
        student_params = self.policy_kl.params(self.policy, distribution)
        teacher_params, teacher_values = self._teacher_rows(phase, indices)
        kl = self.policy_kl.mean_over_teachers(teacher_params, student_params)
        value_loss = None
        if teacher_values is not None:
            value_loss = th.stack([F.mse_loss(student_values, member) for member in teacher_values]).mean()
        return phase.record_distill(kl, value_loss)

    def _teacher_rows(self, phase: PhaseRecord, indices: np.ndarray) -> tuple[th.Tensor, th.Tensor | None]:
        if self._rollout_teacher is not None:
            params, values = self._rollout_teacher
            rows = th.from_numpy(indices).to(params.device)
            return params[:, rows], (values[:, rows] if values is not None else None)
        with th.no_grad():
            outputs = [
                self._teacher_forward(network, stats, phase.observations, phase.raw_observations, indices)
                for network, stats in self.distiller.teacher.active_members()
            ]
        values = [output[1] for output in outputs if output[1] is not None]
        return th.stack([output[0] for output in outputs]), (th.stack(values) if values else None)

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        if not self.distiller.enabled:
            super().train()
            return
        self._train_with_distillation()

    def _train_with_distillation(self) -> None:
        """PPO's ``train()`` (SB3 2.7-2.9, line for line; see algos/ported.py) plus the distillation term."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        buffer = self.rollout_buffer
        assert isinstance(buffer, IndexedRolloutBuffer | IndexedDictRolloutBuffer)
        phase = self._start_distill_phase(
            observations=self._flat_rollout_observations(buffer), raw_observations=buffer.flat_raw_observations()
        )

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

                if phase.distilling and self.distiller.teacher.is_ready:
                    # The relative weight compares with |L_PG|, as CHAIN does.
                    phase.record_rl_loss(abs(pg_losses[-1]))
                    distill_loss = self._distill_term(phase, buffer.last_batch_indices, values)
                    # loss + coef * term as one op: on a small network the per-op overhead is most of the cost.
                    loss = th.add(loss, distill_loss, alpha=phase.coef)

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

    # ------------------------------------------------------------------ hooks of the shared mixin

    def _student_network(self) -> th.nn.Module:
        return self.policy

    def _reference_outputs(self, network: Any, observations: Any) -> th.Tensor:
        """Flat distribution parameters of `network` on the diagnostics' reference observations."""
        return self.policy_kl.params(network, network.get_distribution(observations))

    def _reset_prefixes(self) -> tuple[str, ...]:
        return ("",) if self.distiller.config.reset_parts == "all" else ("action_net.", "value_net.", "log_std")
