"""SelfDistillSAC and SelfDistillTD3: equivalence with SB3, the squashed-Gaussian and deterministic KLs, teacher
invariants, critic distillation, save/load/resume, presets, the CLI, and (slow) learning on Pendulum-v1."""

from __future__ import annotations

import copy
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from rl_selfdistill.algos import registry
from rl_selfdistill.algos.sac import SelfDistillSAC
from rl_selfdistill.algos.td3 import SelfDistillTD3
from rl_selfdistill.cli import main
from rl_selfdistill.config import resolve_hyperparams
from rl_selfdistill.config.policy import action_noise, model_kwargs
from rl_selfdistill.distill.kl import deterministic_kl, gaussian_kl
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run import TrainRequest, resume_training, run_training
from tests.helpers import assert_same_parameters, flat, interrupted_copy


def tiny() -> dict:
    """Fresh each call: SB3 adds keys to the policy_kwargs dict it is given."""
    return {
        "learning_starts": 32,
        "buffer_size": 1_000,
        "batch_size": 16,
        "device": "cpu",
        "policy_kwargs": {"net_arch": [32, 32]},
    }


PAIRS = [(SelfDistillSAC, SAC), (SelfDistillTD3, TD3)]
IDS = ["sac", "td3"]


def assert_same_model(reference, model) -> None:
    assert_same_parameters(reference.policy, model.policy)
    if isinstance(reference, SAC) and reference.log_ent_coef is not None:
        assert th.equal(reference.log_ent_coef, model.log_ent_coef)  # ent_coef="auto" took the same steps


# ----------------------------------------------------------------------------- the KLs


def test_squashed_gaussian_kl_is_the_pre_squash_gaussian_kl_monte_carlo():
    """KL(p_Y || q_Y) of Y = tanh(U), estimated from samples with the change-of-variables densities, matches the
    closed-form KL of the Gaussians of U. Tolerance: 5 standard errors of the estimate (200k samples, float64)."""
    generator = th.Generator().manual_seed(0)
    mean_p, log_std_p = th.tensor([0.3, -1.2, 0.0]), th.tensor([-0.5, 0.2, -1.0])
    mean_q, log_std_q = th.tensor([0.1, -0.7, 0.4]), th.tensor([-0.2, 0.0, -0.6])
    closed = gaussian_kl(mean_p[None], log_std_p[None], mean_q[None], log_std_q[None]).double().item()

    def squashed_log_density(y: th.Tensor, mean: th.Tensor, log_std: th.Tensor) -> th.Tensor:
        pre_squash = th.atanh(y)  # the inverse of the bijection, recomputed from the squashed sample
        normal = th.distributions.Normal(mean.double(), log_std.double().exp())
        return (normal.log_prob(pre_squash) - th.log1p(-y.pow(2))).sum(dim=-1)  # log|d tanh^-1 / dy| = -log(1 - y^2)

    samples = mean_p.double() + log_std_p.double().exp() * th.randn(200_000, 3, generator=generator, dtype=th.float64)
    y = th.tanh(samples)
    log_ratio = squashed_log_density(y, mean_p, log_std_p) - squashed_log_density(y, mean_q, log_std_q)
    estimate, standard_error = log_ratio.mean().item(), (log_ratio.std() / math.sqrt(len(log_ratio))).item()
    assert standard_error < 0.01
    assert abs(estimate - closed) < 5 * standard_error


