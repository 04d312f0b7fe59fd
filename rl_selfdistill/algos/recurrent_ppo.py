"""SelfDistillRecurrentPPO: sb3-contrib's RecurrentPPO plus a distillation term towards a teacher from its own past.

The teacher is a copy of the whole recurrent policy, LSTMs included, and it runs with LSTM states of its own.
Once per rollout, when the rollout is complete, it is run over the rollout's sequences (one per env, in
``get``'s env-major row order) with the rollout's episode starts, in one batched no-grad pass per chunk of envs;
each minibatch then reads its rows, laid out like the minibatch's padded sequences.

Where the teacher's LSTM state at a rollout start comes from:

- While the teacher stays the same, it is its own state at the end of the previous rollout's pass: the cached
  outputs are exactly those of the teacher stepped through every rollout since it was taken.
- When the teacher has just been refreshed (any refresh: snapshot, EMA step, new ensemble member, lagged
  push), its state is the one the student carries into the rollout (``_last_lstm_states``): the same state the
  rollout buffer stores and that the student's own training sequences start from. A hard snapshot then
  reproduces the student's outputs on the rollout, so its KL is 0. The teacher's exact own state would need a
  re-run from each env's episode start, i.e. an unbounded observation history; the difference ends at each
  env's next episode start, where every LSTM state is reset.
- After a load (and so after a resume), the envs are reset and every sequence starts an episode: nothing is lost
  by not saving the carried states (RecurrentPPO does not save ``_last_lstm_states`` either).

A teacher that moves every gradient step would need a pass over the rollout per minibatch, and a separate batch
would need sequences of its own: both are refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from rl_selfdistill.algos.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rl_selfdistill.algos.on_policy import TEACHER_CHUNK_SIZE, OnPolicyDistillMixin
from rl_selfdistill.distill.mixin import PhaseRecord


def padded_rows(batch_inds: np.ndarray, seq_start_indices: np.ndarray) -> np.ndarray:
    """The rollout row of every position of a minibatch's padded sequences, -1 for padding.

    sb3-contrib cuts the minibatch ``batch_inds`` into sequences starting at ``seq_start_indices`` (positions in
    the minibatch), pads them to one length and flattens them to ``n_seq * max_length`` rows; this is the same
    layout, so the teacher's cached rows line up with the student's outputs (and ``rows >= 0`` is the mask).
    """
    ends = np.append(seq_start_indices[1:], len(batch_inds))
    lengths = ends - seq_start_indices
    offsets = np.arange(lengths.max())
    valid = offsets[None, :] < lengths[:, None]
    rows = np.full(valid.shape, -1, dtype=np.int64)
    rows[valid] = batch_inds[(seq_start_indices[:, None] + offsets[None, :])[valid]]
    return rows.reshape(-1)


class IndexedRecurrentRolloutBuffer(IndexedRolloutBuffer, RecurrentRolloutBuffer):
    """RecurrentRolloutBuffer recording each minibatch's padded rows, with raw observations under VecNormalize."""

    last_padded_rows: np.ndarray

    def _get_samples(self, batch_inds: np.ndarray, env_change: Any = None, env: Any = None) -> RolloutBufferSamples:
        samples = RecurrentRolloutBuffer._get_samples(self, batch_inds, env_change, env)
        self.last_batch_indices = batch_inds
        self.last_padded_rows = padded_rows(batch_inds, self.seq_start_indices)
        return samples  # type: ignore[return-value]


class IndexedRecurrentDictRolloutBuffer(IndexedDictRolloutBuffer, RecurrentDictRolloutBuffer):
    """The same for dict observations (teachers under VecNormalize see the current statistics, as for PPO)."""

    last_padded_rows: np.ndarray

    def _get_samples(self, batch_inds: np.ndarray, env_change: Any = None, env: Any = None) -> DictRolloutBufferSamples:
        samples = RecurrentDictRolloutBuffer._get_samples(self, batch_inds, env_change, env)
        self.last_batch_indices = batch_inds
        self.last_padded_rows = padded_rows(batch_inds, self.seq_start_indices)
        return samples  # type: ignore[return-value]


RecurrentBuffers = IndexedRecurrentRolloutBuffer | IndexedRecurrentDictRolloutBuffer


