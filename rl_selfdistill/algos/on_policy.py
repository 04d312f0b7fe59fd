"""What the self-distilling on-policy algorithms (PPO, A2C) share beyond ``SelfDistillMixin``.

An on-policy algorithm trains on one rollout per update phase. When the teacher stays fixed for a
whole rollout (refreshes counted in env steps or update phases), its distribution parameters for
every rollout sample are computed once, in one no-grad pass when the rollout is complete, and each
batch reads its rows from them through the indices the buffer records. A teacher that moves every
gradient step (``lagged`` or ``teacher_update_unit="gradient_steps"``) is run on each batch instead.

A subclass is ``class SelfDistillX(OnPolicyDistillMixin, X)`` and adds only its ``train()``: SB3's,
copied, plus one ``_with_distill_term`` call per gradient step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from rl_selfdistill.algos.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rl_selfdistill.distill.mixin import PhaseRecord, SelfDistillMixin
from rl_selfdistill.distill.policy_kl import GAUSSIAN_TYPES, PolicyKL
from rl_selfdistill.errors import UsageError

# Rollouts are pushed through the teacher in chunks of this many samples: one pass per chunk,
# bounded memory for image observations and huge rollouts.
TEACHER_CHUNK_SIZE = 8192
Observations = th.Tensor | dict[str, th.Tensor]


class OnPolicyDistillMixin(SelfDistillMixin):
    """Mixed in before an SB3 on-policy algorithm with an ``ActorCriticPolicy``: the teacher is a copy of the policy."""

    adapt_kl_each_phase = True  # a phase is one policy iteration (a rollout's epochs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rollout_teacher: tuple[th.Tensor, th.Tensor | None] | None = None
        super().__init__(*args, **kwargs)

    def train(self) -> None:
        # With distillation off, the SB3 parent's own train() runs: bit-for-bit the plain algorithm.
        if not self.distiller.enabled:
            super().train()  # type: ignore[misc]
            return
        self._train_with_distillation()

    def _train_with_distillation(self) -> None:
        """The parent's ``train()`` copied line for line plus the distillation term (see algos/ported.py)."""
        raise NotImplementedError

    def _setup_model(self) -> None:
        if self.distiller.enabled:
            self.rollout_buffer_class = self._indexed_buffer_class()
        super()._setup_model()  # type: ignore[misc]
        if self.distiller.enabled:
            self.policy_kl = PolicyKL.for_policy(self.policy, self.distiller.config)
            self._connect_raw_observations()
        self._bind_teacher_storage(self.policy)

    def _connect_raw_observations(self) -> None:
        """Under VecNormalize the buffer also keeps raw observations, which a teacher normalises with its own statistics."""
        if not isinstance(self.rollout_buffer, IndexedRolloutBuffer):
            return
        vec_normalize = self.get_vec_normalize_env()
        normalises = vec_normalize is not None and vec_normalize.norm_obs
        self.rollout_buffer.raw_observation_source = vec_normalize.get_original_obs if normalises else None

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)  # type: ignore[misc]
        if self.distiller.enabled:  # the raw observations must come from the new env's VecNormalize, if any
            self._connect_raw_observations()

    def _indexed_buffer_class(self) -> type[RolloutBuffer] | type[DictRolloutBuffer]:
        """The rollout buffer class to use: SB3's, recording batch indices for the teacher rows."""
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
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int, *args: Any
    ) -> bool:
        # *args: what a parent's collect_rollouts takes beyond SB3's (MaskablePPO's use_masking), passed on.
        # Refreshes counted in env steps or phases happen only here, between rollouts: one teacher per rollout.
        if self.distiller.enabled:
            self._teacher_tick_between_phases()
        self._rollout_teacher = None
        complete = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, *args)  # type: ignore[misc]
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

    def _start_rollout_phase(self) -> PhaseRecord:
        """The update phase of the rollout in the buffer: its flat observations (and raw ones under VecNormalize)."""
        buffer = self.rollout_buffer
        assert isinstance(buffer, IndexedRolloutBuffer | IndexedDictRolloutBuffer)
        return self._start_distill_phase(
            observations=self._flat_rollout_observations(buffer), raw_observations=buffer.flat_raw_observations()
        )

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

    # ------------------------------------------------------------------ the distillation term of one batch

    def _with_distill_term(
        self, phase: PhaseRecord, loss: th.Tensor, rl_loss: float | th.Tensor, indices: np.ndarray, student_values: th.Tensor
    ) -> th.Tensor:
        """`loss` plus the weighted distillation term on the rollout rows `indices`, once a teacher exists.

        `rl_loss` is the policy-gradient loss of the step: the relative weight compares with |L_PG|, as CHAIN does.
        A tensor is read (a device sync) only when the term is added.
        """
        if not (phase.distilling and self.distiller.teacher.is_ready):
            return loss
        phase.record_rl_loss(abs(rl_loss.item() if isinstance(rl_loss, th.Tensor) else rl_loss))
        distill_loss = self._distill_term(phase, indices, student_values)
        # loss + coef * term as one op: on a small network the per-op overhead is most of the cost.
        return th.add(loss, distill_loss, alpha=phase.coef)

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

    # ------------------------------------------------------------------ hooks of the shared mixin

    def _student_network(self) -> th.nn.Module:
        return self.policy

    def _reference_outputs(self, network: Any, observations: Any) -> th.Tensor:
        """Flat distribution parameters of `network` on the diagnostics' reference observations."""
        return self.policy_kl.params(network, network.get_distribution(observations))

    def _outputs_are_mean_and_log_std(self) -> bool:
        return self.policy_kl.distribution_type in GAUSSIAN_TYPES

    def _reset_prefixes(self) -> tuple[str, ...]:
        return ("",) if self.distiller.config.reset_parts == "all" else ("action_net.", "value_net.", "log_std")
