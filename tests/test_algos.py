"""SelfDistillPPO / SelfDistillDQN: equivalence with SB3, teacher invariants, determinism, save/load."""

import pytest
import torch as th
from stable_baselines3 import DQN, PPO

from rl_selfdistill import SelfDistillDQN, SelfDistillPPO
from rl_selfdistill.errors import UsageError
from tests.helpers import DQN_TINY, PPO_TINY, assert_same_parameters


def flat_params(module: th.nn.Module) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_ppo_with_zero_coef_is_sb3_ppo_bit_for_bit(env_id):
    reference = PPO("MlpPolicy", env_id, seed=3, **PPO_TINY).learn(512)
    model = SelfDistillPPO("MlpPolicy", env_id, seed=3, distill_coef=0, teacher_update_interval=64, **PPO_TINY).learn(512)
    assert_same_parameters(reference.policy, model.policy)
    assert len(model.teacher_networks) == 0 and model.distiller.teacher.n_updates == 0


@pytest.mark.parametrize(
    "env_id,options",
    [
        ("CartPole-v1", {}),
        ("Pendulum-v1", {}),
        # The branches of PPO.train that the default settings never enter.
        ("Pendulum-v1", {"clip_range_vf": 0.1}),
        ("CartPole-v1", {"target_kl": 1e-5, "n_epochs": 4}),  # stops early in most rollouts
        ("Pendulum-v1", {"normalize_advantage": False}),
    ],
)
def test_ppo_before_first_refresh_is_sb3_ppo_bit_for_bit(env_id, options):
    """The copied train() of the distilling path, with no teacher yet, must be PPO's exactly (no extra RNG draws)."""
    kwargs = {**PPO_TINY, **options}
    reference = PPO("MlpPolicy", env_id, seed=4, **kwargs).learn(512)
    model = SelfDistillPPO("MlpPolicy", env_id, seed=4, teacher_update_interval=10**9, **kwargs).learn(512)
    assert_same_parameters(reference.policy, model.policy)
    n_updates = reference.logger.name_to_value["train/n_updates"]
    assert model.logger.name_to_value["train/n_updates"] == n_updates
    if "target_kl" in options:
        assert n_updates < 512 // kwargs["n_steps"] * kwargs["n_epochs"], "early stopping never happened"


def test_dqn_with_zero_coef_is_sb3_dqn_bit_for_bit():
    reference = DQN("MlpPolicy", "CartPole-v1", seed=5, **DQN_TINY).learn(600)
    model = SelfDistillDQN("MlpPolicy", "CartPole-v1", seed=5, distill_coef=0, teacher_update_interval=50, **DQN_TINY)
    model.learn(600)
    assert_same_parameters(reference.policy, model.policy)
    assert model.distiller.teacher.n_updates == 0


def test_dqn_before_first_refresh_is_sb3_dqn_bit_for_bit():
    reference = DQN("MlpPolicy", "CartPole-v1", seed=6, **DQN_TINY).learn(600)
    model = SelfDistillDQN("MlpPolicy", "CartPole-v1", seed=6, teacher_update_interval=10**9, **DQN_TINY).learn(600)
    assert_same_parameters(reference.policy, model.policy)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_ppo_kl_is_zero_right_after_refresh(env_id):
    """One epoch, one minibatch per rollout, refresh every rollout: the KL is measured before any step."""
    model = SelfDistillPPO(
        "MlpPolicy", env_id, seed=0, n_steps=64, batch_size=64, n_epochs=1, teacher_update_interval=64, device="cpu"
    )
    model.learn(64 * 4)
    assert model.distiller.teacher.n_updates == 3
    assert model.logger.name_to_value["distill/kl"] == 0.0
    assert model.logger.name_to_value["distill/teacher_age"] == 64


def test_ppo_kl_grows_after_the_student_moves():
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=128, **PPO_TINY)
    model.learn(64 * 3)  # refresh at step 128, then one rollout trained against the teacher
    assert model.logger.name_to_value["distill/kl"] > 0.0


def test_dqn_kl_is_zero_right_after_refresh():
    model = SelfDistillDQN(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        learning_starts=50,
        train_freq=1,
        gradient_steps=1,
        teacher_update_interval=1,
        device="cpu",
    )
    model.learn(200)
    assert model.distiller.teacher.n_updates == 200
    assert model.logger.name_to_value["distill/kl"] == 0.0


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_teacher_is_frozen_and_independent(algo):
    if algo == "ppo":
        model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=64, **PPO_TINY)
        student = model.policy
    else:
        model = SelfDistillDQN("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=100, **DQN_TINY)
        student = model.q_net
    model.learn(512)
    (teacher,) = model.teacher_networks
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    student_ptrs = {p.data_ptr() for p in student.parameters()}
    assert not student_ptrs & {p.data_ptr() for p in teacher.parameters()}
    before = flat_params(teacher).clone()
    with th.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert th.equal(flat_params(teacher), before)
    assert getattr(teacher, "optimizer", None) is None


def test_ema_teacher_is_polyak_average():
    model = SelfDistillPPO(
        "MlpPolicy", "CartPole-v1", seed=0, teacher_mode="ema", teacher_tau=0.25, teacher_update_interval=64, **PPO_TINY
    )
    model.learn(128)  # first refresh (copy) at 64
    (teacher,) = model.teacher_networks
    old_teacher = flat_params(teacher).clone()
    student = flat_params(model.policy).clone()
    model.distiller.refresh_if_due(model.policy, 192)
    th.testing.assert_close(flat_params(teacher), 0.75 * old_teacher + 0.25 * student)


def test_ensemble_keeps_last_k_snapshots_and_averages_kls():
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode="ensemble",
        teacher_ensemble_size=2,
        teacher_update_interval=64,
        **PPO_TINY,
    )
    snapshots = []
    for step in range(1, 5):
        model.learn(64, reset_num_timesteps=False)
        snapshots.append(flat_params(model.policy).clone())
        model.distiller.refresh_if_due(model.policy, model.num_timesteps)
        assert model.num_timesteps == 64 * step
    assert len(model.teacher_networks) == 2
    assert th.equal(flat_params(model.teacher_networks[0]), snapshots[-2])
    assert th.equal(flat_params(model.teacher_networks[1]), snapshots[-1])
    # Categorical parameters are normalised log-probabilities (torch's Categorical.logits), as params() returns them.
    teacher_params = th.randn(2, 10, 2).log_softmax(-1)
    student_params = th.randn(10, 2).log_softmax(-1)
    expected = (
        model.policy_kl.per_sample(teacher_params[0], student_params).mean()
        + model.policy_kl.per_sample(teacher_params[1], student_params).mean()
    ) / 2
    th.testing.assert_close(model.policy_kl.mean_over_teachers(teacher_params, student_params), expected)