def test_sac_policy_term_is_the_closed_form_gaussian_kl_of_the_actors():
    model = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=0, **tiny())
    other = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=1, **tiny())
    obs = th.randn(16, 3)
    with th.no_grad():
        teacher, student = model._policy_outputs(other.actor, obs), model._policy_outputs(model.actor, obs)
        mean_t, log_std_t, _ = other.actor.get_action_dist_params(obs)
        mean_s, log_std_s, _ = model.actor.get_action_dist_params(obs)
    reference = th.distributions.kl_divergence(
        th.distributions.Independent(th.distributions.Normal(mean_t, log_std_t.exp()), 1),
        th.distributions.Independent(th.distributions.Normal(mean_s, log_std_s.exp()), 1),
    ).mean()
    th.testing.assert_close(model._policy_divergence(teacher, student), reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_deterministic_kl_is_the_gaussian_kl_with_variance_half_the_temperature(temperature):
    a, b = th.randn(8, 2), th.randn(8, 2)
    log_std = th.full_like(a, 0.5 * math.log(temperature / 2))
    expected = gaussian_kl(a, log_std, b, log_std)
    th.testing.assert_close(deterministic_kl(a, b, temperature), expected, atol=1e-6, rtol=1e-6)
    th.testing.assert_close(deterministic_kl(b, a, temperature), expected, atol=1e-6, rtol=1e-6)  # symmetric


# ----------------------------------------------------------------------------- equivalence with SB3


@pytest.mark.parametrize("algo_class,parent", PAIRS, ids=IDS)
def test_zero_coef_is_the_sb3_parent_bit_for_bit(algo_class, parent):
    reference = parent("MlpPolicy", "Pendulum-v1", seed=3, **tiny()).learn(100)
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=3, distill_coef=0, teacher_update_interval=16, **tiny())
    model.learn(100)
    assert_same_model(reference, model)
    assert len(model.teacher_networks) == 0 and model.distiller.teacher.n_updates == 0


@pytest.mark.parametrize(
    "algo_class,parent,options",
    [
        (SelfDistillSAC, SAC, {}),  # ent_coef="auto"
        (SelfDistillSAC, SAC, {"ent_coef": 0.1, "target_update_interval": 2, "gradient_steps": 2}),
        (SelfDistillTD3, TD3, {}),
        (SelfDistillTD3, TD3, {"policy_delay": 3, "gradient_steps": 2}),
    ],
    ids=["sac-auto", "sac-fixed", "td3", "td3-delay3"],
)
def test_before_the_first_refresh_the_copied_train_is_the_parents(algo_class, parent, options):
    """The copied train() of the distilling path, with no teacher yet, must be the parent's exactly."""
    reference = parent("MlpPolicy", "Pendulum-v1", seed=4, **tiny(), **options).learn(100)
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=4, teacher_update_interval=10**9, **tiny(), **options).learn(100)
    assert_same_model(reference, model)
    for key in ("train/n_updates", "train/critic_loss", "train/actor_loss"):
        assert model.logger.name_to_value[key] == reference.logger.name_to_value[key], key


# ----------------------------------------------------------------------------- teacher invariants


@pytest.mark.parametrize("algo_class", [SelfDistillSAC, SelfDistillTD3], ids=IDS)
def test_kl_is_zero_right_after_a_hard_snapshot(algo_class):
    """A refresh after every env step, one gradient step per env step: each KL is measured against a fresh copy
    (the critic step before it leaves the actor unchanged)."""
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=1, **tiny()).learn(64)
    assert model.distiller.teacher.n_updates == 64
    assert model.logger.name_to_value["distill/kl"] == 0.0


@pytest.mark.parametrize("algo_class", [SelfDistillSAC, SelfDistillTD3], ids=IDS)
def test_kl_is_positive_once_the_teacher_moved_and_the_teacher_gets_no_gradient(algo_class):
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=50, **tiny()).learn(90)
    logged = model.logger.name_to_value
    assert model.distiller.teacher.n_updates == 1 and logged["distill/kl"] > 0
    assert logged["distill/loss"] == pytest.approx(0.5 * logged["distill/kl"])
    (teacher,) = model.teacher_networks
    assert teacher.critic is None  # no critic distillation: the actor alone is copied
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert getattr(teacher.actor, "optimizer", None) is None
    assert not {p.data_ptr() for p in model.actor.parameters()} & {p.data_ptr() for p in teacher.parameters()}
    before = flat(teacher)
    with th.no_grad():
        for p in model.actor.parameters():
            p.add_(1.0)
    assert th.equal(flat(teacher), before)


@pytest.mark.parametrize("algo_class", [SelfDistillSAC, SelfDistillTD3], ids=IDS)
def test_critic_distillation_regresses_to_the_teacher_critic(algo_class):
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=50, distill_value_coef=0.5, **tiny()).learn(
        90
    )
    logged = model.logger.name_to_value
    assert logged["distill/value_loss"] > 0 and logged["distill/kl"] > 0
    (teacher,) = model.teacher_networks
    assert teacher.critic is not None and getattr(teacher.critic, "optimizer", None) is None
    # The term's gradient reaches the student critic only.
    obs, actions = th.randn(8, 3), th.rand(8, 1) * 2 - 1
    model.critic.zero_grad()
    model._critic_distill_term([(teacher, None)], obs, actions, None).backward()
    assert all(p.grad is not None for p in model.critic.parameters()) and all(p.grad is None for p in teacher.parameters())


