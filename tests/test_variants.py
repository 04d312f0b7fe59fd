"""The self-distillation variants: lagged and per-step EMA teachers, relative weight, gate, separate batch,
mean-only Gaussian targets, reset-and-distill, teachers under VecNormalize, diagnostics, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch as th
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize

from rl_selfdistill import SelfDistillDQN, SelfDistillPPO
from rl_selfdistill.errors import UsageError
from tests.helpers import DQN_TINY, PPO_TINY, StudentHistory, assert_same_parameters, flat

NEW_OPTIONS = [
    {"teacher_mode": "lagged", "teacher_update_unit": "gradient_steps", "teacher_update_interval": 2},
    {"teacher_mode": "ema", "teacher_update_unit": "gradient_steps", "teacher_update_interval": 1, "teacher_tau": 0.1},
    {"teacher_mode": "snapshot", "teacher_update_unit": "phases", "teacher_update_interval": 1},
    {"distill_coef_mode": "relative", "distill_warmup": 3, "distill_lr_scaled": True},
    {"distill_gate": True, "distill_separate_batch": True, "distill_value_coef": 0.5},
    {"teacher_mode": "reset", "teacher_update_interval": 128, "reset_parts": "heads", "reset_anneal_steps": 64},
]


@pytest.mark.parametrize("options", NEW_OPTIONS)
def test_every_option_at_weight_zero_is_sb3_ppo_bit_for_bit(options):
    reference = PPO("MlpPolicy", "Pendulum-v1", seed=2, **PPO_TINY).learn(384)
    model = SelfDistillPPO("MlpPolicy", "Pendulum-v1", seed=2, distill_coef=0, **options, **PPO_TINY).learn(384)
    assert_same_parameters(reference.policy, model.policy)
    assert model.distiller.teacher.n_members == 0


@pytest.mark.parametrize("options", NEW_OPTIONS)
def test_every_option_at_weight_zero_is_sb3_dqn_bit_for_bit(options):
    reference = DQN("MlpPolicy", "CartPole-v1", seed=2, **DQN_TINY).learn(500)
    model = SelfDistillDQN("MlpPolicy", "CartPole-v1", seed=2, distill_coef=0, **options, **DQN_TINY).learn(500)
    assert_same_parameters(reference.policy, model.policy)


@pytest.mark.parametrize("options", NEW_OPTIONS)
def test_every_option_trains_and_logs_a_distillation_term(options):
    options = {"teacher_update_interval": 128, **options}
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, distill_coef=0.5, **options, **PPO_TINY)
    model.learn(512)
    logged = model.logger.name_to_value
    assert model.distiller.teacher.is_ready
    assert "distill/coef" in logged and np.isfinite(logged["distill/kl"]) and logged["distill/kl"] >= 0


@pytest.mark.parametrize("lag", [1, 3])
def test_lagged_teacher_is_the_student_k_gradient_steps_ago_ppo(lag):
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode="lagged",
        teacher_update_unit="gradient_steps",
        teacher_update_interval=lag,
        **PPO_TINY,
    )
    history = StudentHistory(model, model.policy)
    model.learn(192)
    # The teacher of the next step is the student as it was `lag` optimizer steps before now.
    after_last_step = flat(model.policy)
    states = [*history.states, after_last_step]
    assert len(states) > lag + 1
    assert th.equal(flat(model.distiller.teacher.active_members()[0][0]), states[-1 - lag])


def test_lagged_teacher_in_phases_is_the_policy_k_rollouts_ago_dqn():
    model = SelfDistillDQN(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode="lagged",
        teacher_update_unit="phases",
        teacher_update_interval=2,
        **DQN_TINY,
    )
    snapshots: list[th.Tensor] = []
    original_train = model.train

    def train(gradient_steps: int, batch_size: int = 100) -> None:
        snapshots.append(flat(model.q_net))  # the student at the start of this phase
        original_train(gradient_steps, batch_size)

    model.train = train
    model.learn(400)
    assert len(snapshots) > 3
    # At the start of the last phase the ring took the student then; its oldest member is 2 phases older.
    assert th.equal(flat(model.distiller.teacher.active_members()[0][0]), snapshots[-3])


def test_ema_teacher_per_gradient_step_follows_polyak_step_by_step():
    tau = 0.2
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode="ema",
        teacher_update_unit="gradient_steps",
        teacher_update_interval=1,
        teacher_tau=tau,
        **PPO_TINY,
    )
    history = StudentHistory(model, model.policy)
    model.learn(128)
    # Ticks happen after each optimizer step: the student after step i is history[i + 1] (or the final state).
    after_steps = [*history.states[1:], flat(model.policy)]
    expected = after_steps[0].clone()  # the first tick copies the student
    for state in after_steps[1:]:
        expected = (1 - tau) * expected + tau * state
    assert th.allclose(flat(model.teacher_networks[0]), expected, atol=1e-6)


def test_relative_weight_is_c_times_the_ratio_of_the_logged_running_means():
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        distill_coef=0.1,
        distill_coef_mode="relative",
        teacher_update_interval=64,
        **PPO_TINY,
    )
    logged_means = []
    original_end = model.distiller.end_phase

    def end_phase(logger, phase, *args):
        original_end(logger, phase, *args)
        values = logger.name_to_value
        if "distill/rl_loss_running" in values:
            logged_means.append((phase.coef, values["distill/rl_loss_running"], values["distill/distill_loss_running"]))

    model.distiller.end_phase = end_phase
    model.learn(64 * 6)
    assert len(logged_means) >= 3
    assert logged_means[0][0] == 0.0  # no running means yet: the relative weight has not started
    for (_, rl_mean, distill_mean), (next_coef, _, _) in zip(logged_means, logged_means[1:]):
        assert next_coef == pytest.approx(0.1 * rl_mean / distill_mean, rel=1e-6)


def test_relative_weight_waits_for_the_warmup():
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        distill_coef_mode="relative",
        distill_warmup=10**6,
        teacher_update_interval=64,
        **PPO_TINY,
    ).learn(64 * 4)
    assert model.logger.name_to_value["distill/coef"] == 0.0 and model.logger.name_to_value["distill/kl"] > 0


@pytest.mark.parametrize("target", ["mean_mse", "mean_kl"])
def test_mean_only_targets_give_the_std_no_gradient(target):
    model = SelfDistillPPO("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=64, distill_gaussian=target, **PPO_TINY)
    model.learn(128)
    model.policy.log_std.data += 0.3  # student std differs from the teacher's
    obs = th.as_tensor(np.random.default_rng(0).normal(size=(32, 3)), dtype=th.float32)
    teacher = model.distiller.teacher.active_members()[0][0]
    teacher_params = model.policy_kl.params(teacher, teacher.get_distribution(obs))
    student_params = model.policy_kl.params(model.policy, model.policy.get_distribution(obs))
    model.policy.zero_grad()
    model.policy_kl.mean_over_teachers(teacher_params[None], student_params).backward()
    assert model.policy.log_std.grad is None or th.count_nonzero(model.policy.log_std.grad) == 0
    assert th.count_nonzero(model.policy.action_net.weight.grad) > 0


def test_full_gaussian_kl_does_move_the_std():
    model = SelfDistillPPO("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=64, **PPO_TINY).learn(128)
    model.policy.log_std.data += 0.3
    obs = th.zeros(4, 3)
    teacher = model.distiller.teacher.active_members()[0][0]
    teacher_params = model.policy_kl.params(teacher, teacher.get_distribution(obs))
    student_params = model.policy_kl.params(model.policy, model.policy.get_distribution(obs))
    model.policy_kl.mean_over_teachers(teacher_params[None], student_params).backward()
    assert th.count_nonzero(model.policy.log_std.grad) > 0


@pytest.mark.parametrize("algo,network", [(SelfDistillPPO, "policy"), (SelfDistillDQN, "q_net")])
def test_reset_reinitialises_the_student_keeps_the_teacher_and_anneals_the_weight(algo, network):
    tiny = PPO_TINY if algo is SelfDistillPPO else DQN_TINY
    model = algo(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode="reset",
        teacher_update_interval=256,
        reset_anneal_steps=256,
        distill_coef=1.0,
        **tiny,
    )
    # Up to the first reset, not past it (DQN trains after every 4 steps, PPO after each 64-step rollout).
    model.learn(252 if algo is SelfDistillDQN else 256)
    before = flat(getattr(model, network))
    optimizer_before = model.policy.optimizer
    model.learn(64, reset_num_timesteps=False)
    teacher = model.distiller.teacher.active_members()[0][0]
    assert model.distiller.teacher.n_updates == 1 and model.distiller.teacher.last_update_step == 256
    assert th.equal(flat(teacher), before), "the teacher is the network from just before the reset"
    assert not th.equal(flat(getattr(model, network))[: before.numel()], before)
    assert model.policy.optimizer is not optimizer_before
    # Adam's step counts start again: only the steps taken since the reset.
    steps = [state["step"] for state in model.policy.optimizer.state.values()]
    assert steps and max(float(step) for step in steps) <= 64 * 10
    anneal = model.distiller.reset_anneal_factor
    assert anneal(256) == 1.0 and anneal(256 + 128) == pytest.approx(0.5) and anneal(256 + 512) == 0.0


def test_reset_heads_keeps_the_trunk():
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode="reset",
        reset_parts="heads",
        teacher_update_interval=128,
        **PPO_TINY,
    )
    model.learn(128)
    trunk_before = flat(model.policy.mlp_extractor)
    head_before = flat(model.policy.action_net)
    model._teacher_tick_between_phases()  # the reset due at step 128
    assert th.equal(flat(model.policy.mlp_extractor), trunk_before)
    assert not th.equal(flat(model.policy.action_net), head_before)


def test_gate_factor():
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, distill_gate=True, **PPO_TINY)
    distiller = model.distiller
    distiller.teacher_return = 200.0
    assert distiller.gate_factor(50.0) == pytest.approx(0.75) and distiller.gate_factor(250.0) == 0.0
    distiller.teacher_return = -200.0  # negative returns (Pendulum): worse student -> positive weight
    assert distiller.gate_factor(-300.0) == pytest.approx(0.5) and distiller.gate_factor(-150.0) == 0.0
    assert distiller.gate_factor(None) == 1.0


def test_teacher_under_vecnormalize_sees_its_own_statistics():
    """A snapshot taken under statistics that keep changing reproduces the frozen policy's outputs exactly."""
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), gamma=0.99)
    model = SelfDistillPPO("MlpPolicy", env, seed=0, teacher_update_interval=128, **PPO_TINY)
    model.learn(128)  # the teacher is taken at the start of the rollout after step 128
    model.learn(64, reset_num_timesteps=False)
    teacher, stats = model.distiller.teacher.active_members()[0]
    frozen = SelfDistillPPO("MlpPolicy", env, seed=0, **PPO_TINY)
    frozen.policy.load_state_dict(teacher.state_dict())
    buffer = model.rollout_buffer
    raw = buffer.flat_raw_observations()
    assert raw is not None and not np.allclose(stats.mean, env.obs_rms.mean), "statistics moved since the snapshot"
    expected_obs = th.as_tensor(env._normalize_obs(raw, stats), dtype=th.float32)
    expected = frozen.policy.get_distribution(expected_obs).distribution.mean
    params, _ = model._teacher_outputs_for_rollout(buffer)
    assert th.equal(params[0, :, :1], expected.detach())
    # The buffer keeps both forms, row for row: normalised (what the student saw) and raw.
    observations = model._flat_rollout_observations(buffer)
    assert raw.shape == observations.shape and not np.allclose(raw, observations)
    # Pendulum's raw observations are cos, sin and angular velocity: the first two lie in [-1, 1].
    assert np.all(np.abs(raw[:, :2]) <= 1.0 + 1e-6)


