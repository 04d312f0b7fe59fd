"""What every self-distilling SB3 algorithm shares.

A self-distilling algorithm is ``class SelfDistillX(SelfDistillMixin, X)``. The mixin

- takes the distillation settings as flat SB3-style keywords (``distill_coef=0.2``), gathers
  them into one validated ``DistillConfig`` and passes every other keyword to ``X``;
- shows those keywords in the class signature (``inspect.signature(SelfDistillPPO)``), so IDEs,
  ``help()`` and the preset schema see one flat list, as for any SB3 class;
- owns the teacher networks (an ``nn.ModuleList`` saved by SB3 as a state dict beside the
  policy, so ``save``/``load`` restore the teacher) and the ``Distiller`` (settings, counters,
  coefficient state; pickled with the model).

The subclass adds what is specific to its algorithm: which network is the student, where the
teacher is refreshed, and the one call in its ``train()`` that adds the distillation term.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np
import torch as th
from stable_baselines3.common.save_util import load_from_zip_file
from torch import nn

from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.distill.distiller import Distiller, PhaseRecord

__all__ = ["PhaseRecord", "SelfDistillMixin"]

# The packages whose algorithm classes a self-distilling class extends.
SB3_PACKAGES = ("stable_baselines3", "sb3_contrib")
# The name of the teacher networks' state dict in get_parameters() and in saved files.
TEACHER_STATE = "teacher_networks"
# States in the fixed reference batch of the diagnostics (policy churn, student vs teacher entropy / std).
REFERENCE_BATCH_SIZE = 256
# The diagnostics are measured at a log line once at least this many env steps passed since the last measurement:
# a DQN with many envs writes a log line every few steps.
DIAGNOSTICS_EVERY_STEPS = 2048


def _distill_parameters() -> list[inspect.Parameter]:
    return [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in DistillConfig.defaults().items()
    ]


class SelfDistillMixin:
    """Mixed in before an SB3 algorithm class: ``class SelfDistillPPO(SelfDistillMixin, PPO)``."""

    #: Teacher modes this algorithm can use; a subclass narrows or extends it.
    supported_teacher_modes: ClassVar[tuple[str, ...]] = ("snapshot", "ema", "ensemble", "lagged", "reset")
    #: The values this algorithm accepts for the settings that only some algorithms can use; a subclass extends them.
    supported_choices: ClassVar[dict[str, tuple[str, ...]]] = {"distill_quantile_loss": ("boltzmann",)}

    #: True where an update phase is a policy iteration (an on-policy rollout's epochs): distill_target_kl then adapts
    #: after every phase, as Schulman et al.'s adaptive KL penalty does. Off-policy, a phase is one train() call,
    #: often a single gradient step: the weight adapts from the mean KL of every distill_relative_window gradient steps.
    adapt_kl_each_phase: ClassVar[bool] = False

    distiller: Distiller
    teacher_networks: nn.ModuleList

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The SB3 parent's parameters followed by the distillation keywords, as one flat signature. A shared
        # intermediate mixin (algos/on_policy.py) has no SB3 parent yet: its subclasses get the signature. An
        # sb3-contrib algorithm (QRDQN) comes before the SB3 base class it extends in the MRO.
        sb3_parent = next((klass for klass in cls.__mro__ if klass.__module__.split(".")[0] in SB3_PACKAGES), None)
        if sb3_parent is None:
            return
        parent = inspect.signature(sb3_parent.__init__)
        own = [p for p in list(parent.parameters.values())[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]  # no self
        cls.__signature__ = parent.replace(parameters=[*own, *_distill_parameters()])  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = DistillConfig.from_kwargs(kwargs)
        config.check_teacher_mode(self.supported_teacher_modes, type(self).__name__)
        config.check_choices(self.supported_choices, type(self).__name__)
        # Set before the SB3 constructor, which calls _setup_model.
        self.distiller = Distiller(config)
        self.teacher_networks = nn.ModuleList()
        super().__init__(*args, **kwargs)

    @property
    def distill_config(self) -> DistillConfig:
        return self.distiller.config

    @property
    def distill_enabled(self) -> bool:
        return self.distiller.enabled

    def _bind_teacher_storage(self, template: nn.Module) -> None:
        """Teacher storage shaped like `template` (the student network): empty now, filled by load or refresh."""
        self.teacher_networks = self.distiller.teacher.build_storage(template)

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        steps_before = self.num_timesteps  # type: ignore[attr-defined]
        result = super()._setup_learn(*args, **kwargs)  # type: ignore[misc]
        # SB3's default learn(reset_num_timesteps=True) restarts the step count at 0 on a model that has trained.
        if self.num_timesteps < steps_before:  # type: ignore[attr-defined]
            self.distiller.teacher.rebase_step_count(steps_before - self.num_timesteps, self.num_timesteps)  # type: ignore[attr-defined]
        return result

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()  # type: ignore[misc]
        # Only once a teacher copy exists: before that, get_parameters() has exactly the SB3 parent's structure
        # (generic code that walks the parameter dicts breaks on an empty one). A load builds as many copies as
        # were saved before it reads the state dicts, so a saved teacher is always expected and restored.
        if len(self.teacher_networks) > 0:
            state_dicts = [*state_dicts, TEACHER_STATE]
        return state_dicts, variables

    def _excluded_save_params(self) -> list[str]:
        # The teacher networks are saved as a state dict or not at all, never pickled.
        # The diagnostics' reference batch is rebuilt after a load (it only feeds distill/churn).
        excluded = [TEACHER_STATE, "_reference_obs", "_reference_greedy", "_diagnostics_step"]
        return [*super()._excluded_save_params(), *excluded]  # type: ignore[misc]

    def set_parameters(self, load_path_or_dict: Any, exact_match: bool = True, device: th.device | str = "auto") -> None:
        params = load_path_or_dict
        if not isinstance(params, dict):
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        if TEACHER_STATE in params and not params[TEACHER_STATE] and len(self.teacher_networks) == 0:
            # Files saved by earlier versions before the first refresh hold an empty teacher state dict.
            params = {name: value for name, value in params.items() if name != TEACHER_STATE}
        super().set_parameters(params, exact_match=exact_match, device=device)  # type: ignore[misc]

    # ------------------------------------------------------------------ what the algorithm class provides

    def _student_network(self) -> nn.Module:
        """The network the teacher copies (PPO: the policy, DQN: the online Q-network)."""
        raise NotImplementedError

    def _reference_outputs(self, network: Any, observations: Any) -> th.Tensor:
        """Logits, Q-values or [mean, log_std] of `network` on the reference observations."""
        raise NotImplementedError

    def _reset_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes (of the policy) that a reset re-initialises, for the configured reset_parts."""
        raise NotImplementedError

    # ------------------------------------------------------------------ teacher cadence

    def _teacher_obs_stats(self) -> Any:
        """The observation statistics the student is trained with now (VecNormalize), or None."""
        vec_normalize = self.get_vec_normalize_env()  # type: ignore[attr-defined]
        return vec_normalize.obs_rms if vec_normalize is not None and vec_normalize.norm_obs else None

    def _recent_return(self) -> float | None:
        episodes = getattr(self, "ep_info_buffer", None)
        return float(np.mean([info["r"] for info in episodes])) if episodes else None

    def _on_teacher_refreshed(self) -> None:
        self.distiller.teacher_return = self._recent_return()
        if self.distiller.config.teacher_mode == "reset":
            self._reset_student()

    def _teacher_tick_between_phases(self) -> None:
        """At a phase boundary: a refresh due in env steps, and one tick of the `phases` unit."""
        student, steps, stats = self._student_network(), self.num_timesteps, self._teacher_obs_stats()  # type: ignore[attr-defined]
        refreshed = self.distiller.refresh_if_due(student, steps, stats)
        refreshed = self.distiller.teacher.tick("phases", student, steps, stats) or refreshed
        if refreshed:
            self._on_teacher_refreshed()

    def _teacher_tick_gradient_step(self) -> None:
        teacher = self.distiller.teacher
        if teacher.update_unit == "gradient_steps":
            stats = self._teacher_obs_stats()
            if teacher.tick("gradient_steps", self._student_network(), self.num_timesteps, stats):  # type: ignore[attr-defined]
                self._on_teacher_refreshed()

    # ------------------------------------------------------------------ reset-and-distill

    def _reset_student(self) -> None:
        """Re-initialise the student (all of it, or its heads) with a fresh optimizer; the teacher keeps the old one."""
        policy = self.policy  # type: ignore[attr-defined]
        fresh = self.policy_class(  # type: ignore[attr-defined]
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            **self._fresh_policy_kwargs(),  # type: ignore[attr-defined]
        ).to(self.device)  # type: ignore[attr-defined]
        prefixes = self._reset_prefixes()
        state = {key: value for key, value in fresh.state_dict().items() if key.startswith(prefixes)}
        policy.load_state_dict(state, strict=False)
        # A fresh optimizer over the same parameters SB3 optimises (PPO: the policy, DQN: the online Q-network).
        policy.optimizer = policy.optimizer_class(
            self._student_network().parameters(),
            lr=self.lr_schedule(self._current_progress_remaining),  # type: ignore[attr-defined]
            **policy.optimizer_kwargs,
        )

    def _fresh_policy_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.policy_kwargs)  # type: ignore[attr-defined]
        if getattr(self, "use_sde", False):
            kwargs["use_sde"] = True
        return kwargs

    # ------------------------------------------------------------------ one update phase

    def _start_distill_phase(self, observations: Any = None, raw_observations: Any = None) -> PhaseRecord:
        progress = self._current_progress_remaining  # type: ignore[attr-defined]

        def lr_fraction() -> float:
            return self.lr_schedule(progress) / self.lr_schedule(1.0)  # type: ignore[attr-defined]

        coef = self.distiller.phase_coef(progress, self.num_timesteps, lr_fraction, self._recent_return)  # type: ignore[attr-defined]
        if observations is None:
            n_rows = 0
        else:
            n_rows = len(next(iter(observations.values()))) if isinstance(observations, dict) else len(observations)
        return PhaseRecord(
            coef=coef,
            distilling=coef > 0 or self.distiller.config.distill_coef_mode == "relative",
            value_coef=self.distiller.config.distill_value_coef,
            observations=observations,
            raw_observations=raw_observations,
            n_rows=n_rows,
        )

    def _end_distill_phase(self, phase: PhaseRecord) -> None:
        adapt_after = 1 if self.adapt_kl_each_phase else self.distiller.config.distill_relative_window
        self.distiller.end_phase(self.logger, phase, self.num_timesteps, adapt_after)  # type: ignore[attr-defined]
        if getattr(self, "_reference_obs", None) is None and phase.observations is not None:
            self._reference_obs = _first_rows(phase.observations, REFERENCE_BATCH_SIZE, self.device)  # type: ignore[attr-defined]
            self._reference_greedy = None

    # ------------------------------------------------------------------ diagnostics

    def dump_logs(self, *args: Any, **kwargs: Any) -> None:
        # Measured at log lines, at most every DIAGNOSTICS_EVERY_STEPS env steps, not per phase: a DQN phase can be
        # one gradient step, and two forward passes on the reference batch would then double its cost.
        last = getattr(self, "_diagnostics_step", None)
        if self.distiller.enabled and (last is None or self.num_timesteps - last >= DIAGNOSTICS_EVERY_STEPS):  # type: ignore[attr-defined]
            self._log_diagnostics()
        super().dump_logs(*args, **kwargs)  # type: ignore[misc]

    @th.no_grad()
    def _log_diagnostics(self) -> None:
        """Policy churn and the student's entropy / std beside the teacher's, on a fixed reference batch."""
        if getattr(self, "_reference_obs", None) is None:
            return
        self._diagnostics_step = self.num_timesteps  # type: ignore[attr-defined]
        student = self._reference_outputs(self._student_network(), self._reference_obs)
        self._log_spread("student", student)
        members = self.distiller.teacher.active_members()
        if members:
            self._log_spread("teacher", self._reference_outputs(members[-1][0], self._reference_obs))
        if self._is_discrete_output():
            greedy = student.argmax(dim=-1)
            previous = getattr(self, "_reference_greedy", None)
            if previous is not None:  # the fraction of greedy actions that changed since the previous log line
                self.logger.record("distill/churn", (greedy != previous).float().mean().item())  # type: ignore[attr-defined]
            self._reference_greedy = greedy

    def _outputs_are_mean_and_log_std(self) -> bool:
        """True when ``_reference_outputs`` are a diagonal Gaussian's [mean, log_std] (the diagnostics log its std)."""
        return False

    def _is_discrete_output(self) -> bool:
        from gymnasium import spaces

        return isinstance(self.action_space, spaces.Discrete)  # type: ignore[attr-defined]

    def _log_spread(self, who: str, outputs: th.Tensor) -> None:
        if self._is_discrete_output():
            log_p = th.log_softmax(outputs / self.distiller.temperature, dim=-1)
            entropy = -(log_p.exp() * log_p).sum(dim=-1).mean()
            self.logger.record(f"distill/{who}_entropy", entropy.item())  # type: ignore[attr-defined]
        elif self._outputs_are_mean_and_log_std():
            log_std = outputs.chunk(2, dim=-1)[1]
            self.logger.record(f"distill/{who}_std", log_std.exp().mean().item())  # type: ignore[attr-defined]


def _first_rows(observations: Any, count: int, device: th.device) -> Any:
    if isinstance(observations, dict):
        return {key: th.as_tensor(np.asarray(value[:count]), device=device) for key, value in observations.items()}
    if isinstance(observations, th.Tensor):
        return observations[:count].detach().clone()
    return th.as_tensor(np.asarray(observations[:count]), device=device)
