"""MinAtar through the project's env layer: ids, backends, observations, determinism, the CNN, presets, the suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("minatar")

from rl_selfdistill.config import env_family, load_preset, model_kwargs  # noqa: E402
from rl_selfdistill.envs import load_suite, make_vec_env, resolve_backend  # noqa: E402
from rl_selfdistill.envs.minatar import GAMES  # noqa: E402
from rl_selfdistill.envs.registry import resolve  # noqa: E402
from rl_selfdistill.errors import UsageError  # noqa: E402
from rl_selfdistill.policies import MinAtarCNN  # noqa: E402

SUITE_IDS = [f"MinAtar/{game}-v1" for game in GAMES]
# Channels of each game's state and sizes of its minimal action set (MinAtar 1.0.15)
CHANNELS = {"Asterix": 4, "Breakout": 4, "Freeway": 7, "Seaquest": 10, "SpaceInvaders": 6}
MINIMAL_ACTIONS = {"Asterix": 5, "Breakout": 3, "Freeway": 3, "Seaquest": 6, "SpaceInvaders": 4}


def random_rollout(venv, n_steps, seed=0):
    rng = np.random.default_rng(seed)
    frames, episodes = [venv.reset()], []
    for _ in range(n_steps):
        actions = rng.integers(0, venv.action_space.n, size=venv.num_envs)
        obs, _, _, infos = venv.step(actions)
        frames.append(obs)
        episodes += [info["episode"] for info in infos if "episode" in info]
    return np.stack(frames), episodes


@pytest.mark.parametrize("game", GAMES)
def test_every_game_builds_and_steps_with_its_grid_observation(game):
    venv = make_vec_env(f"MinAtar/{game}-v1", n_envs=2, backend="dummy", seed=0)
    try:
        assert venv.observation_space.shape == (10, 10, CHANNELS[game]) and venv.observation_space.dtype == bool
        assert venv.action_space.n == MINIMAL_ACTIONS[game]
        frames, _ = random_rollout(venv, 200)
        assert frames.shape == (201, 2, 10, 10, CHANNELS[game]) and frames.dtype == bool and frames.any()
    finally:
        venv.close()
    full = make_vec_env(f"MinAtar/{game}-v0", n_envs=1, backend="dummy", seed=0)
    assert full.action_space.n == 6  # -v0: every action, as in the MinAtar paper
    full.close()


def test_ids_resolve_to_the_minatar_family_and_auto_never_picks_envpool():
    entry = resolve("MinAtar/Breakout-v1")
    assert (entry.family, entry.game, entry.envpool_id) == ("minatar", "Breakout", None)
    assert env_family("MinAtar/Seaquest-v0") == "minatar"
    assert resolve_backend("MinAtar/Breakout-v1", "auto", n_envs=4) == "subproc"
    assert resolve_backend("MinAtar/Breakout-v1", "auto", n_envs=1) == "dummy"
    with pytest.raises(UsageError, match="not available on backend 'envpool'"):
        make_vec_env("MinAtar/Breakout-v1", n_envs=2, backend="envpool", seed=0)
    with pytest.raises(UsageError, match="unknown env id"):
        resolve("MinAtar/Pong-v1")


def test_subproc_workers_build_the_same_envs_as_the_dummy_backend():
    # Workers start with forkserver/spawn and must register the MinAtar ids themselves
    runs = []
    for backend in ("dummy", "subproc"):
        venv = make_vec_env("MinAtar/SpaceInvaders-v1", n_envs=2, backend=backend, seed=3)
        try:
            runs.append(random_rollout(venv, 150, seed=1)[0])
        finally:
            venv.close()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_same_seed_same_trajectories_and_another_seed_differs():
    def rollout(seed):
        venv = make_vec_env("MinAtar/Asterix-v1", n_envs=1, backend="dummy", seed=seed)
        try:
            return random_rollout(venv, 300)[0]
        finally:
            venv.close()

    np.testing.assert_array_equal(rollout(5), rollout(5))
    assert not np.array_equal(rollout(5), rollout(6))


def test_episodes_are_capped_and_the_cap_can_be_changed():
    venv = make_vec_env("MinAtar/Freeway-v1", n_envs=1, backend="dummy", seed=0, max_episode_steps=40)
    try:
        _, episodes = random_rollout(venv, 130)
    finally:
        venv.close()
    assert [episode["l"] for episode in episodes] == [40, 40, 40]  # Freeway never ends before 2500 steps by itself


def test_env_kwargs_reach_minatar_and_bad_ones_fail_in_one_line():
    venv = make_vec_env("MinAtar/Breakout-v1", n_envs=1, backend="dummy", seed=0, env_kwargs={"sticky_action_prob": 0.0})
    venv.close()
    with pytest.raises(UsageError, match="bad env_kwargs for MinAtar/Breakout-v1") as err:
        make_vec_env("MinAtar/Breakout-v1", n_envs=1, backend="dummy", seed=0, env_kwargs={"gravity": 1})
    assert "\n" not in str(err.value)


def test_frame_stack_stacks_along_the_channel_axis():
    venv = make_vec_env("MinAtar/Breakout-v1", n_envs=2, backend="dummy", seed=0, frame_stack=2)
    try:
        assert venv.reset().shape == (2, 10, 10, 8)
    finally:
        venv.close()


def test_the_cnn_is_the_minatar_papers_network():
    venv = make_vec_env("MinAtar/Seaquest-v1", n_envs=3, backend="dummy", seed=0)
    try:
        extractor = MinAtarCNN(venv.observation_space)
        obs = torch.as_tensor(venv.reset())
    finally:
        venv.close()
    conv, linear = extractor.conv[0], extractor.linear[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (10, 16, (3, 3), (1, 1))
    assert (linear.in_features, linear.out_features) == (16 * 8 * 8, 128)
    features = extractor(obs)
    assert features.shape == (3, 128) and (features >= 0).all()
    # Channels last in, the network of the paper applied to the channels-first grid
    manual = torch.relu(conv(obs.float().permute(0, 3, 1, 2))).flatten(1)
    torch.testing.assert_close(features, torch.relu(linear(manual)))


@pytest.mark.parametrize("algo", ["ppo", "sd_ppo", "dqn", "sd_dqn"])
def test_presets_build_a_model_with_the_cnn_that_trains(algo):
    from rl_selfdistill.algos import registry

    hyperparams = load_preset(algo, "MinAtar/Breakout-v1")
    assert hyperparams["policy"] == "CnnPolicy" and hyperparams["n_timesteps"] == 1_000_000
    assert hyperparams["policy_kwargs"]["features_extractor_class"] == "minatar_cnn"
    kwargs = model_kwargs(hyperparams)
    n_envs = hyperparams["n_envs"]
    # A few updates only: shorter rollouts (PPO) or an earlier start (DQN) than the preset's
    kwargs.update({"n_steps": 16} if "n_steps" in kwargs else {"learning_starts": 32}, batch_size=32)
    venv = make_vec_env("MinAtar/Breakout-v1", n_envs=n_envs, backend="dummy", seed=0)
    try:
        model = registry.algo_class(algo)(hyperparams["policy"], venv, seed=0, device="cpu", **kwargs)
        assert any(isinstance(module, MinAtarCNN) for module in model.policy.modules())
        # net_arch []: the heads read the 128 features directly, as in the paper
        heads = [m for m in model.policy.modules() if isinstance(m, torch.nn.Linear) and m.out_features in (1, 3)]
        assert heads and all(head.in_features == 128 for head in heads)
        model.learn(64 * n_envs)
    finally:
        venv.close()


def test_minatar_suite_is_cited_and_its_budget_is_the_presets():
    suite = load_suite("minatar5")
    assert suite.env_ids == SUITE_IDS
    for env in suite.envs:
        assert env.reference_score > env.floor_score >= env.random_score
        assert "measured here, 100 episodes" in env.source and env.do_nothing_score is not None
        for algo in ("ppo", "dqn"):
            assert load_preset(algo, env.env_id)["n_timesteps"] == env.n_timesteps


@pytest.mark.slow
def test_the_ppo_preset_learns_breakout_well_above_its_floor():
    # About 30 s of one core: the preset's 1M-step budget is for the benchmark; 100k already shows learning
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    hyperparams = load_preset("ppo", "MinAtar/Breakout-v1")
    venv = make_vec_env("MinAtar/Breakout-v1", n_envs=hyperparams["n_envs"], backend="dummy", seed=1)
    evaluation = make_vec_env("MinAtar/Breakout-v1", n_envs=1, backend="dummy", seed=10_001)
    try:
        model = PPO(hyperparams["policy"], venv, seed=1, device="cpu", **model_kwargs(hyperparams))
        model.learn(100_000)
        mean, _ = evaluate_policy(model, evaluation, n_eval_episodes=20, deterministic=True)
    finally:
        venv.close()
        evaluation.close()
    assert mean >= 4 * load_suite("minatar5").get("MinAtar/Breakout-v1").floor_score  # >= 2.0; random 0.36