def test_set_env_takes_the_raw_observations_from_the_new_env():
    """After set_env, the raw observations the teacher re-normalises come from the new env's VecNormalize, and from
    none when the new env has no VecNormalize (the teacher then sees the buffer's observations, as documented)."""
    first = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = SelfDistillPPO("MlpPolicy", first, seed=0, teacher_update_interval=64, **PPO_TINY).learn(128)
    second = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=1))
    second.obs_rms = first.obs_rms.copy()
    second.training = False  # frozen statistics: normalising the raw rows must give the buffer's rows exactly
    model.set_env(second)
    model.learn(64)
    raw = model.rollout_buffer.flat_raw_observations()
    observations = model._flat_rollout_observations(model.rollout_buffer)
    np.testing.assert_allclose(second._normalize_obs(raw, second.obs_rms), observations, atol=1e-6)
    assert len(np.unique(raw, axis=0)) == len(raw)  # one row per step, not the old env's last observation repeated
    model.set_env(make_vec_env("Pendulum-v1", n_envs=2, seed=2))
    model.learn(64)
    assert model.rollout_buffer.flat_raw_observations() is None


def logged_rows(model, tmp_path, steps: int) -> pd.DataFrame:
    """Train with a CSV logger and read back what each log line held."""
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(steps)
    return pd.read_csv(tmp_path / "progress.csv")


