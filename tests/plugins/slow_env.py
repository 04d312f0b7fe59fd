"""A test-only env plugin: CartPole that takes at least 1 ms per step, so a tiny run lasts long enough for a test
to signal or lock it mid-run on any machine. Import it with `--gym-packages slow_env`."""

import time

import gymnasium
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

STEP_S = 0.001


class SlowCartPole(CartPoleEnv):
    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        time.sleep(STEP_S)
        return super().step(action)


gymnasium.register("SlowCartPole-v0", entry_point=f"{__name__}:SlowCartPole", max_episode_steps=500)
