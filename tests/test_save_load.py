"""Save / load / continue: teachers, counters and coefficient state survive a round trip."""

import pytest
import torch as th

from rl_selfdistill import SelfDistillDQN, SelfDistillPPO
from tests.helpers import DQN_TINY, PPO_TINY, assert_same_parameters


@pytest.mark.parametrize("teacher_mode", ["snapshot", "ema", "ensemble"])
def test_ppo_round_trip_restores_teachers_and_state(tmp_path, teacher_mode):
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode=teacher_mode,
        teacher_update_interval=64,
        distill_coef=0.5,
        distill_target_kl=1e-6,
        **PPO_TINY,
    )
    model.learn(64 * 5)
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillPPO.load(tmp_path / "agent.zip", device="cpu")
    assert len(loaded.teacher_networks) == len(model.teacher_networks) == (3 if teacher_mode == "ensemble" else 1)
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    assert all(not p.requires_grad for p in loaded.teacher_networks.parameters())
    for name in ("n_updates", "last_update_step", "_last_interval_index", "mode", "tau", "capacity", "ticks"):
        assert getattr(loaded.distiller.teacher, name) == getattr(model.distiller.teacher, name), name
    assert loaded.distiller.coefficient.adaptive_value == model.distiller.coefficient.adaptive_value != 0.5


def test_dqn_round_trip_with_and_without_replay_buffer(tmp_path):
    model = SelfDistillDQN(
        "MlpPolicy", "CartPole-v1", seed=0, teacher_mode="ensemble", teacher_update_interval=100, **DQN_TINY
    )
    model.learn(500)
    model.save(tmp_path / "agent.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = SelfDistillDQN.load(tmp_path / "agent.zip", device="cpu")
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert loaded.distiller.teacher.n_updates == model.distiller.teacher.n_updates == 5
    assert loaded.replay_buffer is None or loaded.replay_buffer.size() == 0
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    assert loaded.replay_buffer.size() == model.replay_buffer.size()
    assert th.equal(th.as_tensor(loaded.replay_buffer.observations), th.as_tensor(model.replay_buffer.observations))


def test_load_with_custom_objects(tmp_path):
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=64, **PPO_TINY).learn(128)
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillPPO.load(tmp_path / "agent.zip", custom_objects={"learning_rate": 1e-5, "n_epochs": 1}, device="cpu")
    assert loaded.n_epochs == 1 and loaded.learning_rate == 1e-5
    loaded.set_env(model.get_env())
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.num_timesteps == 256


@pytest.mark.parametrize("algo_class,tiny", [(SelfDistillPPO, PPO_TINY), (SelfDistillDQN, DQN_TINY)])
def test_continue_after_load_keeps_cadence_and_schedule(tmp_path, algo_class, tiny):
    kwargs = {"teacher_update_interval": 192, "distill_coef": "lin_0.6", **tiny}
    budget, split = 1024, 512
    straight = algo_class("MlpPolicy", "CartPole-v1", seed=1, **kwargs).learn(budget)
    interrupted = algo_class("MlpPolicy", "CartPole-v1", seed=1, **kwargs).learn(split)
    interrupted.save(tmp_path / "agent.zip")
    resumed = algo_class.load(tmp_path / "agent.zip", env=interrupted.get_env(), device="cpu")
    resumed.learn(budget - split, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps == budget
    straight_teacher, resumed_teacher = straight.distiller.teacher, resumed.distiller.teacher
    assert resumed_teacher.n_updates == straight_teacher.n_updates == budget // 192
    assert resumed_teacher.last_update_step == straight_teacher.last_update_step
    assert resumed._current_progress_remaining == straight._current_progress_remaining
    assert resumed.logger.name_to_value["distill/coef"] == pytest.approx(straight.logger.name_to_value["distill/coef"])