def test_diagnostics_are_logged_once_per_log_line(tmp_path):
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=64, **PPO_TINY)
    rows = logged_rows(model, tmp_path / "ppo", 64 * 40)
    for key in ("distill/churn", "distill/student_entropy", "distill/teacher_entropy", "distill/loss_ratio"):
        assert rows[key].notna().any(), key
    assert rows["distill/churn"].dropna().between(0.0, 1.0).all()
    # Measured at most every DIAGNOSTICS_EVERY_STEPS env steps (here 2560 steps: twice), the loss keys every line.
    assert rows["distill/student_entropy"].notna().sum() == 2 and rows["distill/loss_ratio"].notna().sum() > 30
    gaussian = SelfDistillPPO("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=64, **PPO_TINY)
    rows = logged_rows(gaussian, tmp_path / "pendulum", 64 * 4)
    assert (rows["distill/student_std"].dropna() > 0).all() and rows["distill/teacher_std"].notna().any()
    dqn = SelfDistillDQN("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=150, **DQN_TINY)
    rows = logged_rows(dqn, tmp_path / "dqn", 1000)
    assert rows["distill/teacher_entropy"].notna().sum() == 1 and rows["distill/student_entropy"].notna().sum() == 1


@pytest.mark.parametrize(
    "options",
    [
        {"teacher_mode": "lagged", "teacher_update_unit": "gradient_steps", "teacher_update_interval": 3},
        {"distill_coef_mode": "relative", "distill_gate": True},
    ],
)
def test_save_load_restores_the_variant_state(tmp_path, options):
    kwargs = {**PPO_TINY, "teacher_update_interval": 64, **options}
    first = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=5, **kwargs)
    first.learn(64 * 3)
    first.save(tmp_path / "agent.zip")
    loaded = SelfDistillPPO.load(tmp_path / "agent.zip", env=first.get_env(), device="cpu")
    assert_same_parameters(first.teacher_networks, loaded.teacher_networks)
    assert loaded.distiller.teacher.ticks == first.distiller.teacher.ticks
    assert list(loaded.distiller.rl_loss_window) == list(first.distiller.rl_loss_window)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"teacher_mode": "reset", "teacher_update_unit": "phases"}, "counts env steps"),
        ({"distill_coef_mode": "relative", "distill_target_kl": 0.01}, "distill_target_kl"),
        ({"distill_gaussian": "median"}, "distill_gaussian"),
        ({"reset_parts": "legs"}, "reset_parts"),
        ({"teacher_update_unit": "epochs"}, "teacher_update_unit"),
        ({"teacher_mode": "lagged"}, "lags by gradient steps or phases"),
        ({"teacher_mode": "lagged", "teacher_update_unit": "phases", "teacher_update_interval": 5000}, "copies"),
    ],
)
def test_bad_variant_options_fail_at_construction(options, match):
    with pytest.raises(UsageError, match=match):
        SelfDistillPPO("MlpPolicy", "CartPole-v1", **options, **PPO_TINY)


def test_teacher_statistics_survive_save_and_load(tmp_path):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), gamma=0.99)
    model = SelfDistillPPO("MlpPolicy", env, seed=0, teacher_mode="ensemble", teacher_update_interval=128, **PPO_TINY)
    model.learn(384)
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillPPO.load(tmp_path / "agent.zip", env=env, device="cpu")
    saved_stats = [stats for _, stats in model.distiller.teacher.active_members()]
    loaded_stats = [stats for _, stats in loaded.distiller.teacher.active_members()]
    assert len(saved_stats) == len(loaded_stats) == 2
    for saved, restored in zip(saved_stats, loaded_stats):
        np.testing.assert_array_equal(saved.mean, restored.mean)
        np.testing.assert_array_equal(saved.var, restored.var)
    # Each snapshot kept the statistics of its own time: the two members differ.
    assert not np.array_equal(saved_stats[0].mean, saved_stats[1].mean)
