"""A test-only env plugin: registers CartPole under a new id. Import it with `--gym-packages tiny_env`."""

import gymnasium

gymnasium.register(
    "PluginCartPole-v0", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv", max_episode_steps=200
)