def test_dqn_target_network_teacher():
    model = SelfDistillDQN("MlpPolicy", "CartPole-v1", seed=0, teacher_mode="target", **DQN_TINY)
    model.learn(648)  # the last target update (refresh) is at step 600; the student trains on after it
    assert len(model.teacher_networks) == 0  # no extra copy
    assert model.distiller.teacher.n_updates == 600 // 100
    assert model.logger.name_to_value["distill/kl"] > 0.0


def test_adaptive_coefficient_updates_once_per_rollout():
    model = SelfDistillPPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_update_interval=64,
        distill_coef=1.0,
        distill_target_kl=1e-9,
        distill_coef_bounds=(1e-3, 100.0),
        **PPO_TINY,
    )
    model.learn(64 * 5)
    # Refreshes from step 64 on; 4 rollouts trained with a teacher, each KL far above the target: 1 -> 16.
    assert model.distiller.coefficient.value(0.5) == 16.0


@pytest.mark.parametrize("algo_class,kwargs", [(SelfDistillPPO, PPO_TINY), (SelfDistillDQN, DQN_TINY)])
def test_same_seed_twice_is_deterministic(algo_class, kwargs):
    runs = [
        algo_class("MlpPolicy", "CartPole-v1", seed=11, teacher_update_interval=128, **kwargs).learn(768) for _ in range(2)
    ]
    assert runs[0].distiller.teacher.n_updates > 0
    assert_same_parameters(runs[0].policy, runs[1].policy)
    assert_same_parameters(runs[0].teacher_networks, runs[1].teacher_networks)


def test_lin_schedule_coefficient_follows_progress():
    model = SelfDistillPPO("MlpPolicy", "CartPole-v1", seed=0, distill_coef="lin_0.8", teacher_update_interval=64, **PPO_TINY)
    model.learn(256)
    # Last train() ran at progress_remaining = 1 - 256/256 = 0.
    assert model.logger.name_to_value["distill/coef"] == pytest.approx(0.0)
    assert model.distiller.coefficient.value(0.5) == pytest.approx(0.4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"distill_coef": -0.1}, "'distill_coef': got -0.1, expected a number >= 0"),
        ({"distill_coef": "exp_3"}, "'distill_coef': got 'exp_3'"),
        ({"distill_coef": lambda progress: progress - 0.5}, "distill_coef must be >= 0"),
        ({"distill_coef_bounds": (0.0, 1.0)}, "0 < low <= high"),
        ({"teacher_update_interval": 0}, "teacher_update_interval"),
        ({"teacher_mode": "target"}, "teacher_mode"),
        ({"teacher_tau": 1.5}, "teacher_tau"),
        ({"kl_direction": "both"}, "kl_direction"),
        ({"distill_temperature": 0}, "distill_temperature"),
        ({"distill_target_kl": 0.01, "distill_coef": "lin_0.5"}, "constant"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    env = kwargs.pop("env", "CartPole-v1")
    with pytest.raises(UsageError, match=match):
        SelfDistillPPO("MlpPolicy", env, **kwargs, **PPO_TINY)


def count_distilled_and_taken_steps(model) -> tuple[list[int], list[int]]:
    """Per update phase: the gradient steps the distill/* records hold, and the optimizer steps taken."""
    recorded, taken = [], []
    step, end_phase = model.policy.optimizer.step, model.distiller.end_phase

    def counting_step(*args, **kwargs):
        taken[-1] += 1
        return step(*args, **kwargs)

    def recording_end_phase(logger, phase, *args):
        recorded.append(len(phase.kls))
        taken.append(0)
        end_phase(logger, phase, *args)

    taken.append(0)
    model.policy.optimizer.step = counting_step
    model.distiller.end_phase = recording_end_phase
    return recorded, taken


def test_a_minibatch_stopped_by_target_kl_adds_nothing_to_the_distillation_records():
    model = SelfDistillPPO(
        "MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=64, target_kl=1e-5, **{**PPO_TINY, "batch_size": 16}
    )
    recorded, taken = count_distilled_and_taken_steps(model)
    model.learn(64 * 4)
    with_teacher = [(kls, steps) for kls, steps in zip(recorded, taken[:-1]) if kls]
    assert len(with_teacher) == 3 and any(steps < 8 for _, steps in with_teacher)  # the early stop happened
    assert all(kls == steps for kls, steps in with_teacher)
