"""Self-distillation for your own SB3 algorithm: the recipe the toolkit's own classes follow.

``KLPenaltyPPO`` stands for your algorithm: an ordinary SB3 subclass, here PPO whose policy loss penalises
the KL to the behaviour policy instead of clipping the probability ratio (the "KL penalty" objective of
Schulman et al. 2017, section 4, with a fixed beta). It knows nothing about distillation.

``SelfDistillKLPenaltyPPO`` is its self-distilling version, built as ``SelfDistillPPO`` and ``SelfDistillA2C``
are (docs/algorithms.md, "Self-distillation for your own algorithm"):

1. mix ``OnPolicyDistillMixin`` in before your class: it takes the distillation keywords (``distill_coef``,
   ``teacher_update_interval``, ... gathered into one ``DistillConfig``), keeps the teacher copies, saves and
   loads them with the model, computes the teacher's outputs once per rollout, and implements the three hooks
   of ``SelfDistillMixin`` for an actor-critic policy;
2. write ``_train_with_distillation``: your ``train()`` plus four calls. With ``distill_coef=0`` the mixin runs
   your own ``train()`` instead, so the class then trains bit for bit like yours.

Run it: ``python examples/custom_algorithm.py`` trains 4096 steps on CartPole-v1, prints the logged KL to the
teacher, saves the model and loads it back with its teacher.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples, RolloutBufferSamples
from torch.nn import functional as F

from rl_selfdistill.algos.on_policy import OnPolicyDistillMixin

Batch = RolloutBufferSamples | DictRolloutBufferSamples


class KLPenaltyPPO(PPO):
    """PPO with a KL penalty to the behaviour policy in place of the clipped surrogate (your algorithm)."""

    def __init__(self, *args: Any, kl_beta: float = 1.0, **kwargs: Any) -> None:
        self.kl_beta = kl_beta
        super().__init__(*args, **kwargs)

    def train(self) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        for _epoch in range(self.n_epochs):
            for batch in self.rollout_buffer.get(self.batch_size):
                loss, _policy_loss, _values = self.minibatch_loss(batch)
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
        self._n_updates += self.n_epochs
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def minibatch_loss(self, batch: Batch) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """The loss of one minibatch, its policy part and the predicted values (kept in one method, so that a
        self-distilling copy of ``train()`` is only the loop)."""
        actions = batch.actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else batch.actions
        values, log_prob, entropy = self.policy.evaluate_actions(batch.observations, actions)
        values = values.flatten()
        advantages = (batch.advantages - batch.advantages.mean()) / (batch.advantages.std() + 1e-8)
        log_ratio = log_prob - batch.old_log_prob
        # (r - 1) - log r estimates KL(old || new) without bias and is never negative.
        kl_to_old = (th.exp(log_ratio) - 1 - log_ratio).mean()
        policy_loss = -(th.exp(log_ratio) * advantages).mean() + self.kl_beta * kl_to_old
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        value_loss = F.mse_loss(batch.returns, values)
        return policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss, policy_loss, values


class SelfDistillKLPenaltyPPO(OnPolicyDistillMixin, KLPenaltyPPO):
    """``KLPenaltyPPO`` with policy self-distillation: every ``KLPenaltyPPO`` argument plus the keywords of
    ``rl_selfdistill.distill.config.DistillConfig``; ``distill_coef=0`` runs ``KLPenaltyPPO.train`` itself."""

    def _train_with_distillation(self) -> None:
        """``KLPenaltyPPO.train`` plus the four calls of the recipe, marked (1) to (4)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        # (1) The phase of this rollout: its weight (schedules, adaptive, relative...) and its observations.
        phase = self._start_rollout_phase()
        buffer = self.rollout_buffer
        for _epoch in range(self.n_epochs):
            for batch in buffer.get(self.batch_size):
                loss, policy_loss, values = self.minibatch_loss(batch)
                # (2) + weight x KL(teacher || student) on this minibatch's rollout rows. The student's distribution
                # is the one evaluate_actions has just built on these rows (SB3 keeps it on policy.action_dist).
                loss = self._with_distill_term(phase, loss, policy_loss, buffer.last_batch_indices, values)
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                # (3) Teachers that move every gradient step (lagged, teacher_update_unit="gradient_steps").
                self._teacher_tick_gradient_step()
        self._n_updates += self.n_epochs
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        # (4) Log distill/* (means over the phase's steps) and adapt the coefficient once per rollout.
        self._end_distill_phase(phase)


def main(total_timesteps: int = 4096, directory: Path | None = None) -> SelfDistillKLPenaltyPPO:
    """Train on CartPole-v1 with a teacher refreshed every 1024 env steps, save, and load back with the teacher."""
    model = SelfDistillKLPenaltyPPO(
        "MlpPolicy",
        "CartPole-v1",
        kl_beta=0.5,
        n_steps=256,
        batch_size=64,
        n_epochs=4,
        distill_coef=0.5,
        teacher_update_interval=1024,
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps)
    kl = model.logger.name_to_value["distill/kl"]  # the mean over the last rollout's minibatches
    print(f"teacher refreshes: {model.distiller.teacher.n_updates}, distill/kl of the last rollout: {kl:.2e}")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(directory or scratch) / "klppo.zip"
        model.save(path)
        loaded = SelfDistillKLPenaltyPPO.load(path, device="cpu")
    print(f"loaded with {len(loaded.teacher_networks)} teacher network(s), kl_beta={loaded.kl_beta}")
    return loaded


if __name__ == "__main__":
    main()
