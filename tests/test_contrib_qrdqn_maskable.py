"""SelfDistillQRDQN and SelfDistillMaskablePPO (sb3-contrib): KLs against torch.distributions, equivalence with the
parents, teacher invariants, masks that change every step, save/load/resume, presets and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib import QRDQN, MaskablePPO
from sb3_contrib.common.envs import InvalidActionEnvMultiDiscrete
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.utils import quantile_huber_loss
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.distributions import Categorical, kl_divergence

from rl_selfdistill.algos.maskable_ppo import IndexedMaskableRolloutBuffer, SelfDistillMaskablePPO
from rl_selfdistill.algos.qrdqn import SelfDistillQRDQN
from rl_selfdistill.cli import main
from rl_selfdistill.config import resolve_hyperparams
from rl_selfdistill.distill.kl import masked_categorical_kl, masked_multi_categorical_kl, quantile_softmax_kl
from rl_selfdistill.envs.masked import MaskedIdentityEnv
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run import TrainRequest, resume_training, run_training
from tests.helpers import PPO_TINY, assert_same_parameters, flat, interrupted_copy, not_installed_prelude

QRDQN_TINY = {
    "learning_starts": 100,
    "train_freq": 4,
    "target_update_interval": 100,
    "buffer_size": 5_000,
    "device": "cpu",
    "policy_kwargs": {"net_arch": [32, 32], "n_quantiles": 8},
}


def masked_env(n_envs: int = 2, seed: int = 0):
    """The toy task whose action masks change every step (6 of 10 actions illegal at each step)."""
    return make_vec_env(MaskedIdentityEnv, n_envs=n_envs, seed=seed)


# ----------------------------------------------------------------------------- the KL functions


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_masked_categorical_kl_is_torchs_kl_over_the_legal_actions(direction, temperature):
    generator = th.Generator().manual_seed(0)
    teacher, student = th.randn(64, 6, generator=generator), th.randn(64, 6, generator=generator)
    mask = th.rand(64, 6, generator=generator) > 0.4
    mask[:, 2] = True  # at least one legal action per state
    kl = masked_categorical_kl(teacher, student, mask, temperature, direction)
    expected = []
    for row in range(64):
        p = Categorical(logits=teacher[row][mask[row]] / temperature)
        q = Categorical(logits=student[row][mask[row]] / temperature)
        expected.append(kl_divergence(p, q) if direction == "forward" else kl_divergence(q, p))
    th.testing.assert_close(kl, th.stack(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fill", [float("-inf"), -1e8])
def test_masked_kl_stays_finite_when_both_mask_the_same_actions(fill):
    """Masked logits as a masked policy writes them (-inf, or sb3-contrib's -1e8): finite KL and finite gradients."""
    generator = th.Generator().manual_seed(1)
    mask = th.rand(32, 5, generator=generator) > 0.5
    mask[:, 0] = True
    teacher = th.randn(32, 5, generator=generator).masked_fill(~mask, fill)
    raw = th.randn(32, 5, generator=generator, requires_grad=True)
    student = raw.masked_fill(~mask, fill)
    kl = masked_categorical_kl(teacher, student, mask)
    kl.mean().backward()
    assert th.isfinite(kl).all() and (kl >= 0).all() and th.isfinite(raw.grad).all()
    assert (raw.grad[~mask] == 0).all()  # illegal actions get no gradient
    assert (masked_categorical_kl(student.detach(), student.detach(), mask) == 0).all()  # 0 log 0 = 0, exactly
    assert (masked_categorical_kl(teacher, student.detach(), th.zeros_like(mask)) == 0).all()  # no legal action


def test_masked_multi_categorical_kl_sums_the_masked_kls_of_each_part():
    generator = th.Generator().manual_seed(2)
    dims = (3, 4)
    teacher, student = th.randn(16, 7, generator=generator), th.randn(16, 7, generator=generator)
    mask = th.rand(16, 7, generator=generator) > 0.3
    mask[:, 0] = mask[:, 3] = True
    kl = masked_multi_categorical_kl(teacher, student, mask.float(), dims)  # a 0/1 float mask, as the buffer stores
    expected = []
    for row in range(16):
        total = 0.0
        for start, size in ((0, 3), (3, 4)):
            legal = mask[row, start : start + size]
            p = Categorical(logits=teacher[row, start : start + size][legal])
            q = Categorical(logits=student[row, start : start + size][legal])
            total = total + kl_divergence(p, q)
        expected.append(total)
    th.testing.assert_close(kl, th.stack(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_quantile_softmax_kl_is_torchs_kl_of_the_boltzmann_policies_of_the_mean_quantiles(direction):
    generator = th.Generator().manual_seed(3)
    teacher, student = th.randn(32, 10, 4, generator=generator), th.randn(32, 10, 4, generator=generator)
    p = Categorical(logits=teacher.mean(dim=1) / 0.7)
    q = Categorical(logits=student.mean(dim=1) / 0.7)
    expected = kl_divergence(p, q) if direction == "forward" else kl_divergence(q, p)
    th.testing.assert_close(quantile_softmax_kl(teacher, student, 0.7, direction), expected, atol=1e-6, rtol=0)
    th.testing.assert_close(quantile_softmax_kl(teacher, student, 0.7, direction, "mean"), expected.mean(), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- SelfDistillQRDQN


def test_qrdqn_with_zero_coef_is_sb3_contrib_qrdqn_bit_for_bit():
    """distill_coef=0 runs QRDQN's own train()."""
    reference = QRDQN("MlpPolicy", "CartPole-v1", seed=5, **QRDQN_TINY).learn(600)
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", seed=5, distill_coef=0, teacher_update_interval=50, **QRDQN_TINY)
    model.learn(600)
    assert_same_parameters(reference.policy, model.policy)
    assert model.distiller.teacher.n_updates == 0 and len(model.teacher_networks) == 0


@pytest.mark.parametrize("options", [{}, {"max_grad_norm": 1.0}], ids=["no-clipping", "clipping"])
def test_qrdqn_before_first_refresh_is_qrdqn_bit_for_bit(options):
    """The copied train() of the distilling path, with no teacher yet, is QRDQN's exactly."""
    reference = QRDQN("MlpPolicy", "CartPole-v1", seed=6, **QRDQN_TINY, **options).learn(600)
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", seed=6, teacher_update_interval=10**9, **QRDQN_TINY, **options)
    model.learn(600)
    assert_same_parameters(reference.policy, model.policy)
    assert model.logger.name_to_value["train/loss"] == reference.logger.name_to_value["train/loss"]


def test_qrdqn_kl_is_zero_right_after_a_hard_snapshot():
    model = SelfDistillQRDQN(
        "MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=1, **{**QRDQN_TINY, "train_freq": 1}
    ).learn(200)
    assert model.distiller.teacher.n_updates == 200
    assert model.logger.name_to_value["distill/kl"] == 0.0


@pytest.mark.parametrize("loss", ["boltzmann", "quantile", "quantile_huber"])
def test_qrdqn_logs_a_positive_term_once_the_teacher_moved(loss):
    model = SelfDistillQRDQN(
        "MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=300, distill_quantile_loss=loss, **QRDQN_TINY
    ).learn(400)  # refresh at step 300, then 100 steps of training against it
    logged = model.logger.name_to_value
    assert model.distiller.teacher.n_updates == 1 and logged["distill/teacher_age"] == 100
    assert logged["distill/kl"] > 0 and logged["distill/loss"] == pytest.approx(0.5 * logged["distill/kl"])


def test_quantile_huber_term_is_qrdqns_loss_on_each_actions_quantiles():
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile_huber", **QRDQN_TINY)
    generator = th.Generator().manual_seed(4)
    teacher, student = th.randn(16, 8, 2, generator=generator), th.randn(16, 8, 2, generator=generator)
    # Reference: QR-DQN's loss (student quantiles of action a against the teacher's of action a), averaged over actions.
    expected = th.stack([quantile_huber_loss(student[:, :, a], teacher[:, :, a]) for a in range(2)]).mean()
    th.testing.assert_close(model._distribution_loss(teacher, student), expected, atol=1e-6, rtol=0)


def test_quantile_term_is_the_quantile_regression_loss_of_each_actions_quantiles():
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile", **QRDQN_TINY)
    generator = th.Generator().manual_seed(5)
    teacher, student = th.randn(4, 6, 2, generator=generator), th.randn(4, 6, 2, generator=generator)
    expected = 0.0  # rho_tau(u) = u (tau - 1{u < 0}), written out term by term
    for b, a, i, j in np.ndindex(4, 2, 6, 6):
        u = (teacher[b, j, a] - student[b, i, a]).item()
        expected += u * ((i + 0.5) / 6 - (u < 0)) / 6  # averaged over the teacher's quantiles j
    th.testing.assert_close(model._distribution_loss(teacher, student).item(), expected / (4 * 2), atol=1e-6, rtol=0)


def test_quantile_loss_is_smallest_at_the_teachers_quantiles_and_the_huber_loss_is_not():
    """The quantile regression loss is minimal where each student quantile is the teacher's quantile at the same
    level (the teacher's values sorted); QR-DQN's quantile Huber loss is lower with the outer quantiles moved in."""
    taus = (th.arange(10, dtype=th.float64) + 0.5) / 10
    quantiles = th.distributions.Normal(0.0, 3.0).icdf(taus)
    teacher = quantiles[th.randperm(10, generator=th.Generator().manual_seed(0))].view(1, 10, 1)  # any order
    at_teacher = quantiles.view(1, 10, 1)
    quantile = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile", **QRDQN_TINY)
    huber = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile_huber", **QRDQN_TINY)
    best = quantile._distribution_loss(teacher, at_teacher)
    for i, step in np.ndindex(10, 2):
        moved = at_teacher.clone()
        moved[0, i, 0] += (-0.05, 0.05)[step]
        assert quantile._distribution_loss(teacher, moved) > best
    inward = at_teacher.clone()
    inward[0, 0, 0] += 0.3
    inward[0, -1, 0] -= 0.3
    assert huber._distribution_loss(teacher, inward) < huber._distribution_loss(teacher, at_teacher)


def test_qrdqn_teacher_is_frozen_independent_and_gets_no_gradient():
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=200, **QRDQN_TINY).learn(500)
    (teacher,) = model.teacher_networks
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not {p.data_ptr() for p in model.quantile_net.parameters()} & {p.data_ptr() for p in teacher.parameters()}
    before = flat(teacher)
    with th.no_grad():
        for p in model.quantile_net.parameters():
            p.add_(1.0)
    assert th.equal(flat(teacher), before)


def test_qrdqn_target_network_teacher():
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", seed=0, teacher_mode="target", **QRDQN_TINY).learn(648)
    assert len(model.teacher_networks) == 0  # no copy: the target quantile network is the teacher
    assert model.distiller.teacher.n_updates == 600 // 100
    assert model.logger.name_to_value["distill/kl"] > 0


def test_qrdqn_save_load_restores_the_teacher_and_continues(tmp_path):
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=200, **QRDQN_TINY).learn(500)
    assert list(model.get_parameters()) == ["policy", "policy.optimizer", "teacher_networks"]
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillQRDQN.load(tmp_path / "agent.zip", env=model.get_env(), device="cpu")
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    assert loaded.distiller.teacher.n_updates == model.distiller.teacher.n_updates == 2
    loaded.learn(200, reset_num_timesteps=False)
    assert loaded.distiller.teacher.n_updates == 3


def test_qrdqn_parameters_look_like_qrdqns_before_the_first_refresh():
    model = SelfDistillQRDQN("MlpPolicy", "CartPole-v1", seed=0, **QRDQN_TINY)
    assert list(model.get_parameters()) == list(QRDQN("MlpPolicy", "CartPole-v1", **QRDQN_TINY).get_parameters())


def test_quantile_loss_is_refused_where_it_does_not_apply():
    from rl_selfdistill import SelfDistillDQN, SelfDistillPPO

    with pytest.raises(UsageError, match="distill_quantile_loss 'quantile_huber' is not available for SelfDistillPPO"):
        SelfDistillPPO("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile_huber", **PPO_TINY)
    with pytest.raises(UsageError, match="SelfDistillDQN; use one of boltzmann"):
        SelfDistillDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile_huber", device="cpu")
    with pytest.raises(UsageError, match="distill_quantile_loss"):
        resolve_hyperparams("sd_dqn", "CartPole-v1", overrides={"distill_quantile_loss": "quantile_huber"})
    with pytest.raises(UsageError, match="no direction or temperature"):
        SelfDistillQRDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile_huber", kl_direction="reverse")
    with pytest.raises(UsageError, match="quantile distillation loss has no direction or temperature"):
        SelfDistillQRDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss="quantile", distill_temperature=2.0)
    for loss in ("quantile", "quantile_huber"):  # neither is 0 at a fresh copy: no KL target to adapt towards
        with pytest.raises(UsageError, match=f"distill_target_kl needs a KL that is 0 at a fresh copy; the {loss} loss"):
            SelfDistillQRDQN("MlpPolicy", "CartPole-v1", distill_quantile_loss=loss, distill_target_kl=0.01)
    assert resolve_hyperparams("sd_qrdqn", "CartPole-v1", overrides={"distill_quantile_loss": "quantile_huber"})


# ----------------------------------------------------------------------------- SelfDistillMaskablePPO


def test_maskable_ppo_with_zero_coef_is_sb3_contrib_maskable_ppo_bit_for_bit():
    """distill_coef=0 runs MaskablePPO's own train() with its own rollout buffer."""
    reference = MaskablePPO("MlpPolicy", masked_env(), seed=3, **PPO_TINY).learn(512)
    model = SelfDistillMaskablePPO("MlpPolicy", masked_env(), seed=3, distill_coef=0, teacher_update_interval=64, **PPO_TINY)
    model.learn(512)
    assert_same_parameters(reference.policy, model.policy)
    assert type(model.rollout_buffer) is type(reference.rollout_buffer) and model.distiller.teacher.n_updates == 0


@pytest.mark.parametrize("options", [{}, {"clip_range_vf": 0.1}, {"target_kl": 1e-5, "n_epochs": 4}])
def test_maskable_ppo_before_first_refresh_is_maskable_ppo_bit_for_bit(options):
    """The copied train() (and the indexed mask buffer), with no teacher yet, are MaskablePPO's exactly."""
    kwargs = {**PPO_TINY, **options}
    reference = MaskablePPO("MlpPolicy", masked_env(), seed=4, **kwargs).learn(512)
    model = SelfDistillMaskablePPO("MlpPolicy", masked_env(), seed=4, teacher_update_interval=10**9, **kwargs).learn(512)
    assert isinstance(model.rollout_buffer, IndexedMaskableRolloutBuffer)
    assert_same_parameters(reference.policy, model.policy)
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/approx_kl"):
        assert model.logger.name_to_value[key] == reference.logger.name_to_value[key], key


def test_maskable_ppo_kl_is_zero_right_after_a_hard_snapshot():
    """One epoch, one minibatch per rollout, a refresh before every rollout: the KL is measured before any step."""
    model = SelfDistillMaskablePPO(
        "MlpPolicy", masked_env(), seed=0, n_steps=32, batch_size=64, n_epochs=1, teacher_update_interval=64, device="cpu"
    ).learn(64 * 4)
    assert model.distiller.teacher.n_updates == 3
    assert model.logger.name_to_value["distill/kl"] == 0.0


def test_maskable_ppo_kl_is_over_each_rows_own_mask_and_positive_once_the_teacher_moved():
    model = SelfDistillMaskablePPO("MlpPolicy", masked_env(), seed=0, teacher_update_interval=128, **PPO_TINY).learn(384)
    logged = model.logger.name_to_value
    assert model.distiller.teacher.n_updates == 2 and np.isfinite(logged["distill/kl"]) and logged["distill/kl"] > 0
    buffer = model.rollout_buffer
    masks = buffer.action_masks  # flat [rows, actions] after get()
    assert masks.shape == (128, 10) and (masks.sum(axis=1) == 4).all() and len(np.unique(masks, axis=0)) > 20
    rows = np.arange(0, 128, 5)
    teacher_rows, _ = model._teacher_rows(None, rows)
    assert th.equal(teacher_rows[0, :, 10:], th.as_tensor(masks[rows]))  # each row carries its own state's mask
    observations = th.as_tensor(buffer.observations[rows])
    (teacher,) = model.teacher_networks
    with th.no_grad():
        student_logits = model.policy.get_distribution(observations).distribution.logits
        teacher_logits = teacher.get_distribution(observations).distribution.logits
        student_params = model.policy_kl.params(model.policy, model.policy.get_distribution(observations))
    expected = [
        kl_divergence(Categorical(logits=teacher_logits[i][legal]), Categorical(logits=student_logits[i][legal]))
        for i, legal in enumerate(th.as_tensor(masks[rows]).bool())
    ]
    th.testing.assert_close(model.policy_kl.per_sample(teacher_rows[0], student_params), th.stack(expected), atol=1e-6, rtol=0)


def test_maskable_ppo_teacher_is_frozen_and_gets_no_gradient():
    model = SelfDistillMaskablePPO("MlpPolicy", masked_env(), seed=0, teacher_update_interval=128, **PPO_TINY).learn(384)
    (teacher,) = model.teacher_networks
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not model._rollout_teacher[0].requires_grad
    assert not {p.data_ptr() for p in model.policy.parameters()} & {p.data_ptr() for p in teacher.parameters()}


def test_maskable_ppo_multidiscrete_masks_distil_finitely():
    env = make_vec_env(lambda: InvalidActionEnvMultiDiscrete(dims=[3, 3], n_invalid_actions=2), n_envs=2, seed=0)
    model = SelfDistillMaskablePPO("MlpPolicy", env, seed=0, teacher_update_interval=64, **PPO_TINY).learn(256)
    assert model.policy_kl.action_dims == (3, 3)
    assert np.isfinite(model.logger.name_to_value["distill/kl"]) and model.logger.name_to_value["distill/kl"] > 0


@pytest.mark.parametrize(
    "options",
    [
        {"teacher_mode": "lagged", "teacher_update_unit": "gradient_steps", "teacher_update_interval": 2},
        {"distill_separate_batch": True, "distill_value_coef": 0.5, "kl_direction": "reverse", "distill_temperature": 2.0},
        {"teacher_mode": "ensemble", "teacher_ensemble_size": 2, "teacher_update_interval": 64},
    ],
    ids=["lagged-per-step", "separate-batch-value-reverse", "ensemble"],
)
def test_maskable_ppo_variants_distil_under_the_masks(options):
    """Teachers run on each minibatch (lagged), separate batches (masked by their own rows) and ensembles."""
    model = SelfDistillMaskablePPO(
        "MlpPolicy", masked_env(), seed=0, **{"teacher_update_interval": 128, **options}, **PPO_TINY
    )
    model.learn(384)
    kl = model.logger.name_to_value["distill/kl"]
    assert model.distiller.teacher.is_ready and np.isfinite(kl) and kl > 0


def test_maskable_ppo_parameters_look_like_maskable_ppos_before_the_first_refresh():
    model = SelfDistillMaskablePPO("MlpPolicy", masked_env(), seed=0, **PPO_TINY)
    assert list(model.get_parameters()) == list(MaskablePPO("MlpPolicy", masked_env(), **PPO_TINY).get_parameters())


def test_maskable_ppo_save_load_restores_the_teacher_and_continues(tmp_path):
    model = SelfDistillMaskablePPO("MlpPolicy", masked_env(), seed=0, teacher_update_interval=128, **PPO_TINY).learn(384)
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillMaskablePPO.load(tmp_path / "agent.zip", env=masked_env(), device="cpu")
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.distiller.teacher.n_updates == 3


def test_maskable_ppo_refuses_a_buffer_without_indices():
    from sb3_contrib.common.maskable.buffers import MaskableRolloutBuffer
    from stable_baselines3.common.buffers import RolloutBuffer

    assert SelfDistillMaskablePPO("MlpPolicy", masked_env(), rollout_buffer_class=MaskableRolloutBuffer, **PPO_TINY)
    with pytest.raises(UsageError, match="IndexedMaskableRolloutBuffer"):
        SelfDistillMaskablePPO("MlpPolicy", masked_env(), rollout_buffer_class=RolloutBuffer, **PPO_TINY)


# ----------------------------------------------------------------------------- resume, presets, CLI


@pytest.mark.parametrize(
    "algo,env_id,hyperparams",
    [
        # QR-DQN's default 200 quantiles make each gradient step cost 200 x 200 pairs per sample: 8 here.
        (
            "sd_qrdqn",
            "CartPole-v1",
            {"learning_starts": 100, "teacher_update_interval": 256, "policy_kwargs": {"n_quantiles": 8}},
        ),
        ("sd_ppo_mask", "MaskedIdentity-v0", {"n_steps": 32, "batch_size": 64, "teacher_update_interval": 256}),
    ],
)
def test_two_resumes_from_one_checkpoint_are_bit_identical(tmp_path, isolated_home, algo, env_id, hyperparams):
    """Through the run layer: checkpoints with teacher, optimizer, replay buffer and RNG states."""
    request = TrainRequest(
        algo=algo,
        env_id=env_id,
        n_timesteps=1024,
        seed=7,
        vec_env="dummy",
        n_envs=2,
        eval_freq=0,
        save_freq=512,
        keep_checkpoints=10,
        save_replay_buffer=True,
        hyperparams={**hyperparams, "policy_kwargs": {"net_arch": [32, 32], **hyperparams.get("policy_kwargs", {})}},
        wandb_mode="disabled",
        progress=False,
        verbose=0,
        run_dir=tmp_path / "run",
    )
    run_dir = run_training(request)
    algo_class = SelfDistillQRDQN if algo == "sd_qrdqn" else SelfDistillMaskablePPO
    finals = []
    for attempt in range(2):
        copy_dir = interrupted_copy(run_dir, tmp_path / f"resumed{attempt}", 512)
        resume_training(copy_dir)
        finals.append(algo_class.load(copy_dir / "model.zip", device="cpu"))
    assert finals[0].num_timesteps == finals[1].num_timesteps == 1024
    assert finals[0].distiller.teacher.n_updates == finals[1].distiller.teacher.n_updates >= 2
    assert_same_parameters(finals[0].policy, finals[1].policy)
    assert_same_parameters(finals[0].teacher_networks, finals[1].teacher_networks)


def test_presets_resolve_with_the_zoos_values():
    base, sd = resolve_hyperparams("qrdqn", "CartPole-v1"), resolve_hyperparams("sd_qrdqn", "CartPole-v1")
    assert base["policy_kwargs"] == {"net_arch": [256, 256], "n_quantiles": 10} and base["train_freq"] == 256
    assert sd["teacher_update_interval"] == 1024 and sd["n_timesteps"] == base["n_timesteps"] == 50_000
    assert resolve_hyperparams("sd_qrdqn", "LunarLander-v3")["policy_kwargs"]["n_quantiles"] == 170
    masked = resolve_hyperparams("sd_ppo_mask", "MaskedIdentity-v0")
    assert masked["gamma"] == 0.4 and masked["teacher_update_interval"] == 2048


def test_maskable_algorithms_refuse_an_env_without_masks(run_cli):
    result = run_cli("train", "--algo", "sd_ppo_mask", "--env", "CartPole-v1", "-n", "64", "--wandb-mode", "disabled")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "needs an env with action masks" in result.stderr
    assert "MaskedIdentity-v0" in result.stderr


def test_without_sb3_contrib_the_cli_names_the_extra(tmp_path):
    """sb3-contrib blocked from importing in a fresh interpreter: a one-line error naming the pip extra, exit 2."""
    script = not_installed_prelude({"sb3_contrib"}) + "from rl_selfdistill.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    for algo in ("qrdqn", "sd_qrdqn", "sd_ppo_mask"):
        argv = ["train", "--algo", algo, "--env", "CartPole-v1", "-n", "64", "--run-dir", str(tmp_path / algo)]
        result = subprocess.run(
            [sys.executable, "-c", script, *argv, "--wandb-mode", "disabled"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"{algo} needs the 'sb3_contrib' package; pip install 'rl-selfdistill[contrib]'" in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / algo).exists()


def test_train_then_evaluate_a_masked_agent_through_the_cli(run_cli, tmp_path):
    """Evaluations during training and `evaluate` pass the env's masks to the agent (sb3-contrib's evaluation)."""
    from rl_selfdistill.evaluation import _evaluate_policy

    assert _evaluate_policy("sd_ppo_mask") is evaluate_policy and _evaluate_policy("ppo") is not evaluate_policy
    run_dir = tmp_path / "run"
    result = run_cli(
        "train", "--algo", "sd_ppo_mask", "--env", "MaskedIdentity-v0", "-n", "512", "--seed", "0", "--n-envs", "2",
        "--run-dir", str(run_dir), "--eval-freq", "256", "--eval-episodes", "1", "--wandb-mode", "disabled",
        "-params", "n_steps:64", "teacher_update_interval:128",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((run_dir / "eval.csv").read_text().splitlines()) == 3  # header and two evaluations
    result = run_cli("evaluate", str(run_dir), "--episodes", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean_reward=" in result.stdout


@pytest.mark.parametrize(
    "env_id,pair", [("CartPole-v1", ("qrdqn", "sd_qrdqn")), ("MaskedIdentity-v0", ("ppo_mask", "sd_ppo_mask"))]
)
def test_throughput_pair_through_the_cli(tmp_path, capsys, env_id, pair):
    argv = ["throughput", "--env", env_id, "--a", pair[0], "--b", pair[1], "--pairs", "1", "-n", "256"]
    argv += ["--n-envs", "2", "--teacher-update-interval", "64", "--device", "cpu", "--json", str(tmp_path / "t.json")]
    if pair[0] == "ppo_mask":
        argv += ["--n-steps", "32"]
    else:  # no gradient step: throughput's QR-DQN has the default 200 quantiles (200 x 200 pairs per sample and step)
        argv += ["--learning-starts", "100000", "--warmup", "128"]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert f"trial 1 {pair[1]}@dummy:" in output and "ratio B/A:" in output
    assert json.loads((tmp_path / "t.json").read_text())["teacher_updates"][f"{pair[1]}@dummy"] >= 1


# ----------------------------------------------------------------------------- learning checks


@pytest.mark.slow
@pytest.mark.parametrize("algo_class", [QRDQN, SelfDistillQRDQN], ids=["qrdqn", "sd_qrdqn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_qrdqn_learns_cartpole_with_the_zoo_preset(algo_class, seed):
    """The Zoo's tuned QR-DQN CartPole-v1 entry (its 50k-step budget) with sd_qrdqn.yaml's distillation settings;
    training stops once a deterministic evaluation of 10 episodes (every 5k steps) averages 400 or more. Run twice
    (seeds 0 and 1 each time; the runs are deterministic, so both times gave the same curves): every run stopped
    with a best evaluation of 432.9-500, qrdqn after 30k-40k steps, sd_qrdqn after 25k-40k; the threshold is 300."""
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold

    from rl_selfdistill.config.policy import build_policy_kwargs

    hyperparams = resolve_hyperparams("sd_qrdqn" if algo_class is SelfDistillQRDQN else "qrdqn", "CartPole-v1")
    kwargs = {key: value for key, value in hyperparams.items() if key not in ("policy", "n_envs", "n_timesteps")}
    kwargs["policy_kwargs"] = build_policy_kwargs(kwargs["policy_kwargs"])
    model = algo_class("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed, device="cpu", **kwargs)
    evaluation = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=500 + seed),
        eval_freq=5_000,
        n_eval_episodes=10,
        callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=400, verbose=0),
    )
    model.learn(int(hyperparams["n_timesteps"]), callback=evaluation)
    if algo_class is SelfDistillQRDQN:
        assert model.distiller.teacher.n_updates >= 1
    assert evaluation.best_mean_reward >= 300


@pytest.mark.slow
@pytest.mark.parametrize("algo_class", [MaskablePPO, SelfDistillMaskablePPO], ids=["ppo_mask", "sd_ppo_mask"])
@pytest.mark.parametrize("seed", [0, 1])
def test_maskable_ppo_learns_the_masked_toy_task(algo_class, seed):
    """ppo_mask.yaml's MaskedIdentity-v0 entry at half its budget; evaluated with masks (the maximum return is 100;
    a random legal action earns 25). Run twice (seeds 0 and 1 each time): passed every time."""
    hyperparams = resolve_hyperparams(
        "sd_ppo_mask" if algo_class is SelfDistillMaskablePPO else "ppo_mask", "MaskedIdentity-v0"
    )
    kwargs = {key: value for key, value in hyperparams.items() if key not in ("policy", "n_envs", "n_timesteps")}
    model = algo_class("MlpPolicy", masked_env(hyperparams["n_envs"], seed), seed=seed, device="cpu", **kwargs)
    model.learn(int(hyperparams["n_timesteps"]) // 2)
    mean, _ = evaluate_policy(model, masked_env(1, 500 + seed), n_eval_episodes=5, use_masking=True)
    assert mean >= 90


class _CountsIllegalActions(gym.Wrapper):
    """Counts the actions the env's mask forbade when they were played."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.illegal = self.steps = 0

    def step(self, action):
        self.illegal += int(not self.env.unwrapped.action_masks()[int(action)])
        self.steps += 1
        return self.env.step(action)


class _WithoutMasks:
    """The same model behind a `predict` that takes no masks, as a plain SB3 algorithm's."""

    def __init__(self, model) -> None:
        self.model = model

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        return self.model.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic)


def test_a_recorded_episode_plays_only_legal_actions():
    """`evaluate --video` plays a masked agent under the env's masks, as training and evaluation do; the same
    untrained policy without them picks an illegal action about 6 times in 10."""
    from rl_selfdistill.evaluation import _play

    def play(wrap) -> tuple[_CountsIllegalActions, list[np.ndarray]]:
        counter = _CountsIllegalActions(MaskedIdentityEnv(render_mode="rgb_array"))
        env = DummyVecEnv([lambda: counter])
        env.seed(0)
        model = SelfDistillMaskablePPO("MlpPolicy", env, seed=0, device="cpu", n_steps=64, batch_size=64)
        frames: list[np.ndarray] = []
        _play(wrap(model), env, SimpleNamespace(append_data=frames.append), max_frames=1_000, deterministic=False)
        return counter, frames

    counter, frames = play(lambda model: model)
    assert counter.steps == 100 and counter.illegal == 0
    assert len(frames) == 100 and frames[0].shape == (32, 320, 3) and frames[0].dtype == np.uint8
    unmasked, _ = play(_WithoutMasks)
    assert unmasked.steps == 100 and unmasked.illegal > 30
