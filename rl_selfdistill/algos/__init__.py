"""Self-distilling SB3 algorithms."""

from rl_selfdistill.algos.dqn import SelfDistillDQN
from rl_selfdistill.algos.ppo import SelfDistillPPO

__all__ = ["SelfDistillDQN", "SelfDistillPPO"]