def test_ent_coef_auto_keeps_tuning_with_distillation():
    model = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=40, **tiny())
    start = model.log_ent_coef.item()
    model.learn(150)
    assert model.distiller.teacher.n_updates >= 3 and model.logger.name_to_value["distill/kl"] > 0
    assert model.log_ent_coef.item() < start and "train/ent_coef_loss" in model.logger.name_to_value


def test_td3_target_actor_as_teacher():
    model = SelfDistillTD3("MlpPolicy", "Pendulum-v1", seed=0, teacher_mode="target", **tiny()).learn(132)
    # 100 gradient steps, an actor and target update every second one; the teacher is TD3's own target actor.
    assert len(model.teacher_networks) == 0 and model.distiller.teacher.n_updates == 50
    (parts, _), *_ = model._teachers()
    assert parts.actor is model.actor_target
    assert model.logger.name_to_value["distill/kl"] > 0


def lagged_sac(lag: int) -> SelfDistillSAC:
    """SD-SAC whose teacher is the actor `lag` gradient steps ago (one gradient step per env step)."""
    return SelfDistillSAC(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        teacher_mode="lagged",
        teacher_update_unit="gradient_steps",
        teacher_update_interval=lag,
        **tiny(),
    )


def test_sac_lagged_teacher_is_the_actor_k_gradient_steps_ago():
    model = lagged_sac(2)
    states = []
    step = model.actor.optimizer.step

    def recording_step(*args, **kwargs):
        result = step(*args, **kwargs)
        states.append(flat(model.actor))
        return result

    model.actor.optimizer.step = recording_step
    model.learn(48)
    assert len(states) == 16
    assert th.equal(flat(model.distiller.teacher.active_members()[0][0].actor), states[-3])


@pytest.mark.parametrize(
    "algo_class,options,match",
    [
        (SelfDistillSAC, {"teacher_mode": "target"}, "teacher_mode 'target' is not available for SelfDistillSAC"),
        (SelfDistillSAC, {"teacher_mode": "reset"}, "teacher_mode 'reset' is not available"),
        (SelfDistillTD3, {"teacher_mode": "reset"}, "teacher_mode 'reset' is not available for SelfDistillTD3"),
        (SelfDistillTD3, {"distill_gaussian": "mean_mse"}, "distill_gaussian 'mean_mse' is not available for SelfDistillTD3"),
    ],
)
def test_options_that_cannot_apply_are_refused(algo_class, options, match):
    with pytest.raises(UsageError, match=match):
        algo_class("MlpPolicy", "Pendulum-v1", **options, **tiny())


@pytest.mark.parametrize(
    "algo,override,match",
    [("sd_sac", {"teacher_mode": "reset"}, "teacher_mode"), ("sd_td3", {"distill_gaussian": "mean_kl"}, "distill_gaussian")],
)
def test_presets_refuse_what_the_class_refuses(algo, override, match):
    with pytest.raises(UsageError, match=match):
        resolve_hyperparams(algo, "Pendulum-v1", override)


def test_teacher_under_vecnormalize_sees_its_own_statistics():
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0))
    model = SelfDistillSAC("MlpPolicy", env, seed=0, teacher_update_interval=50, **tiny()).learn(80)
    ((teacher, stats),) = model.distiller.teacher.active_members()
    assert stats is not None and stats.count < env.obs_rms.count
    raw = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    current = th.as_tensor(env.normalize_obs(raw))
    expected = th.as_tensor(env._normalize_obs(raw, stats), dtype=th.float32)
    th.testing.assert_close(model._teacher_observations(current, stats), expected, atol=1e-5, rtol=1e-5)


class DictPendulum(gym.ObservationWrapper):
    """Pendulum with a dict observation: the state under "state", a constant under "bias" (left unnormalised)."""

    def __init__(self) -> None:
        super().__init__(gym.make("Pendulum-v1"))
        self.observation_space = gym.spaces.Dict(
            {"state": self.env.observation_space, "bias": gym.spaces.Box(-1.0, 1.0, (1,), np.float32)}
        )

    def observation(self, observation: np.ndarray) -> dict:
        return {"state": observation, "bias": np.ones(1, np.float32)}


