"""Everything SB3 users do with PPO and DQN keeps working with distillation on (default settings)."""

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete, SimpleMultiObsEnv
from stable_baselines3.common.vec_env import VecNormalize

from rl_selfdistill import SelfDistillDQN, SelfDistillPPO
from tests.helpers import DQN_TINY, PPO_TINY, assert_same_parameters


class CountingCallback(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.rollouts = 0

    def _on_step(self) -> bool:
        self.steps += 1
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1


@pytest.mark.parametrize("algo_class,kwargs", [(SelfDistillPPO, PPO_TINY), (SelfDistillDQN, DQN_TINY)])
def test_callbacks_evaluation_and_checkpoints(tmp_path, algo_class, kwargs):
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=99)
    counting = CountingCallback()
    eval_callback = EvalCallback(
        eval_env, eval_freq=128, n_eval_episodes=2, best_model_save_path=str(tmp_path), log_path=str(tmp_path), verbose=0
    )
    checkpoints = CheckpointCallback(save_freq=256, save_path=str(tmp_path / "ckpt"), save_replay_buffer=True)
    model = algo_class("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=128, **kwargs)
    model.learn(512, callback=[counting, eval_callback, checkpoints])
    assert counting.steps == 512 and counting.rollouts > 0
    assert (tmp_path / "best_model.zip").exists() and len(eval_callback.evaluations_timesteps) == 4
    saved = sorted((tmp_path / "ckpt").glob("*_512_steps.zip"))
    assert len(saved) == 1
    # SB3's CheckpointCallback saves the teacher with the policy. It saves inside the last step, before the final
    # update; DQN refreshes its teacher after the callbacks of a step, PPO only at the start of a rollout.
    last = algo_class.load(saved[0], device="cpu")
    assert last.num_timesteps == 512 and len(last.teacher_networks) == 1
    if algo_class is SelfDistillPPO:
        assert last.distiller.teacher.n_updates == model.distiller.teacher.n_updates == 3
        assert_same_parameters(model.teacher_networks, last.teacher_networks)
    else:
        assert last.distiller.teacher.n_updates == model.distiller.teacher.n_updates - 1 == 3
    best = algo_class.load(tmp_path / "best_model.zip")
    assert best.distiller.teacher.update_interval == 128


def test_ppo_with_vecnormalize_round_trip(tmp_path):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = SelfDistillPPO("MlpPolicy", env, seed=0, teacher_update_interval=128, **PPO_TINY).learn(512)
    assert model.distiller.teacher.n_updates == 3
    model.save(tmp_path / "agent.zip")
    env.save(str(tmp_path / "vecnormalize.pkl"))
    restored = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    np.testing.assert_array_equal(restored.obs_rms.mean, env.obs_rms.mean)
    loaded = SelfDistillPPO.load(tmp_path / "agent.zip", env=restored, device="cpu")
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.num_timesteps == 640


def test_ppo_cnn_policy_on_images():
    env = make_vec_env(lambda: FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True), n_envs=2)
    model = SelfDistillPPO(
        "CnnPolicy",
        env,
        seed=0,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        teacher_update_interval=64,
        device="cpu",
        policy_kwargs={"features_extractor_kwargs": {"features_dim": 32}},
    )
    model.learn(192)
    assert model.logger.name_to_value["distill/teacher_updates"] == 2
    assert "distill/kl" in model.logger.name_to_value
    action, _ = model.predict(env.observation_space.sample()[None], deterministic=True)
    assert env.action_space.contains(int(action[0]))


def test_dqn_cnn_policy_on_images():
    env = make_vec_env(lambda: FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True), n_envs=1)
    model = SelfDistillDQN(
        "CnnPolicy",
        env,
        seed=0,
        learning_starts=32,
        buffer_size=500,
        train_freq=4,
        teacher_update_interval=64,
        device="cpu",
        policy_kwargs={"features_extractor_kwargs": {"features_dim": 32}},
    )
    model.learn(160)
    assert model.distiller.teacher.n_updates == 2 and "distill/kl" in model.logger.name_to_value


@pytest.mark.parametrize("algo_class,kwargs", [(SelfDistillPPO, PPO_TINY), (SelfDistillDQN, DQN_TINY)])
def test_dict_observations(algo_class, kwargs):
    env = make_vec_env(lambda: SimpleMultiObsEnv(random_start=True), n_envs=1, seed=0)
    model = algo_class("MultiInputPolicy", env, seed=0, teacher_update_interval=128, **kwargs).learn(448)
    assert model.distiller.teacher.n_updates == 3 and "distill/kl" in model.logger.name_to_value
    obs = env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (1,)


@pytest.mark.parametrize("env_factory", [lambda: IdentityEnvMultiDiscrete(dim=3), lambda: IdentityEnvMultiBinary(dim=4)])
def test_ppo_multidiscrete_and_multibinary(env_factory):
    model = SelfDistillPPO(
        "MlpPolicy", make_vec_env(env_factory, n_envs=2, seed=0), seed=0, teacher_update_interval=128, **PPO_TINY
    )
    model.learn(384)
    assert model.distiller.teacher.n_updates == 2 and model.logger.name_to_value["distill/kl"] > 0


def test_ppo_target_kl_early_stopping_still_applies():
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, target_kl=1e-9, teacher_update_interval=64, **PPO_TINY)
    model.learn(256)
    # Early stopping breaks out on the first minibatch of every epoch: one n_updates per rollout.
    assert model._n_updates == 4


def test_predict_and_deterministic_actions_match_after_load(tmp_path):
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=64, **PPO_TINY).learn(256)
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillPPO.load(tmp_path / "agent.zip", device="cpu")
    observations = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        model.predict(observations, deterministic=True)[0], loaded.predict(observations, deterministic=True)[0]
    )
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
