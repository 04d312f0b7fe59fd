"""SelfDistillA2C: equivalence with SB3's A2C, teacher invariants, save/load, variants, CLI throughput, learning."""

import json

import numpy as np
import pytest
import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnvMultiBinary, IdentityEnvMultiDiscrete, SimpleMultiObsEnv
from stable_baselines3.common.vec_env import VecNormalize

from rl_selfdistill import SelfDistillA2C
from rl_selfdistill.cli import main
from rl_selfdistill.config import resolve_hyperparams
from rl_selfdistill.run import TrainRequest, resume_training, run_training
from rl_selfdistill.tune.space import load_space
from tests.helpers import A2C_TINY, StudentHistory, assert_same_parameters, flat, interrupted_copy


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_zero_coef_is_sb3_a2c_bit_for_bit(env_id):
    reference = A2C("MlpPolicy", env_id, seed=3, **A2C_TINY).learn(400)
    model = SelfDistillA2C("MlpPolicy", env_id, seed=3, distill_coef=0, teacher_update_interval=16, **A2C_TINY).learn(400)
    assert_same_parameters(reference.policy, model.policy)
    assert len(model.teacher_networks) == 0 and model.distiller.teacher.n_updates == 0


@pytest.mark.parametrize(
    "env_id,options",
    [
        ("CartPole-v1", {}),
        ("Pendulum-v1", {}),
        # The branches of A2C.train the defaults never enter (and Adam instead of RMSprop).
        ("Pendulum-v1", {"normalize_advantage": True, "use_rms_prop": False}),
    ],
)
def test_before_first_refresh_is_sb3_a2c_bit_for_bit(env_id, options):
    """The copied train() of the distilling path, with no teacher yet, must be A2C's exactly (no extra RNG draws)."""
    kwargs = {**A2C_TINY, **options}
    reference = A2C("MlpPolicy", env_id, seed=4, **kwargs).learn(400)
    model = SelfDistillA2C("MlpPolicy", env_id, seed=4, teacher_update_interval=10**9, **kwargs).learn(400)
    assert_same_parameters(reference.policy, model.policy)
    assert model.logger.name_to_value["train/n_updates"] == reference.logger.name_to_value["train/n_updates"] == 50
    for key in ("train/policy_loss", "train/value_loss", "train/entropy_loss"):
        assert model.logger.name_to_value[key] == reference.logger.name_to_value[key]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_kl_is_zero_right_after_a_hard_snapshot(env_id):
    """A refresh before every rollout: the one gradient step of each rollout measures the KL to a fresh copy."""
    model = SelfDistillA2C("MlpPolicy", env_id, seed=0, teacher_update_interval=8, **A2C_TINY)
    model.learn(8 * 4)
    assert model.distiller.teacher.n_updates == 3
    assert model.logger.name_to_value["distill/kl"] == 0.0
    assert model.logger.name_to_value["distill/teacher_age"] == 8


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_kl_grows_after_the_student_moves(env_id):
    model = SelfDistillA2C("MlpPolicy", env_id, seed=0, teacher_update_interval=32, **A2C_TINY)
    model.learn(8 * 6)  # refresh at step 32, then rollouts trained against the same teacher
    assert model.distiller.teacher.n_updates == 1
    assert model.logger.name_to_value["distill/kl"] > 0.0
    assert model.logger.name_to_value["distill/loss"] == pytest.approx(0.5 * model.logger.name_to_value["distill/kl"])


def test_teacher_is_frozen_independent_and_gets_no_gradient():
    model = SelfDistillA2C("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=32, **A2C_TINY)
    model.learn(256)
    (teacher,) = model.teacher_networks
    assert not teacher.training and getattr(teacher, "optimizer", None) is None
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not {p.data_ptr() for p in model.policy.parameters()} & {p.data_ptr() for p in teacher.parameters()}
    # The rollout's cached teacher outputs carry no graph: the loss's gradient cannot reach the teacher.
    params, values = model._rollout_teacher
    assert not params.requires_grad and values is None
    before = flat(teacher)
    with th.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)
    assert th.equal(flat(teacher), before)