def test_teacher_under_vecnormalize_sees_its_own_statistics_with_dict_observations():
    env = VecNormalize(make_vec_env(DictPendulum, n_envs=1, seed=0), norm_obs_keys=["state"])
    model = SelfDistillSAC("MultiInputPolicy", env, seed=0, teacher_update_interval=50, **tiny()).learn(80)
    assert model.logger.name_to_value["distill/kl"] > 0  # the distillation steps ran on dict replay batches
    ((_, stats),) = model.distiller.teacher.active_members()
    assert set(stats) == {"state"} and stats["state"].count < env.obs_rms["state"].count
    raw = {"state": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "bias": np.ones((4, 1), np.float32)}
    current = {key: th.as_tensor(value) for key, value in env.normalize_obs(raw).items()}
    seen = model._teacher_observations(current, stats)
    expected = th.as_tensor(env._normalize_obs(raw["state"], stats["state"]), dtype=th.float32)
    th.testing.assert_close(seen["state"], expected, atol=1e-5, rtol=1e-5)
    assert seen["bias"] is current["bias"]


@pytest.mark.parametrize("algo_class", [SelfDistillSAC, SelfDistillTD3], ids=IDS)
def test_a_second_learn_that_restarts_the_step_count_keeps_refreshing(algo_class):
    """SB3's default learn(reset_num_timesteps=True) on a trained model: env-step refreshes are due again at each
    multiple of the interval in the new count, and the teacher's age stays its age (not negative)."""
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=50, **tiny())
    model.learn(120)
    teacher = model.distiller.teacher
    assert teacher.n_updates == 2 and teacher.last_update_step == 100
    model.learn(40)  # the count restarts at 0: the old teacher is 20 + 40 steps old, and no refresh is due yet
    assert teacher.n_updates == 2 and model.logger.name_to_value["distill/teacher_age"] == 60
    model.learn(120)  # refreshes at 50 and 100 of the new count
    assert teacher.n_updates == 4 and teacher.last_update_step == 100
    assert model.logger.name_to_value["distill/teacher_age"] == 20


def test_adaptive_weight_adapts_on_a_window_of_gradient_steps_off_policy():
    """One gradient step per train() call: the weight adapts from the mean KL of each 20 gradient steps with a teacher
    (here always far above the target: it doubles), not after every single-batch KL."""
    model = SelfDistillSAC(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        teacher_update_interval=40,
        distill_coef=1.0,
        distill_target_kl=1e-12,
        distill_coef_bounds=(1e-3, 1e6),
        distill_relative_window=20,
        **tiny(),
    ).learn(150)
    steps_with_teacher = model.distiller.gradient_steps_with_teacher
    assert steps_with_teacher == 150 - 40 + 1  # a teacher from env step 40's train() on, one gradient step per step
    assert model.distiller.coefficient.value(0.5) == 2.0 ** (steps_with_teacher // 20)
    assert model.distiller.coefficient.pending_steps == steps_with_teacher % 20


def test_sac_logs_the_student_and_teacher_std():
    model = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=50, **tiny())
    model.learn(90)
    model._log_diagnostics()
    logged = model.logger.name_to_value
    with th.no_grad():
        _, log_std, _ = model.actor.get_action_dist_params(model._reference_obs)
    assert logged["distill/student_std"] == pytest.approx(log_std.exp().mean().item(), rel=1e-6)
    assert logged["distill/teacher_std"] > 0


