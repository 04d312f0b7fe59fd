"""A test-only plugin: the recipe's example classes (examples/custom_algorithm.py) registered as the recipe says,
so that `--gym-packages kl_penalty_algos` trains them from the command line."""

import importlib.util
import sys
from pathlib import Path

from rl_selfdistill.algos import registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_algorithm.py"
spec = importlib.util.spec_from_file_location("custom_algorithm", EXAMPLE)
assert spec is not None and spec.loader is not None
example = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = example  # a saved model names its class by this module
spec.loader.exec_module(example)

registry.register(registry.AlgoEntry("klppo", "custom_algorithm:KLPenaltyPPO", preset="ppo"))
registry.register(registry.AlgoEntry("sd_klppo", "custom_algorithm:SelfDistillKLPenaltyPPO", base="klppo", preset="sd_ppo"))