def test_rollout_teacher_outputs_are_the_teachers_distribution_on_every_row():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = SelfDistillA2C("MlpPolicy", env, seed=0, teacher_update_interval=16, **A2C_TINY)
    model.learn(64)
    params, _ = model._rollout_teacher
    observations = model._flat_rollout_observations(model.rollout_buffer)
    (teacher,) = model.teacher_networks
    with th.no_grad():
        expected = teacher.get_distribution(th.as_tensor(observations)).distribution.logits
    assert params.shape == (1, 16, 2)
    th.testing.assert_close(params[0], expected)


def test_save_load_restores_the_teacher_and_continues(tmp_path):
    model = SelfDistillA2C(
        "MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=32, distill_target_kl=1e-6, **A2C_TINY
    ).learn(128)
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillA2C.load(tmp_path / "agent.zip", env=model.get_env(), device="cpu")
    assert len(loaded.teacher_networks) == 1
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    assert isinstance(loaded.policy.optimizer, th.optim.RMSprop)
    for name in ("n_updates", "last_update_step", "_last_interval_index"):
        assert getattr(loaded.distiller.teacher, name) == getattr(model.distiller.teacher, name), name
    assert loaded.distiller.coefficient.adaptive_value == model.distiller.coefficient.adaptive_value != 0.5
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.distiller.teacher.n_updates == 192 // 32 - 1  # refreshed at 32, ..., 160 (192 is the next rollout)


@pytest.mark.parametrize("lag", [1, 3])
def test_lagged_gradient_step_teacher_is_the_student_k_steps_ago(lag):
    model = SelfDistillA2C(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        teacher_mode="lagged",
        teacher_update_unit="gradient_steps",
        teacher_update_interval=lag,
        **A2C_TINY,
    )
    history = StudentHistory(model, model.policy)
    model.learn(80)  # 10 rollouts, one gradient step each
    states = [*history.states, flat(model.policy)]
    assert len(states) == 11
    assert th.equal(flat(model.distiller.teacher.active_members()[0][0]), states[-1 - lag])
    # The teacher moves every step: it runs on the rollout inside train(), nothing is cached per rollout.
    assert model._rollout_teacher is None
    assert np.isfinite(model.logger.name_to_value["distill/kl"]) and model.logger.name_to_value["distill/kl"] > 0


def test_relative_weight_is_c_times_the_ratio_of_the_logged_running_means():
    model = SelfDistillA2C(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        teacher_update_interval=16,
        distill_coef=0.3,
        distill_coef_mode="relative",
        **A2C_TINY,
    )
    model.learn(8 * 8)
    logged = model.logger.name_to_value
    assert logged["distill/kl"] > 0
    ratio = logged["distill/rl_loss_running"] / logged["distill/distill_loss_running"]
    # The last phase's weight was computed from the running means before that phase was added.
    assert logged["distill/coef_relative"] > 0 and np.isfinite(logged["distill/coef"])
    assert model.distiller.relative_factor() == pytest.approx(ratio)


@pytest.mark.parametrize(
    "env_factory,policy",
    [
        (lambda: SimpleMultiObsEnv(random_start=True), "MultiInputPolicy"),
        (lambda: IdentityEnvMultiDiscrete(dim=3), "MlpPolicy"),
        (lambda: IdentityEnvMultiBinary(dim=4), "MlpPolicy"),
    ],
    ids=["dict", "multidiscrete", "multibinary"],
)
def test_other_spaces_distil(env_factory, policy):
    env = make_vec_env(env_factory, n_envs=2, seed=0)
    model = SelfDistillA2C(policy, env, seed=0, teacher_update_interval=32, **A2C_TINY).learn(96)
    assert model.distiller.teacher.n_updates == 2 and model.logger.name_to_value["distill/kl"] > 0


def test_teacher_under_vecnormalize_keeps_its_statistics(tmp_path):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = SelfDistillA2C("MlpPolicy", env, seed=0, teacher_update_interval=32, **A2C_TINY).learn(96)
    assert model.rollout_buffer.raw_observations is not None
    ((_, stats),) = model.distiller.teacher.active_members()
    assert stats is not None and stats.count < env.obs_rms.count  # the statistics of its refresh, not today's
    model.save(tmp_path / "agent.zip")
    loaded = SelfDistillA2C.load(tmp_path / "agent.zip", env=env, device="cpu")
    ((_, loaded_stats),) = loaded.distiller.teacher.active_members()
    assert np.array_equal(loaded_stats.mean, stats.mean) and loaded_stats.count == stats.count