def test_td3_logs_the_critic_term_of_phases_without_an_actor_update():
    """policy_delay 2 with one gradient step per train() call: every other phase updates only the critics."""
    model = SelfDistillTD3("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=50, distill_value_coef=0.5, **tiny())
    phases = []
    end_phase = model.distiller.end_phase

    def recording_end_phase(logger, phase, *args):
        end_phase(logger, phase, *args)
        phases.append((bool(phase.kls), logger.name_to_value.get("distill/value_loss")))
        logger.name_to_value.pop("distill/value_loss", None)

    model.distiller.end_phase = recording_end_phase
    model.learn(90)
    critic_only = [value for has_actor_step, value in phases if not has_actor_step and value is not None]
    with_actor = [value for has_actor_step, value in phases if has_actor_step]
    assert len(critic_only) >= 10 and all(value > 0 for value in critic_only)
    assert with_actor and all(value is not None for value in with_actor)


def test_lagged_teacher_age_is_the_lag():
    """The lagged teacher distils from its oldest copy: 3 gradient steps, one per env step, so 3 env steps old."""
    model = lagged_sac(3).learn(64)
    assert model.logger.name_to_value["distill/teacher_age"] == 3


# ----------------------------------------------------------------------------- parameters, save, load, resume


@pytest.mark.parametrize("algo_class,parent", PAIRS, ids=IDS)
def test_parameters_look_like_the_parents_until_the_first_refresh(tmp_path, algo_class, parent):
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=50, **tiny())
    reference = parent("MlpPolicy", "Pendulum-v1", seed=0, **tiny())
    assert list(model.get_parameters()) == list(reference.get_parameters())
    reference.set_parameters(copy.deepcopy(model.get_parameters()), exact_match=True)
    model.learn(80)
    params = copy.deepcopy(model.get_parameters())
    assert list(params)[-1] == "teacher_networks"
    fresh = algo_class("MlpPolicy", "Pendulum-v1", seed=1, teacher_update_interval=50, **tiny())
    fresh.set_parameters(params, exact_match=False)  # no teacher yet: the student is set, the teacher skipped
    assert len(fresh.teacher_networks) == 0
    assert_same_parameters(model.policy, fresh.policy)


