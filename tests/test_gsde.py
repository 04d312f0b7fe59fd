"""gSDE (use_sde=True) in SelfDistillPPO, SelfDistillA2C and SelfDistillSAC.

A gSDE policy's action distribution in a state s is a diagonal Gaussian with mean mu(s) and variance
sum_j phi_j(s)^2 sigma_ji^2: the KL is checked against torch.distributions on SB3's own distribution
objects, then the algorithms against SB3 (bit for bit at weight 0), the teacher invariants, save / load /
resume, and a learning check on Pendulum-v1 with the RL Zoo's gSDE preset.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.distributions import Normal, kl_divergence

from rl_selfdistill import SelfDistillA2C, SelfDistillPPO
from rl_selfdistill.algos.sac import SelfDistillSAC
from rl_selfdistill.config import model_kwargs, resolve_hyperparams
from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.distill.policy_kl import PolicyKL
from rl_selfdistill.run import TrainRequest, resume_training, run_training
from rl_selfdistill.run.checkpoints import list_checkpoints, load_checkpoint
from rl_selfdistill.run.rundir import read_config
from tests.helpers import A2C_TINY, PPO_TINY, assert_same_parameters, flat, interrupted_copy

GSDE = {"use_sde": True, "sde_sample_freq": 4}
OBSERVATIONS = spaces.Box(-2.0, 2.0, (5,), np.float32)
ACTIONS = spaces.Box(-1.0, 1.0, (3,), np.float32)
# SB3's defaults (one sigma per feature and action dim, exp), one sigma per feature, expln, tanh-squashed actions.
DISTRIBUTION_OPTIONS = [{}, {"full_std": False}, {"use_expln": True}, {"squash_output": True}]
ALGOS = [(SelfDistillPPO, PPO, PPO_TINY), (SelfDistillA2C, A2C, A2C_TINY)]
# One gradient phase per 64-step rollout in both (PPO: one epoch of one minibatch), so that a KL logged right after
# a refresh is measured before any step.
ONE_STEP_PER_ROLLOUT = [
    (SelfDistillPPO, {"n_steps": 64, "batch_size": 64, "n_epochs": 1}),
    (SelfDistillA2C, {"n_steps": 64}),
]


# ----------------------------------------------------------------------------- the KL of one pair of policies


def gsde_policy(seed: int, **options: Any) -> ActorCriticPolicy:
    """A gSDE actor-critic in float64 (so that 1e-6 tests the formula, not float32 rounding), log_std spread over
    [-1.5, 1.5] so that expln's two branches and very different stds are both exercised."""
    th.manual_seed(seed)
    policy = ActorCriticPolicy(OBSERVATIONS, ACTIONS, lambda _: 1e-3, use_sde=True, net_arch=[16, 16], **options).double()
    with th.no_grad():
        policy.log_std.uniform_(-1.5, 1.5)
    return policy


def sb3_gaussian(policy: ActorCriticPolicy, obs: th.Tensor) -> tuple[Normal, th.Tensor]:
    """SB3's own per-state Normal (``proba_distribution(...).distribution``), and the policy latent it came from."""
    # The features extractor directly: SB3's preprocessing would cast the float64 observations to float32.
    latent_pi, _ = policy.mlp_extractor(policy.features_extractor(obs))
    mean_actions = policy.action_net(latent_pi)
    return policy.action_dist.proba_distribution(mean_actions, policy.log_std, latent_pi).distribution, latent_pi


