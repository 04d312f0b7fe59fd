"""rl-selfdistill: policy self-distillation for Stable-Baselines3 and sb3-contrib algorithms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_selfdistill.algos import (
        SelfDistillA2C,
        SelfDistillDQN,
        SelfDistillMaskablePPO,
        SelfDistillPPO,
        SelfDistillQRDQN,
        SelfDistillRecurrentPPO,
        SelfDistillSAC,
        SelfDistillTD3,
        SelfDistillTRPO,
    )
    from rl_selfdistill.envs import make_vec_env

__all__ = [
    "SelfDistillA2C",
    "SelfDistillDQN",
    "SelfDistillMaskablePPO",
    "SelfDistillPPO",
    "SelfDistillQRDQN",
    "SelfDistillRecurrentPPO",
    "SelfDistillSAC",
    "SelfDistillTD3",
    "SelfDistillTRPO",
    "make_vec_env",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported lazily so that `rl-selfdistill --help` and the config tools start without torch;
    # rl_selfdistill.algos resolves each class lazily in turn.
    import importlib

    if name == "make_vec_env":
        return importlib.import_module("rl_selfdistill.envs").make_vec_env
    if name in __all__:
        return getattr(importlib.import_module("rl_selfdistill.algos"), name)
    raise AttributeError(f"module 'rl_selfdistill' has no attribute {name!r}")
