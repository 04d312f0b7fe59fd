"""Continual classic control: the seed-determined level schedule, per-env step counting, eval sync, scoring, presets."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from stable_baselines3.common.vec_env import VecNormalize

from rl_selfdistill.benchmark.aggregate import SCORE_FRACTION, final_window_score, score_fraction
from rl_selfdistill.config import env_family, load_preset
from rl_selfdistill.envs import load_suite, make_vec_env, resolve_backend
from rl_selfdistill.envs.continual import (
    ContinualWrapper,
    LevelTransform,
    continual_ids,
    make_continual,
    register_continual,
    sync_levels,
)
from rl_selfdistill.envs.registry import resolve
from rl_selfdistill.errors import UsageError


def test_ids_resolve_to_the_continual_family_on_sb3_backends():
    assert continual_ids() == [f"Continual-{t}-v0" for t in ("CartPole", "Acrobot", "LunarLander", "MountainCar")]
    assert resolve("Continual-CartPole-v0").family == "continual"
    assert env_family("Continual-Acrobot-v0") == "other"  # presets use exact-id sections
    assert resolve_backend("Continual-CartPole-v0", "auto", n_envs=4) == "subproc"
    with pytest.raises(UsageError, match="not available on backend 'envpool'"):
        make_vec_env("Continual-CartPole-v0", n_envs=2, backend="envpool", seed=0)


def test_a_level_transform_is_a_pure_function_of_the_schedule_seed_and_the_level():
    def transform(level, seed=0):
        return LevelTransform(level, seed, obs_dim=6, n_actions=3, offset_std=1.0, permute_actions=True)

    identity = transform(0)
    x = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(identity.observation(x), x)
    assert identity.action(2) == 2
    for level in (1, 2, 7):
        a, b = transform(level), transform(level)
        np.testing.assert_array_equal(a.observation(x), b.observation(x))
        assert sorted(a.perm) == list(range(6)) and set(np.abs(a.signs)) == {1.0} and sorted(a.action_perm) == [0, 1, 2]
    assert not np.array_equal(transform(1).observation(x), transform(2).observation(x))
    assert not np.array_equal(transform(1).observation(x), transform(1, seed=1).observation(x))


def lockstep(steps_per_level, n_steps, seed=0):
    """A continual CartPole and a plain one with the same seed, fed the same actions.

    Returns records (level, continual obs, plain obs, starts an episode, the continual env's step count).
    """
    wrapped = ContinualWrapper(gym.make("CartPole-v1"), steps_per_level=steps_per_level)
    plain = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    obs_w, _ = wrapped.reset(seed=seed)
    obs_p, _ = plain.reset(seed=seed)
    records = [(wrapped.level, obs_w, obs_p, True, 0)]
    for _ in range(n_steps):
        action = int(rng.integers(2))
        obs_w, _, term, trunc, info = wrapped.step(action)
        obs_p, *_ = plain.step(action)
        records.append((info["continual_level"], obs_w, obs_p, False, wrapped.level_steps))
        if term or trunc:
            obs_w, _ = wrapped.reset()
            obs_p, _ = plain.reset()
            records.append((wrapped.level, obs_w, obs_p, True, wrapped.level_steps))
    return records, wrapped


def test_levels_follow_the_envs_own_step_count_and_switch_only_at_episode_starts():
    records, wrapped = lockstep(steps_per_level=30, n_steps=400)
    assert wrapped.level_steps == 400
    levels = [record[0] for record in records]
    assert levels[0] == 0 and max(levels) >= 10 and levels == sorted(levels)
    # Every observation is level k's transform of the plain env's observation (same seed, same actions)
    for level, seen, plain, _, _ in records:
        np.testing.assert_allclose(seen, LevelTransform(level, 0, 4, 2, 1.0, False).observation(plain), rtol=1e-6)
    # The level is read at each episode start from the step count, and never changes within an episode
    for (level, _, _, _, _), (next_level, _, _, starts, steps) in zip(records, records[1:]):
        assert next_level == (steps // 30 if starts else level)


def test_a_changed_level_means_a_different_input_for_the_same_state():
    records, _ = lockstep(steps_per_level=25, n_steps=200)
    level_1 = next(r for r in records if r[0] == 1)
    assert not np.allclose(level_1[1], level_1[2])


def test_permuted_actions_relabel_the_actions_of_a_level():
    env = make_continual("CartPole-v1", steps_per_level=1000, permute_actions=True, offset_std=0.0)
    plain = gym.make("CartPole-v1")
    env.set_level(next(k for k in range(1, 50) if LevelTransform(k, 0, 4, 2, 0.0, True).action_perm[0] == 1))
    env.reset(seed=3)
    plain.reset(seed=3)
    transform = env._transform
    for action in (0, 0, 1, 0, 1, 1):
        obs, *_ = env.step(action)
        expected, *_ = plain.step(int(transform.action_perm[action]))
        np.testing.assert_allclose(obs, transform.observation(expected), rtol=1e-6)


def test_without_offsets_the_observation_space_holds_every_level():
    env = make_continual("MountainCar-v0", steps_per_level=5, offset_std=0.0)
    obs, _ = env.reset(seed=0)
    for step in range(300):
        assert env.observation_space.contains(obs), (step, env.level)
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    assert env.level >= 1


@pytest.mark.parametrize("backend", ["dummy", "subproc"])
def test_each_env_of_a_vec_env_counts_its_own_steps(backend):
    venv = make_vec_env("Continual-CartPole-v0", n_envs=2, backend=backend, seed=0, env_kwargs={"steps_per_level": 40})
    try:
        venv.reset()
        rng = np.random.default_rng(0)
        for _ in range(300):
            venv.step(rng.integers(0, 2, size=2))
        steps = venv.get_attr("level_steps")
        levels = venv.get_attr("level")
    finally:
        venv.close()
    assert steps == [300, 300]  # per env: the agent met level k after about k * n_envs * 40 total steps
    assert all(1 <= level <= 300 // 40 for level in levels)


def test_the_eval_env_follows_the_training_level_through_vec_normalize():
    train = VecNormalize(
        make_vec_env("Continual-Acrobot-v0", n_envs=2, backend="subproc", seed=0, env_kwargs={"steps_per_level": 50})
    )
    evaluation = VecNormalize(
        make_vec_env("Continual-Acrobot-v0", n_envs=1, backend="dummy", seed=99, env_kwargs={"steps_per_level": 50}),
        training=False,
    )
    try:
        train.reset()
        rng = np.random.default_rng(0)
        for _ in range(1200):  # Acrobot episodes last 500 steps at random: levels change at episode starts
            train.step(rng.integers(0, 3, size=2))
        level = sync_levels(train, evaluation)
        assert level == max(train.get_attr("level")) >= 10
        evaluation.reset()
        assert evaluation.get_attr("level") == [level]
        for _ in range(600):  # pinned: its own steps no longer move it
            evaluation.step(np.array([1]))
        assert evaluation.get_attr("level") == [level]
    finally:
        train.close()
        evaluation.close()


def test_gymnasium_make_builds_the_registered_ids():
    register_continual()
    env = gym.make("Continual-LunarLander-v0", steps_per_level=10)
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (8,) and info["continual_level"] == 0
    finally:
        env.close()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps_per_level": 0}, "steps_per_level must be a positive integer"),
        ({"schedule_seed": -1}, "schedule_seed must be a non-negative integer"),
        ({"offset_std": float("nan")}, "offset_std must be a finite number"),
        ({"permute_actions": "yes"}, "permute_actions must be true or false"),
        ({"levels": 3}, "unknown option 'levels'"),
    ],
)
def test_bad_options_fail_in_one_line(options, message):
    with pytest.raises(UsageError, match=message) as err:
        make_vec_env("Continual-CartPole-v0", n_envs=1, backend="dummy", seed=0, env_kwargs=options)
    assert "\n" not in str(err.value)


def test_continual_runs_are_scored_over_the_whole_sequence():
    evals = pd.DataFrame({"timesteps": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000], "mean_reward": range(10)})
    assert score_fraction("Continual-CartPole-v0") == 1.0 and score_fraction("CartPole-v1") == SCORE_FRACTION
    assert final_window_score(evals, 1000, score_fraction("Continual-CartPole-v0")) == pytest.approx(4.5)
    assert final_window_score(evals, 1000, score_fraction("CartPole-v1")) == pytest.approx(8.5)


def test_suite_budgets_are_whole_numbers_of_levels_of_the_presets():
    suite = load_suite("continual")
    assert suite.env_ids == continual_ids()
    for env in suite.envs:
        preset = load_preset("ppo", env.env_id)
        level_length = preset["n_envs"] * preset["env_kwargs"]["steps_per_level"]
        assert preset["n_timesteps"] == env.n_timesteps and env.n_timesteps % level_length == 0
        assert 5 <= env.n_timesteps // level_length <= 10
        assert env.reference_score > env.floor_score and "measured here, 100 episodes" in env.source
        for key in ("learning_rate", "clip_range"):  # constant: a decay to 0 would freeze the late levels
            assert not isinstance(preset.get(key, 0.0), str)


def test_a_training_run_evaluates_on_the_level_it_is_learning_and_resumes_the_schedule(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

    from rl_selfdistill.envs.continual import ContinualLevelCallback

    kwargs = {"steps_per_level": 40}
    train = make_vec_env("Continual-CartPole-v0", n_envs=2, backend="dummy", seed=0, env_kwargs=kwargs)
    evaluation = make_vec_env("Continual-CartPole-v0", n_envs=1, backend="dummy", seed=100, env_kwargs=kwargs)
    seen = []

    class Record(BaseCallback):
        def _on_step(self):
            seen.append((self.parent.eval_env.get_attr("level")[0], max(train.get_attr("level"))))
            return True

    evaluate = EvalCallback(evaluation, eval_freq=64, n_eval_episodes=1, callback_after_eval=Record(), verbose=0)
    model = PPO("MlpPolicy", train, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(1024, callback=[ContinualLevelCallback(evaluation), evaluate])
    assert len(seen) == 8 and seen[-1][1] >= 8
    # Each evaluation ran on the training level of its rollout's start: never behind by more than one switch
    assert all(0 <= train_level - eval_level <= 1 for eval_level, train_level in seen)
    assert seen[-1][0] >= 7

    model.save(tmp_path / "model.zip")
    fresh = make_vec_env("Continual-CartPole-v0", n_envs=2, backend="dummy", seed=1, env_kwargs=kwargs)
    resumed = PPO.load(tmp_path / "model.zip", env=fresh, device="cpu")
    resumed.learn(64, callback=ContinualLevelCallback(evaluation), reset_num_timesteps=False)
    assert fresh.get_attr("level_steps") == [512 + 32, 512 + 32]  # 1024 / 2 before, then 64 / 2 more
    for venv in (train, evaluation, fresh):
        venv.close()


def small_continual_request(**options):
    """PPO for 512 steps on 2 continual CartPole envs with 40 steps per level (a level change every 80 steps)."""
    from rl_selfdistill.run import TrainRequest

    return TrainRequest(
        algo="ppo",
        env_id="Continual-CartPole-v0",
        n_timesteps=512,
        seed=0,
        vec_env="dummy",
        n_envs=2,
        hyperparams={"n_steps": 32, "batch_size": 64, "n_epochs": 1, "env_kwargs": {"steps_per_level": 40}},
        wandb_mode="disabled",
        progress=False,
        verbose=0,
        **options,
    )


def test_the_train_path_keeps_the_eval_env_on_the_training_level(tmp_path):
    """run_training adds the level callback by itself: its evaluations follow the level being learnt."""
    from stable_baselines3.common.callbacks import BaseCallback

    from rl_selfdistill.run import prepare_run

    request = small_continual_request(log_folder=tmp_path, eval_freq=128, eval_episodes=1, save_freq=0)
    levels = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            if self.n_calls % 64 == 0:
                levels.append((run.eval_env.get_attr("level")[0], max(self.training_env.get_attr("level"))))
            return True

    run = prepare_run(request, callbacks=[Record()])
    with run:
        run.train()
    assert levels and levels[-1][1] >= 5
    assert all(0 <= train_level - eval_level <= 1 for eval_level, train_level in levels)


def test_a_resumed_run_starts_on_the_scheduled_level_not_on_level_0(tmp_path):
    """The resume restores each fresh env's step count before learn() resets it: the first episode after resuming
    is on the level the schedule says, as in the uninterrupted run."""
    from rl_selfdistill.run import run_training
    from rl_selfdistill.run.checkpoints import list_checkpoints, load_checkpoint
    from rl_selfdistill.run.rundir import read_config

    request = small_continual_request(run_dir=tmp_path / "run", eval_freq=0, save_freq=256)
    run_dir = run_training(request)
    (checkpoint,) = [path for path in list_checkpoints(run_dir) if path.name.endswith("256")]
    model, eval_env, _ = load_checkpoint(checkpoint, read_config(run_dir))
    env = model.get_env()
    assert env.get_attr("level_steps") == [128, 128]
    env.reset()  # what learn() does first with the fresh envs
    assert env.get_attr("level") == [3, 3]  # 128 steps per env at 40 per level
    env.close()
    eval_env.close()