def observations(count: int = 64) -> th.Tensor:
    generator = th.Generator().manual_seed(7)
    return th.rand((count, 5), generator=generator, dtype=th.float64) * 4 - 2


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("options", DISTRIBUTION_OPTIONS)
def test_kl_is_torchs_kl_of_sb3s_per_state_normals(options, direction, temperature):
    teacher, student = gsde_policy(0, **options), gsde_policy(1, **options)
    obs = observations()
    policy_kl = PolicyKL.for_policy(student, DistillConfig(kl_direction=direction, distill_temperature=temperature))
    with th.no_grad():
        teacher_normal, teacher_latent = sb3_gaussian(teacher, obs)
        teacher_params = policy_kl.params_from_latent(teacher, teacher_latent)  # the rollout pass's path
    student_normal, _ = sb3_gaussian(student, obs)
    student_params = policy_kl.params(student, student.action_dist)  # the minibatch path, on SB3's distribution

    ours = policy_kl.per_sample(teacher_params, student_params)

    def tempered(normal: Normal) -> Normal:  # p^(1/T) of a Gaussian: its variance times T
        return Normal(normal.loc.detach(), normal.scale.detach() * math.sqrt(temperature))

    p, q = (teacher_normal, student_normal) if direction == "forward" else (student_normal, teacher_normal)
    reference = kl_divergence(tempered(p), tempered(q)).sum(dim=-1)
    assert ours.shape == (64,) and reference.mean() > 0.1  # genuinely different distributions
    assert th.allclose(ours.detach(), reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", DISTRIBUTION_OPTIONS)
def test_teacher_and_student_paths_give_bit_equal_parameters(options):
    """The rollout pass (from the latent) and the minibatch path (from SB3's distribution) are the same numbers, so
    a fresh snapshot's KL is exactly 0; the variance uses the policy's own exploration scale, not the sampled noise."""
    policy = gsde_policy(3, **options)
    policy_kl = PolicyKL.for_policy(policy, DistillConfig())
    obs = observations()
    normal, latent = sb3_gaussian(policy, obs)
    from_distribution = policy_kl.params(policy, policy.action_dist)
    policy.reset_noise(64)  # a new exploration matrix changes the sampled actions, not the distribution
    assert th.equal(policy_kl.params_from_latent(policy, latent), from_distribution)
    assert th.equal(policy_kl.per_sample(from_distribution, from_distribution), th.zeros(64, dtype=th.float64))
    mean, log_std = from_distribution.chunk(2, dim=-1)
    assert th.equal(mean, normal.loc) and th.allclose(log_std.exp(), normal.scale, rtol=1e-12, atol=0)


@pytest.mark.parametrize("target", ["full", "mean_mse", "mean_kl"])
def test_gaussian_targets_on_gsde(target):
    """mean_mse: squared error of the means; mean_kl: the full KL's value with the student's std held out of the
    gradient; full: the std is pulled too (through log_std only: SB3's gSDE does not learn its features)."""
    teacher, student = gsde_policy(0), gsde_policy(1)
    obs = observations()
    policy_kl = PolicyKL.for_policy(student, DistillConfig(distill_gaussian=target))
    with th.no_grad():
        teacher_normal, teacher_latent = sb3_gaussian(teacher, obs)
        teacher_params = policy_kl.params_from_latent(teacher, teacher_latent)
    student_normal, _ = sb3_gaussian(student, obs)
    loss = policy_kl.per_sample(teacher_params, policy_kl.params(student, student.action_dist))
    full = kl_divergence(teacher_normal, Normal(student_normal.loc.detach(), student_normal.scale.detach())).sum(-1)
    if target == "mean_mse":
        expected = (teacher_normal.loc - student_normal.loc.detach()).pow(2).sum(-1)
        assert th.allclose(loss.detach(), expected, rtol=1e-9, atol=0)
    else:
        assert th.allclose(loss.detach(), full, rtol=1e-6, atol=1e-6)
    loss.mean().backward()
    assert student.action_net.weight.grad is not None and student.action_net.weight.grad.abs().sum() > 0
    std_grad = student.log_std.grad
    assert (std_grad is not None and std_grad.abs().sum() > 0) == (target == "full")


# ----------------------------------------------------------------------------- the algorithms


@pytest.mark.parametrize("distill", [{"distill_coef": 0, "teacher_update_interval": 64}, {"teacher_update_interval": 10**9}])
@pytest.mark.parametrize("algo,parent,tiny", ALGOS)
def test_trains_bit_for_bit_like_its_parent_without_a_teacher(algo, parent, tiny, distill):
    """Weight 0 runs the parent's own train(); no teacher yet runs the copied one: both must be SB3's exactly."""
    reference = parent("MlpPolicy", "Pendulum-v1", seed=3, **GSDE, **tiny).learn(384)
    model = algo("MlpPolicy", "Pendulum-v1", seed=3, **GSDE, **distill, **tiny).learn(384)
    assert_same_parameters(reference.policy, model.policy)
    assert model.distiller.teacher.n_updates == 0
    assert model.logger.name_to_value["train/std"] == reference.logger.name_to_value["train/std"]


@pytest.mark.parametrize("algo,kwargs", ONE_STEP_PER_ROLLOUT)
def test_kl_is_zero_right_after_a_snapshot(algo, kwargs):
    model = algo("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=64, device="cpu", **GSDE, **kwargs)
    model.learn(64 * 4)
    assert model.distiller.teacher.n_updates == 3
    assert model.logger.name_to_value["distill/kl"] == 0.0
    assert model.logger.name_to_value["distill/teacher_age"] == 64


@pytest.mark.parametrize("algo,kwargs", ONE_STEP_PER_ROLLOUT)
def test_kl_grows_once_the_teacher_is_behind_and_the_teacher_keeps_its_own_exploration_scale(algo, kwargs):
    model = algo("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=128, device="cpu", **GSDE, **kwargs)
    model.learn(64 * 4)  # refreshed at 128; the rollout from 192 trains against a teacher one step behind
    assert model.distiller.teacher.n_updates == 1
    assert model.logger.name_to_value["distill/kl"] > 0.0
    (teacher,) = model.teacher_networks
    assert not th.equal(teacher.log_std, model.policy.log_std)  # its own sigma matrix, not the student's
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # The teacher's outputs were computed once for the rollout: [mean, log_std] per sample, with no graph.
    params, values = model._rollout_teacher
    assert params.shape == (1, 64, 2) and not params.requires_grad and values is None
    obs = th.as_tensor(model._flat_rollout_observations(model.rollout_buffer))
    with th.no_grad():
        normal = teacher.get_distribution(obs).distribution
    th.testing.assert_close(params[0], th.cat([normal.loc, normal.scale.log()], dim=-1))


@pytest.mark.parametrize(
    "options",
    [
        {"teacher_mode": "ema", "teacher_tau": 0.5},
        {"teacher_mode": "ensemble", "teacher_ensemble_size": 2},
        {"teacher_mode": "lagged", "teacher_update_unit": "gradient_steps", "teacher_update_interval": 2},
        {"teacher_mode": "reset", "reset_anneal_steps": 256},
        {"distill_gaussian": "mean_kl", "distill_separate_batch": True, "distill_value_coef": 0.5},
    ],
)
def test_teacher_modes_and_options_distil_a_gsde_policy(options):
    kwargs = {"teacher_update_interval": 64, **options}
    model = SelfDistillPPO("MlpPolicy", "Pendulum-v1", seed=1, **GSDE, **kwargs, **PPO_TINY).learn(64 * 4)
    assert model.distiller.teacher.is_ready
    kl = model.logger.name_to_value["distill/kl"]
    assert np.isfinite(kl) and kl >= 0


def test_save_load_restores_the_teacher_and_its_exploration_scale(tmp_path: Path):
    model = SelfDistillPPO("MlpPolicy", "Pendulum-v1", seed=2, teacher_update_interval=64, **GSDE, **PPO_TINY)
    model.learn(64 * 4)
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillPPO.load(tmp_path / "agent.zip", env=model.get_env(), device="cpu")
    assert "0.log_std" in loaded.teacher_networks.state_dict()
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    assert loaded.use_sde and loaded.sde_sample_freq == 4
    # The loaded teacher gives the same per-state distributions as the saved one.
    obs = th.as_tensor(model._flat_rollout_observations(model.rollout_buffer))
    with th.no_grad():
        saved = model.teacher_networks[0].get_distribution(obs).distribution
        restored = loaded.teacher_networks[0].get_distribution(obs).distribution
    assert th.equal(saved.loc, restored.loc) and th.equal(saved.scale, restored.scale)
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.distiller.teacher.n_updates == model.distiller.teacher.n_updates + 2
    assert not th.equal(flat(loaded.teacher_networks), flat(model.teacher_networks))


def _sde_request(run_dir: Path) -> TrainRequest:
    hyperparams = {**GSDE, "n_steps": 64, "batch_size": 64, "n_epochs": 2, "teacher_update_interval": 256}
    return TrainRequest(
        algo="sd_ppo",
        env_id="Pendulum-v1",
        n_timesteps=1536,
        seed=7,
        vec_env="dummy",
        n_envs=2,
        eval_freq=0,
        save_freq=512,
        keep_checkpoints=10,
        hyperparams={**hyperparams, "normalize": True, "policy_kwargs": {"net_arch": [32, 32]}},
        wandb_mode="disabled",
        progress=False,
        verbose=0,
        run_dir=run_dir,
    )


def test_resumes_from_a_checkpoint_are_exact(tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch):
    """Through the run layer: the checkpoint holds the teacher (with its log_std) as it was, and two resumes from it
    end bit-identical (gSDE's noise matrices are drawn from the restored torch RNG)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = run_training(_sde_request(tmp_path / "run"))
    checkpoint = next(path for path in list_checkpoints(run_dir) if path.name.endswith(f"_{512:012d}"))
    model, _eval_env, _meta = load_checkpoint(checkpoint, read_config(run_dir), device="cpu")
    assert model.use_sde and model.distiller.teacher.n_updates == 2 and "0.log_std" in model.teacher_networks.state_dict()
    model.env.close()
    finals = []
    for attempt in range(2):
        copy_dir = interrupted_copy(run_dir, tmp_path / f"resumed{attempt}", 512)
        resume_training(copy_dir)
        finals.append(SelfDistillPPO.load(copy_dir / "model.zip", device="cpu"))
    assert finals[0].num_timesteps == finals[1].num_timesteps == 1536
    assert finals[0].distiller.teacher.n_updates == 1536 // 256 - 1
    assert_same_parameters(finals[0].policy, finals[1].policy)
    assert_same_parameters(finals[0].teacher_networks, finals[1].teacher_networks)


# ----------------------------------------------------------------------------- SAC: a squashed gSDE actor


def sac_tiny() -> dict[str, Any]:
    """Fresh each call: SB3 adds keys to the policy_kwargs dict it is given."""
    return {
        "learning_starts": 32,
        "buffer_size": 1_000,
        "batch_size": 16,
        "device": "cpu",
        **GSDE,
        "policy_kwargs": {"net_arch": [32, 32]},
    }


@pytest.mark.parametrize("use_expln", [False, True])
def test_sac_policy_term_is_torchs_kl_of_sb3s_per_state_normals(use_expln):
    """SAC's gSDE actor learns its features (learn_features=True) and squashes with tanh: the KL of the pre-squash
    Gaussians, each built by SB3's own distribution object. Float32 here (SAC casts observations to float32)."""
    env = make_vec_env("LunarLander-v3", n_envs=1, env_kwargs={"continuous": True})  # 2 action dims
    kwargs = {**sac_tiny(), "policy_kwargs": {"net_arch": [32, 32], "use_expln": use_expln}}
    student, teacher = (SelfDistillSAC("MlpPolicy", env, seed=seed, **kwargs) for seed in (0, 1))
    with th.no_grad():
        for model in (student, teacher):
            model.actor.log_std.uniform_(-1.5, 1.5)
    obs = th.rand((64, 8), generator=th.Generator().manual_seed(5)) * 2 - 1
    with th.no_grad():
        ours = student._policy_divergence(
            student._policy_outputs(teacher.actor, obs), student._policy_outputs(student.actor, obs)
        )
        normals = []
        for actor in (teacher.actor, student.actor):
            mean, log_std, extra = actor.get_action_dist_params(obs)
            normals.append(actor.action_dist.proba_distribution(mean, log_std, **extra).distribution)
        reference = kl_divergence(*normals).sum(dim=-1).mean()
    assert reference > 0.1
    th.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("distill", [{"distill_coef": 0, "teacher_update_interval": 16}, {"teacher_update_interval": 10**9}])
def test_sac_trains_bit_for_bit_like_sac_without_a_teacher(distill):
    reference = SAC("MlpPolicy", "Pendulum-v1", seed=3, **sac_tiny()).learn(100)
    model = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=3, **distill, **sac_tiny()).learn(100)
    assert_same_parameters(reference.policy, model.policy)
    assert th.equal(reference.log_ent_coef, model.log_ent_coef) and model.distiller.teacher.n_updates == 0


def test_sac_kl_is_zero_right_after_a_snapshot_and_grows_once_the_teacher_is_behind():
    fresh = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=1, **sac_tiny()).learn(64)
    assert fresh.distiller.teacher.n_updates == 64 and fresh.logger.name_to_value["distill/kl"] == 0.0
    model = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=0, teacher_update_interval=50, **sac_tiny()).learn(90)
    assert model.distiller.teacher.n_updates == 1 and model.logger.name_to_value["distill/kl"] > 0
    (teacher,) = model.teacher_networks
    assert not th.equal(teacher.actor.log_std, model.actor.log_std)  # its own exploration matrix
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_sac_save_load_restores_the_teacher_and_its_exploration_matrix(tmp_path: Path):
    model = SelfDistillSAC("MlpPolicy", "Pendulum-v1", seed=2, teacher_update_interval=50, **sac_tiny()).learn(90)
    model.save(tmp_path / "sac.zip")
    loaded = SelfDistillSAC.load(tmp_path / "sac.zip", env=model.get_env(), device="cpu")
    assert "0.actor.log_std" in loaded.teacher_networks.state_dict()
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.distiller.teacher.n_updates == 3  # at 100 and 150, as the cadence continues