class SelfDistillRecurrentPPO(OnPolicyDistillMixin, RecurrentPPO):
    """RecurrentPPO with policy self-distillation; a drop-in replacement for ``sb3_contrib.RecurrentPPO``.

    Takes every ``RecurrentPPO`` argument plus the distillation keywords of
    ``rl_selfdistill.distill.config.DistillConfig``. ``distill_coef=0`` trains exactly like RecurrentPPO
    (``train()`` is then RecurrentPPO's own). Teacher refreshes happen between rollouts (env steps or phases).
    """

    unsupported_distill_features: ClassVar[dict[str, str]] = {
        "teacher_per_gradient_step": "its teacher runs over whole rollout sequences with its own LSTM states, once per "
        "rollout; count teacher_update_interval in env_steps or phases",
        "separate_batch": "a separate batch would need LSTM sequences of its own; set distill_separate_batch=False",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._teacher_lstm_states: list[RNNStates] | None = None
        self._teacher_states_version: int | None = None
        self._rollout_start_states: RNNStates | None = None
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        self.distiller.config.check_supported(type(self).__name__, self.unsupported_distill_features)
        super()._setup_model()
        if self.distiller.enabled:
            # RecurrentPPO builds its buffer itself (it takes no rollout_buffer_class): the same buffer, indexed.
            parent = self.rollout_buffer
            self.rollout_buffer = self._indexed_buffer_class()(  # type: ignore[call-arg]
                self.n_steps,
                self.observation_space,
                self.action_space,
                parent.hidden_state_shape,  # type: ignore[union-attr]
                self.device,
                gamma=self.gamma,
                gae_lambda=self.gae_lambda,
                n_envs=self.n_envs,
            )
            self._connect_raw_observations()

    def _indexed_buffer_class(self) -> type[RolloutBuffer] | type[DictRolloutBuffer]:
        if isinstance(self.observation_space, spaces.Dict):
            return IndexedRecurrentDictRolloutBuffer
        return IndexedRecurrentRolloutBuffer

    def _excluded_save_params(self) -> list[str]:
        # Not saved, like RecurrentPPO's _last_lstm_states: a loaded model's envs are reset, every sequence starts anew.
        return [*super()._excluded_save_params(), "_teacher_lstm_states", "_teacher_states_version", "_rollout_start_states"]

    # ------------------------------------------------------------------ the teacher over the rollout's sequences

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        # The state the rollout (and the student's first training sequence of each env) starts from.
        self._rollout_start_states = self._last_lstm_states
        return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)

    def _teacher_initial_states(self, n_members: int) -> list[RNNStates]:
        """Each member's LSTM state at the rollout start: its own, carried, unless the teacher changed since."""
        carried = self._teacher_lstm_states
        unchanged = self._teacher_states_version == self.distiller.teacher.n_updates
        if carried is not None and unchanged and len(carried) == n_members:
            return carried
        start = self._rollout_start_states
        assert start is not None
        return [start] * n_members

    @th.no_grad()
    def _teacher_outputs_for_rollout(self, buffer: RolloutBuffer | DictRolloutBuffer) -> tuple[th.Tensor, th.Tensor | None]:
        """Every teacher's distribution parameters ``[members, n_samples, p]`` (and values) over the rollout's
        sequences, in ``get``'s flat env-major order; keeps each member's final LSTM state for the next rollout."""
        observations = self._flat_rollout_observations(buffer)
        raw = buffer.flat_raw_observations()  # type: ignore[union-attr]
        starts = buffer.episode_starts if buffer.generator_ready else buffer.swap_and_flatten(buffer.episode_starts)
        episode_starts = th.as_tensor(starts, dtype=th.float32, device=self.device).flatten()
        members = self.distiller.teacher.active_members()
        # Chunks of whole envs (each env's rows are one sequence): bounded memory for long rollouts.
        envs_per_chunk = max(1, TEACHER_CHUNK_SIZE // self.n_steps)
        params, values, finals = [], [], []
        for (network, stats), initial in zip(members, self._teacher_initial_states(len(members)), strict=True):
            chunks = [slice(first, first + envs_per_chunk) for first in range(0, self.n_envs, envs_per_chunk)]
            outputs = [
                self._teacher_sequences(network, stats, observations, raw, episode_starts, initial, envs) for envs in chunks
            ]
            params.append(th.cat([output[0] for output in outputs]))
            if self.distiller.config.distill_value_coef > 0:
                values.append(th.cat([output[1] for output in outputs]))
            finals.append(_concat_states([output[2] for output in outputs]))
        self._teacher_lstm_states, self._teacher_states_version = finals, self.distiller.teacher.n_updates
        return th.stack(params), (th.stack(values) if values else None)

    def _teacher_sequences(
        self,
        network: Any,
        stats: Any,
        observations: Any,
        raw: np.ndarray | None,
        episode_starts: th.Tensor,
        initial: RNNStates,
        envs: slice,
    ) -> tuple[th.Tensor, th.Tensor | None, RNNStates]:
        """One teacher over the rollouts of the envs `envs` (one sequence each): parameters, values, final states."""
        rows = slice(envs.start * self.n_steps, min(envs.stop, self.n_envs) * self.n_steps)
        obs = self._teacher_observations(stats, observations, raw, rows)
        starts = episode_starts[rows]
        pi_state = (initial.pi[0][:, envs].contiguous(), initial.pi[1][:, envs].contiguous())
        vf_state = (initial.vf[0][:, envs].contiguous(), initial.vf[1][:, envs].contiguous())
        features = network.extract_features(obs)
        pi_features, vf_features = (features, features) if network.share_features_extractor else features
        latent_pi, pi_state = network._process_sequence(pi_features, pi_state, starts, network.lstm_actor)
        params = self.policy_kl.params_from_latent(network, network.mlp_extractor.forward_actor(latent_pi))
        values = None
        if self.distiller.config.distill_value_coef > 0:
            if network.lstm_critic is not None:
                latent_vf, vf_state = network._process_sequence(vf_features, vf_state, starts, network.lstm_critic)
            else:  # the critic reads the actor's LSTM output, or has no LSTM (as in the policy's forward)
                latent_vf = latent_pi if network.shared_lstm else network.critic(vf_features)
                vf_state = pi_state
            values = network.value_net(network.mlp_extractor.forward_critic(latent_vf)).flatten()
        return params, values, RNNStates(pi_state, vf_state)

    # ------------------------------------------------------------------ the distillation term of one minibatch

    def _distill_term(self, phase: PhaseRecord, indices: np.ndarray, student_values: th.Tensor) -> th.Tensor:
        """The distillation loss on one minibatch of padded sequences: `indices` holds the rollout row of every
        padded position (-1 for padding), and only real positions count, as in RecurrentPPO's masked losses."""
        valid = indices >= 0
        mask = th.as_tensor(valid, device=self.device)
        student_params = self.policy_kl.params(self.policy, self.policy.action_dist)[mask]
        teacher_params, teacher_values = self._teacher_rows(phase, indices[valid])
        kl = self.policy_kl.mean_over_teachers(teacher_params, student_params)
        value_loss = None
        if teacher_values is not None:
            value_loss = th.stack([F.mse_loss(student_values[mask], member) for member in teacher_values]).mean()
        return phase.record_distill(kl, value_loss)

    def _reference_outputs(self, network: Any, observations: Any) -> th.Tensor:
        """Distribution parameters on the diagnostics' reference observations, each as the first step of an episode."""
        n_rows = len(next(iter(observations.values()))) if isinstance(observations, dict) else len(observations)
        layers, _, hidden = network.lstm_hidden_state_shape
        zeros = th.zeros((layers, n_rows, hidden), device=self.device)
        distribution, _ = network.get_distribution(observations, (zeros, zeros), th.ones(n_rows, device=self.device))
        return self.policy_kl.params(network, distribution)

    # ------------------------------------------------------------------ train

    def _train_with_distillation(self) -> None:
        """RecurrentPPO's ``train()`` (sb3-contrib 2.8-2.9, line for line; see algos/ported.py) plus the distillation term."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        buffer = self.rollout_buffer
        assert isinstance(buffer, RecurrentBuffers)
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

                # Padded positions of the minibatch's sequences do not count
                mask = rollout_data.mask > 1e-8

                values, log_prob, entropy = self.policy.evaluate_actions(
                    rollout_data.observations,
                    actions,
                    rollout_data.lstm_states,
                    rollout_data.episode_starts,
                )

                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage:
                    advantages = (advantages - advantages[mask].mean()) / (advantages[mask].std() + 1e-8)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)

                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.mean(th.min(policy_loss_1, policy_loss_2)[mask])

                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()[mask]).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = th.mean(((rollout_data.returns - values_pred) ** 2)[mask])

                value_losses.append(value_loss.item())

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob[mask])
                else:
                    entropy_loss = -th.mean(entropy[mask])

                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                # Approximate reverse KL to the behaviour policy for early stopping (SB3 issue #417).
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean(((th.exp(log_ratio) - 1) - log_ratio)[mask]).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # After the early stop: a minibatch that takes no step adds nothing to the distill/* records.
                loss = self._with_distill_term(phase, loss, pg_losses[-1], buffer.last_padded_rows, values)

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


def _concat_states(parts: list[RNNStates]) -> RNNStates:
    """Per-chunk LSTM states joined back along the env axis."""

    def join(pick: Any) -> tuple[th.Tensor, th.Tensor]:
        return (th.cat([pick(part)[0] for part in parts], dim=1), th.cat([pick(part)[1] for part in parts], dim=1))

    return RNNStates(join(lambda part: part.pi), join(lambda part: part.vf))
