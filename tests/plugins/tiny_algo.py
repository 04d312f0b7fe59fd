"""A test-only algorithm plugin: everything adding an algorithm takes is this one registry entry.

`TinyDistillPPO` is SelfDistillPPO under another name (a user's variant would override something);
it reads the sd_ppo preset and is compared against ppo. Import it with `--gym-packages tiny_algo`.
"""

from rl_selfdistill.algos import registry
from rl_selfdistill.algos.ppo import SelfDistillPPO


class TinyDistillPPO(SelfDistillPPO):
    """SelfDistillPPO under the name tiny_sd_ppo."""


registry.register(registry.AlgoEntry("tiny_sd_ppo", f"{__name__}:TinyDistillPPO", base="ppo", preset="sd_ppo"))
