"""Floors of normalised scores (random vs doing nothing) and suite budgets that match the presets they run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rl_selfdistill.benchmark.report import load_references
from rl_selfdistill.config import load_preset
from rl_selfdistill.envs import load_suite, normalize_score
from rl_selfdistill.envs.floors import do_nothing_action, do_nothing_score
from rl_selfdistill.errors import UsageError


def test_do_nothing_is_zero_torque_or_the_no_op():
    np.testing.assert_array_equal(do_nothing_action("Ant-v5", gym.spaces.Box(-1.0, 1.0, (8,))), np.zeros(8))
    assert do_nothing_action("Acrobot-v1", gym.spaces.Discrete(3)) == 1  # 0 and 2 apply torque
    assert do_nothing_action("LunarLander-v3", gym.spaces.Discrete(4)) == 0
    with pytest.raises(UsageError, match="CartPole-v1 has no action that does nothing"):
        do_nothing_action("CartPole-v1", gym.spaces.Discrete(2))


def test_standing_still_in_ant_beats_its_random_score_by_far():
    # The observation, measured: a still Ant collects its healthy reward for the whole 1000 steps
    mean, _ = do_nothing_score("Ant-v5", n_episodes=1, seed=0)
    ant = load_suite("mujoco5").get("Ant-v5")
    assert mean > 900 > ant.random_score
    assert ant.floor_score == ant.do_nothing_score == pytest.approx(mean, abs=30)


def test_normalised_scores_start_from_the_larger_floor():
    ant = load_suite("mujoco5").get("Ant-v5")
    assert normalize_score(ant, ant.do_nothing_score) == pytest.approx(0.0)
    assert normalize_score(ant, 140.0) < -2  # the 300k agents of the issue: worse than standing still
    pendulum = load_suite("classic").get("Pendulum-v1")  # doing nothing is worse than random here
    assert pendulum.floor_score == pendulum.random_score
    references = load_references("mujoco5", ["Ant-v5", "HalfCheetah-v5"])
    assert references["Ant-v5"].normalise(ant.do_nothing_score) == pytest.approx(0.0)
    assert references["HalfCheetah-v5"].random_score == pytest.approx(-0.26)  # zero torque beats random there too


@pytest.mark.parametrize(
    "suite, algos", [("classic", ["ppo"]), ("classic_dqn", ["dqn"]), ("minatar5", ["ppo", "dqn"]), ("continual", ["ppo"])]
)
def test_suite_budgets_are_the_budgets_of_the_presets_they_run(suite, algos):
    # CartPole DQN was tuned for 50k and collapses after solving: the PPO suite's 100k would misrepresent it
    for env in load_suite(suite).envs:
        for algo in algos:
            assert load_preset(algo, env.env_id)["n_timesteps"] == env.n_timesteps, (suite, algo, env.env_id)
