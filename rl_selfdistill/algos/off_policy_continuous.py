"""What the self-distilling actor-critic off-policy algorithms (SAC, TD3) share beyond ``SelfDistillMixin``.

The student is the actor, and with ``distill_value_coef > 0`` also the critic: a teacher member is a frozen
copy of both (``ActorCriticParts``). On every sampled replay batch

- the critic loss gains ``coef x distill_value_coef x MSE(Q_student(s, a), Q_teacher(s, a))``, averaged over
  the critic heads (a Q-regression to a past critic, as CHAIN's value-churn reduction does);
- the actor loss gains ``coef x`` the divergence between the teacher's and the student's policy on the batch's
  states (SAC: the Gaussian KL of the pre-squash distributions, TD3: the squared error of the actions).

A subclass is ``class SelfDistillX(OffPolicyActorCriticDistillMixin, X)`` and adds its ported ``train()`` (with
``_distill_batch``, ``_critic_distill_term``, ``_with_critic_distill`` and ``_with_actor_distill`` calls) and what
its policy term compares (``_policy_outputs``, ``_policy_divergence``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch as th
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from rl_selfdistill.distill.mixin import PhaseRecord, SelfDistillMixin
from rl_selfdistill.distill.teacher import renormalised_for_teacher

Member = tuple["ActorCriticParts", Any]


class ActorCriticParts(nn.Module):
    """The networks a teacher copies: the actor, and the critic when the critic is distilled too.

    A deep copy leaves out what SB3 attaches to the live networks besides their weights: the optimizers (the
    teacher never steps; copying Adam's moments would double the memory) and the action distribution's cache
    of the last forward pass (non-leaf tensors, which cannot be deep-copied). A features extractor shared by
    actor and critic stays shared in the copy.
    """

    def __init__(self, actor: nn.Module, critic: nn.Module | None = None) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic

    def __deepcopy__(self, memo: dict[int, Any]) -> ActorCriticParts:
        for module in self.modules():
            for value in _attached_state(module):
                memo[id(value)] = None
        critic = copy.deepcopy(self.critic, memo) if self.critic is not None else None
        return ActorCriticParts(copy.deepcopy(self.actor, memo), critic)


def _attached_state(module: nn.Module) -> list[Any]:
    """The optimizer and the cached distribution tensors SB3 keeps on a network (none of them weights)."""
    attached = [getattr(module, "optimizer", None)]
    distribution = getattr(module, "action_dist", None)
    if distribution is not None:
        attached += [value for value in vars(distribution).values() if isinstance(value, th.Tensor | Distribution)]
    return [value for value in attached if value is not None]


class OffPolicyActorCriticDistillMixin(SelfDistillMixin):
    """Mixed in before SB3's SAC or TD3: the teacher is a frozen copy of the actor (and of the critic)."""

    supported_teacher_modes = ("snapshot", "ema", "ensemble", "lagged")

    _student_parts: ActorCriticParts

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        critic = self.critic if self.distiller.config.distill_value_coef > 0 else None  # type: ignore[attr-defined]
        self._student_parts = ActorCriticParts(self.actor, critic)  # type: ignore[attr-defined]
        self._bind_teacher_storage(self._student_parts)

    def _excluded_save_params(self) -> list[str]:
        # The live networks are saved by SB3 as the policy's state dict; this is only a view of them.
        return [*super()._excluded_save_params(), "_student_parts", "_target_parts"]

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # With distillation off, the SB3 parent's own train() runs: bit-for-bit the plain algorithm.
        if not self.distiller.enabled:
            super().train(gradient_steps, batch_size)  # type: ignore[misc]
            return
        self._teacher_tick_phase()
        self._train_with_distillation(gradient_steps, batch_size)

    def _train_with_distillation(self, gradient_steps: int, batch_size: int) -> None:
        """The parent's ``train()`` copied line for line plus the distillation terms (see algos/ported.py)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ teacher cadence

    def _on_step(self) -> None:
        super()._on_step()  # type: ignore[misc]
        if not self.distiller.enabled or self.distiller.teacher.mode == "target":
            return
        if self.distiller.refresh_if_due(self._student_parts, self.num_timesteps, self._teacher_obs_stats()):  # type: ignore[attr-defined]
            self._on_teacher_refreshed()

    def _teacher_tick_phase(self) -> None:
        teacher = self.distiller.teacher
        if teacher.tick("phases", self._student_parts, self.num_timesteps, self._teacher_obs_stats()):  # type: ignore[attr-defined]
            self._on_teacher_refreshed()

    def _teachers(self) -> list[Member]:
        """(actor and critic, observation statistics) of each teacher member the losses distil from now."""
        return self.distiller.teacher.active_members() if self.distiller.teacher.is_ready else []

    # ------------------------------------------------------------------ the distillation terms of one gradient step

    def _distill_batch(self, phase: PhaseRecord, replay_data: Any, batch_size: int) -> tuple[Any, Any, list[Member]]:
        """(observations, actions) the terms are computed on, and the teachers; no teachers when not distilling.

        With ``distill_separate_batch`` the terms use an independent replay sample (one more draw of the buffer's RNG).
        """
        teachers = self._teachers() if phase.distilling else []
        if not teachers:
            return replay_data.observations, replay_data.actions, []
        if phase.observations is None:
            phase.observations = replay_data.observations  # the diagnostics' reference states
        if self.distiller.config.distill_separate_batch:
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[attr-defined]
        return replay_data.observations, replay_data.actions, teachers

    def _critic_distill_term(
        self, teachers: list[Member], observations: Any, actions: th.Tensor, student_q: tuple[th.Tensor, ...] | None
    ) -> th.Tensor | None:
        """MSE between the student's and each teacher's Q-values of every critic head on (s, a); None when off.

        `student_q` are the critic's outputs on the same rows when the caller has them (the training batch).
        """
        if not teachers or self.distiller.config.distill_value_coef == 0:
            return None
        if student_q is None:
            student_q = self.critic(observations, actions)  # type: ignore[attr-defined]
        losses = []
        for parts, stats in teachers:
            with th.no_grad():
                teacher_q = parts.critic(self._teacher_observations(observations, stats), actions)
            losses += [F.mse_loss(student, teacher) for student, teacher in zip(student_q, teacher_q, strict=True)]
        return losses[0] if len(losses) == 1 else th.stack(losses).mean()

    def _with_critic_distill(self, phase: PhaseRecord, critic_loss: th.Tensor, value_loss: th.Tensor | None) -> th.Tensor:
        if value_loss is None:
            return critic_loss
        return th.add(critic_loss, value_loss, alpha=phase.coef * phase.value_coef)

    def _with_actor_distill(
        self,
        phase: PhaseRecord,
        actor_loss: th.Tensor,
        rl_loss: float,
        teachers: list[Member],
        observations: Any,
        value_loss: th.Tensor | None,
    ) -> th.Tensor:
        """`actor_loss` plus the weighted policy divergence to the teachers; records the step in `phase`.

        `rl_loss` is the actor loss's value (already read by the caller): the relative weight compares with it.
        """
        if not teachers:
            return actor_loss
        phase.record_rl_loss(rl_loss)
        student = self._policy_outputs(self.actor, observations)  # type: ignore[attr-defined]
        divergences = []
        for parts, stats in teachers:
            with th.no_grad():
                teacher = self._policy_outputs(parts.actor, self._teacher_observations(observations, stats))
            divergences.append(self._policy_divergence(teacher, student))
        divergence = divergences[0] if len(divergences) == 1 else th.stack(divergences).mean()
        phase.record_distill(divergence, value_loss)
        # loss + coef * term as one op: on a small network the per-op overhead is most of the cost.
        return th.add(actor_loss, divergence, alpha=phase.coef)

    def _record_critic_only_step(self, phase: PhaseRecord, value_loss: th.Tensor | None) -> None:
        """A gradient step that updated only the critic (TD3's delayed actor): its value loss is still logged."""
        if value_loss is not None:
            phase.value_losses.append(value_loss.detach())

    def _policy_outputs(self, actor: nn.Module, observations: Any) -> th.Tensor:
        """What the policy term compares, per state: SAC's pre-squash [mean, log_std], TD3's action."""
        raise NotImplementedError

    def _policy_divergence(self, teacher: th.Tensor, student: th.Tensor) -> th.Tensor:
        """Batch-mean divergence between a teacher's and the student's ``_policy_outputs`` (logged as distill/kl)."""
        raise NotImplementedError

    def _teacher_observations(self, observations: Any, stats: Any) -> Any:
        """Replay observations as a teacher sees them: re-normalised with its own statistics (VecNormalize)."""
        return renormalised_for_teacher(self._vec_normalize_env, observations, stats)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ hooks of the shared mixin

    def _student_network(self) -> nn.Module:
        return self._student_parts

    def _reference_outputs(self, network: Any, observations: Any) -> th.Tensor:
        return self._policy_outputs(network.actor, observations)