@pytest.mark.parametrize("algo_class", [SelfDistillSAC, SelfDistillTD3], ids=IDS)
def test_save_load_restores_teachers_and_continues(tmp_path, algo_class):
    model = algo_class(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        teacher_mode="ensemble",
        teacher_ensemble_size=2,
        teacher_update_interval=30,
        distill_value_coef=0.5,
        **tiny(),
    ).learn(100)
    model.save(tmp_path / "agent.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = algo_class.load(tmp_path / "agent.zip", env=model.get_env(), device="cpu")
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    assert len(loaded.teacher_networks) == len(model.teacher_networks) == 2
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    for name in ("n_updates", "last_update_step", "_last_interval_index"):
        assert getattr(loaded.distiller.teacher, name) == getattr(model.distiller.teacher, name), name
    loaded.learn(50, reset_num_timesteps=False)
    assert loaded.distiller.teacher.n_updates == 150 // 30 and loaded.logger.name_to_value["distill/kl"] > 0


@pytest.mark.parametrize("algo", ["sd_sac", "sd_td3"])
def test_two_resumes_from_one_checkpoint_are_bit_identical(tmp_path, isolated_home, algo):
    """Through the run layer: checkpoints with teacher, optimizers, replay buffer, VecNormalize and RNG states."""
    hyperparams = {
        "learning_starts": 32,
        "buffer_size": 1_000,
        "batch_size": 16,
        "teacher_update_interval": 100,
        "normalize": True,
        "policy_kwargs": {"net_arch": [32, 32]},
    }
    if algo == "sd_td3":
        hyperparams.update(noise_type="normal", noise_std=0.1)
    request = TrainRequest(
        algo=algo,
        env_id="Pendulum-v1",
        n_timesteps=300,
        seed=7,
        vec_env="dummy",
        n_envs=1,
        eval_freq=0,
        save_freq=150,
        keep_checkpoints=10,
        hyperparams=hyperparams,
        wandb_mode="disabled",
        progress=False,
        verbose=0,
        run_dir=tmp_path / "run",
    )
    run_dir = run_training(request)
    finals = []
    for attempt in range(2):
        copy_dir = interrupted_copy(run_dir, tmp_path / f"resumed{attempt}", 150)
        resume_training(copy_dir)
        finals.append(registry.algo_class(algo).load(copy_dir / "model.zip", device="cpu"))
    assert finals[0].num_timesteps == finals[1].num_timesteps == 300
    assert finals[0].distiller.teacher.n_updates == finals[1].distiller.teacher.n_updates == 300 // 100
    assert_same_parameters(finals[0].policy, finals[1].policy)
    assert_same_parameters(finals[0].teacher_networks, finals[1].teacher_networks)
    if algo == "sd_td3":
        assert finals[0].action_noise is not None and np.allclose(finals[0].action_noise._sigma, 0.1)


# ----------------------------------------------------------------------------- presets and the CLI


def test_presets_are_the_zoos_with_distillation_layered_on():
    sac, sd_sac = resolve_hyperparams("sac", "Pendulum-v1"), resolve_hyperparams("sd_sac", "Pendulum-v1")
    assert sac["n_timesteps"] == sd_sac["n_timesteps"] == 20_000 and sac["learning_rate"] == 1e-3
    assert sd_sac["teacher_update_interval"] == 2000 and "distill_coef" not in sac
    td3 = resolve_hyperparams("td3", "HalfCheetah-v5")
    assert td3["learning_starts"] == 10_000 and td3["policy_kwargs"] == {"net_arch": [400, 300]}
    assert td3["noise_type"] == "normal" and td3["noise_std"] == 0.1
    assert resolve_hyperparams("sd_sac", "Walker2d-v5")["learning_starts"] == 10_000
    noise = action_noise(td3, make_vec_env("Pendulum-v1", n_envs=1).action_space)
    assert np.allclose(noise._sigma, [0.1]) and "noise_type" not in model_kwargs(td3)


def test_a_continuous_only_algorithm_refuses_a_discrete_env(tmp_path, isolated_home, capsys):
    argv = ["train", "--algo", "sd_sac", "--env", "CartPole-v1", "-n", "100", "--wandb-mode", "disabled"]
    assert main([*argv, "-f", str(tmp_path / "logs")]) == 2
    assert "sd_sac needs a continuous (Box) action space, this env's is Discrete" in capsys.readouterr().err


def test_throughput_pair_through_the_cli(tmp_path, capsys):
    argv = ["throughput", "--env", "Pendulum-v1", "--a", "td3", "--b", "sd_td3", "--pairs", "1", "-n", "64"]
    argv += ["--n-envs", "1", "--learning-starts", "64", "--batch-size", "32", "--teacher-update-interval", "64"]
    argv += ["--device", "cpu", "--json", str(tmp_path / "t.json")]
    assert main(argv) == 0
    assert "ratio B/A:" in capsys.readouterr().out
    assert json.loads((tmp_path / "t.json").read_text())["teacher_updates"]["sd_td3@dummy"] >= 2


# ----------------------------------------------------------------------------- learning (slow)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # TD3 acts randomly for 10k steps first; on a loaded CPU a run can pass the 900 s default
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("algo", ["sac", "sd_sac", "td3", "sd_td3"])
def test_learns_pendulum_with_the_zoo_preset(algo, seed):
    """The Zoo's Pendulum-v1 preset (its 20k-step budget, TD3 acting randomly for the first 10k); training stops once
    a deterministic evaluation of 5 episodes, every 1000 steps, averages more than -400. Held on every run so far:
    each of the 8 cases once (sd_td3 seed 0 twice: its first run hit the old 900 s timeout, not the threshold). SAC and
    SD-SAC stopped after 3k-4k steps (best -100 to -249), TD3 and SD-TD3 after 14k-16k (best -192 to -268). CPU-bound:
    4-25 minutes per run on one shared core."""
    hyperparams = resolve_hyperparams(algo, "Pendulum-v1")
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=seed)
    kwargs = model_kwargs(hyperparams)
    noise = action_noise(hyperparams, env.action_space)
    if noise is not None:
        kwargs["action_noise"] = noise
    model = registry.algo_class(algo)(hyperparams["policy"], env, seed=seed, device="cpu", **kwargs)
    evaluation = EvalCallback(
        make_vec_env("Pendulum-v1", n_envs=1, seed=100 + seed),
        eval_freq=1000,
        n_eval_episodes=5,
        callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=-400, verbose=0),
        verbose=0,
    )
    model.learn(int(hyperparams["n_timesteps"]), callback=evaluation)
    print(f"{algo} seed {seed}: best mean return {evaluation.best_mean_reward:.1f} after {model.num_timesteps} steps")
    if registry.is_distilling(algo):
        assert model.distiller.teacher.n_updates >= 1
    assert evaluation.best_mean_reward > -400
