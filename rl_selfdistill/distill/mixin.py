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

from torch import nn

from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.distill.distiller import Distiller


def _distill_parameters() -> list[inspect.Parameter]:
    return [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
        for name, default in DistillConfig.defaults().items()
    ]


class SelfDistillMixin:
    """Mixed in before an SB3 algorithm class: ``class SelfDistillPPO(SelfDistillMixin, PPO)``."""

    #: Teacher modes this algorithm can use; a subclass narrows or extends it.
    supported_teacher_modes: ClassVar[tuple[str, ...]] = ("snapshot", "ema", "ensemble")

    distiller: Distiller
    teacher_networks: nn.ModuleList

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The SB3 parent's parameters followed by the distillation keywords, as one flat signature.
        sb3_parent = next(klass for klass in cls.__mro__ if klass.__module__.startswith("stable_baselines3"))
        parent = inspect.signature(sb3_parent.__init__)
        own = [p for p in list(parent.parameters.values())[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]  # no self
        cls.__signature__ = parent.replace(parameters=[*own, *_distill_parameters()])  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = DistillConfig.from_kwargs(kwargs)
        config.check_teacher_mode(self.supported_teacher_modes, type(self).__name__)
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

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()  # type: ignore[misc]
        return [*state_dicts, "teacher_networks"], variables
