"""Self-distilling SB3 algorithms, and the registry of every algorithm name (``algos.registry``).

The classes are imported lazily: the registry is read on the CLI's fast path, which must
not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_selfdistill.algos.a2c import SelfDistillA2C
    from rl_selfdistill.algos.dqn import SelfDistillDQN
    from rl_selfdistill.algos.maskable_ppo import SelfDistillMaskablePPO
    from rl_selfdistill.algos.ppo import SelfDistillPPO
    from rl_selfdistill.algos.qrdqn import SelfDistillQRDQN
    from rl_selfdistill.algos.recurrent_ppo import SelfDistillRecurrentPPO
    from rl_selfdistill.algos.sac import SelfDistillSAC
    from rl_selfdistill.algos.td3 import SelfDistillTD3
    from rl_selfdistill.algos.trpo import SelfDistillTRPO

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
]

_LAZY = {
    "SelfDistillPPO": "rl_selfdistill.algos.ppo",
    "SelfDistillDQN": "rl_selfdistill.algos.dqn",
    "SelfDistillA2C": "rl_selfdistill.algos.a2c",
    "SelfDistillQRDQN": "rl_selfdistill.algos.qrdqn",
    "SelfDistillMaskablePPO": "rl_selfdistill.algos.maskable_ppo",
    "SelfDistillRecurrentPPO": "rl_selfdistill.algos.recurrent_ppo",
    "SelfDistillTRPO": "rl_selfdistill.algos.trpo",
    "SelfDistillSAC": "rl_selfdistill.algos.sac",
    "SelfDistillTD3": "rl_selfdistill.algos.td3",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rl_selfdistill.algos' has no attribute {name!r}")