# ----------------------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sd_ppo_learns_pendulum_with_the_zoos_gsde_preset(seed):
    """The RL Zoo's gSDE PPO entry for Pendulum-v1 (4 envs, 100k steps, use_sde with sde_sample_freq 4) with
    sd_ppo.yaml's distillation settings; scored by a deterministic evaluation of 10 episodes at the end.
    For scale: the Zoo's published gSDE PPO agent scores -172 +- 104, a policy doing nothing about -1240.
    Held on every run so far (2026-12-02, 2-core CPU): this test once (seeds 0 and 1), and its body for seeds 0-3
    once more, scoring -92.4, -170.1, -200.3 and -129.6 (4-8 min per seed on the loaded machine)."""
    hyperparams = resolve_hyperparams("sd_ppo", "Pendulum-v1")
    assert hyperparams["use_sde"] is True and hyperparams["sde_sample_freq"] == 4
    env = make_vec_env("Pendulum-v1", n_envs=hyperparams["n_envs"], seed=seed)
    model = SelfDistillPPO("MlpPolicy", env, seed=seed, device="cpu", **model_kwargs(hyperparams))
    model.learn(int(hyperparams["n_timesteps"]))
    assert model.distiller.teacher.n_updates == 4  # at the rollout starts past 20k, 40k, 60k and 80k steps
    assert np.isfinite(model.logger.name_to_value["distill/kl"])
    score, _ = evaluate_policy(model, make_vec_env("Pendulum-v1", n_envs=1, seed=1000 + seed), n_eval_episodes=10)
    print(f"seed {seed}: mean return {score:.1f} over 10 deterministic episodes")  # shown with pytest -rP
    assert score >= -400, f"seed {seed}: {score:.1f}"
