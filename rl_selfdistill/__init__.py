"""rl-selfdistill: policy self-distillation for PPO, DQN and A2C on Stable-Baselines3."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_selfdistill.algos import SelfDistillA2C, SelfDistillDQN, SelfDistillPPO
    from rl_selfdistill.envs import make_vec_env

__all__ = ["SelfDistillA2C", "SelfDistillDQN", "SelfDistillPPO", "make_vec_env"]
__version__ = "0.1.0"

# Imported lazily so that `rl-selfdistill --help` and the config tools start without torch.
_LAZY = {
    "SelfDistillPPO": "rl_selfdistill.algos",
    "SelfDistillDQN": "rl_selfdistill.algos",
    "SelfDistillA2C": "rl_selfdistill.algos",
    "make_vec_env": "rl_selfdistill.envs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rl_selfdistill' has no attribute {name!r}")