def test_two_resumes_from_one_checkpoint_are_bit_identical(tmp_path, isolated_home):
    """Through the run layer (checkpoints with teacher, optimizer, VecNormalize and RNG states), as for sd_ppo."""
    hyperparams = {"n_steps": 8, "teacher_update_interval": 256, "normalize": True, "policy_kwargs": {"net_arch": [32, 32]}}
    request = TrainRequest(
        algo="sd_a2c",
        env_id="CartPole-v1",
        n_timesteps=1536,
        seed=7,
        vec_env="dummy",
        n_envs=2,
        eval_freq=0,
        save_freq=512,
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
        copy_dir = interrupted_copy(run_dir, tmp_path / f"resumed{attempt}", 512)
        resume_training(copy_dir)
        finals.append(SelfDistillA2C.load(copy_dir / "model.zip", device="cpu"))
    assert finals[0].num_timesteps == finals[1].num_timesteps == 1536
    assert finals[0].distiller.teacher.n_updates == finals[1].distiller.teacher.n_updates == 1536 // 256 - 1
    assert_same_parameters(finals[0].policy, finals[1].policy)
    assert_same_parameters(finals[0].teacher_networks, finals[1].teacher_networks)


def test_presets_resolve_for_a2c_and_sd_a2c():
    base = resolve_hyperparams("a2c", "CartPole-v1")
    sd = resolve_hyperparams("sd_a2c", "CartPole-v1")
    assert base["n_envs"] == sd["n_envs"] == 8 and base["n_timesteps"] == sd["n_timesteps"] == 500_000
    assert sd["teacher_update_interval"] == 2000 and "distill_coef" not in base
    pendulum = resolve_hyperparams("sd_a2c", "Pendulum-v1")
    assert pendulum["use_sde"] is True and pendulum["normalize"] is True and pendulum["gamma"] == 0.9


@pytest.mark.parametrize("algo,tune_base", [("a2c", False), ("sd_a2c", False), ("sd_a2c", True)])
def test_builtin_search_spaces_resolve(algo, tune_base):
    """Every key of the built-in spaces is a valid preset key of the algorithm (checked on the space's first point)."""
    space = load_space(algo, tune_base=tune_base)
    names = set(space.names())
    assert ("n_steps" in names) == (algo == "a2c" or tune_base) and ("distill_coef" in names) == (algo == "sd_a2c")
    assert "batch_size" not in names and "n_epochs" not in names


def test_throughput_pair_through_the_cli(tmp_path, capsys):
    argv = ["throughput", "--env", "CartPole-v1", "--a", "a2c", "--b", "sd_a2c", "--pairs", "1", "-n", "160"]
    argv += ["--n-envs", "2", "--n-steps", "8", "--teacher-update-interval", "64", "--device", "cpu"]
    argv += ["--json", str(tmp_path / "t.json")]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert "trial 1 a2c@dummy:" in output and "trial 1 sd_a2c@dummy:" in output and "ratio B/A:" in output
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["teacher_updates"]["sd_a2c@dummy"] >= 2  # refreshed in the warm-up and again while timed


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sd_a2c_reaches_400_on_cartpole_with_the_zoo_preset(seed):
    """The Zoo's A2C CartPole-v1 entry (8 envs, its 500k-step budget) with sd_a2c.yaml's distillation settings;
    training stops once a deterministic evaluation of 10 episodes averages 400 or more. Held on every run so far:
    this test three times (seeds 0 and 1) and seeds 0-5 once more, each stopping after 10k-30k steps (best evaluations
    429-500); plain A2C with the same preset, seeds 0-2, stopped after 10k-50k steps."""
    hyperparams = resolve_hyperparams("sd_a2c", "CartPole-v1")
    settings = {key: hyperparams[key] for key in ("ent_coef", "distill_coef", "teacher_update_interval", "teacher_mode")}
    env = make_vec_env("CartPole-v1", n_envs=hyperparams["n_envs"], seed=seed)
    stop = StopTrainingOnRewardThreshold(reward_threshold=400, verbose=0)
    evaluation = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=500 + seed),
        eval_freq=5_000 // hyperparams["n_envs"],
        n_eval_episodes=10,
        callback_on_new_best=stop,
    )
    model = SelfDistillA2C("MlpPolicy", env, seed=seed, device="cpu", **settings)
    model.learn(int(hyperparams["n_timesteps"]), callback=evaluation)
    assert model.distiller.teacher.n_updates >= 1
    assert evaluation.best_mean_reward >= 400
