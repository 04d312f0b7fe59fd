"""A test-only env plugin whose env cannot be built: a run that fails for a reason no input check can see (as with a
missing ROM or a broken install). Import it with `--gym-packages failing_env`; the id is `FailingCartPole-v0`.
"""

from typing import Any

import gymnasium
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class FailingCartPole(CartPoleEnv):
    """A registered id whose construction raises RuntimeError."""

    def __init__(self, **kwargs: Any) -> None:
        raise RuntimeError("FailingCartPole cannot be built, on purpose")


gymnasium.register("FailingCartPole-v0", entry_point=f"{__name__}:FailingCartPole", max_episode_steps=200)
