"""SelfDistillRecurrentPPO and SelfDistillTRPO (sb3-contrib): equivalence with their parents, the recurrent teacher's
own LSTM states, the KL term inside TRPO's surrogate, teacher invariants, save/load/resume, refusals, presets, CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch as th

pytest.importorskip("sb3_contrib", reason="sb3-contrib (the contrib extra) is not installed")

import sb3_contrib  # noqa: E402
from sb3_contrib import TRPO, RecurrentPPO  # noqa: E402
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env  # noqa: E402
from stable_baselines3.common.envs import SimpleMultiObsEnv  # noqa: E402
from stable_baselines3.common.vec_env import VecNormalize  # noqa: E402

from rl_selfdistill.algos import registry  # noqa: E402
from rl_selfdistill.algos.recurrent_ppo import SelfDistillRecurrentPPO, padded_rows  # noqa: E402
from rl_selfdistill.algos.trpo import SelfDistillTRPO  # noqa: E402
from rl_selfdistill.cli import main  # noqa: E402
from rl_selfdistill.config import resolve_hyperparams  # noqa: E402
from rl_selfdistill.envs import make_vec_env  # noqa: E402
from rl_selfdistill.errors import UsageError  # noqa: E402
from rl_selfdistill.run import TrainRequest, resume_training, run_training  # noqa: E402
from tests.helpers import assert_same_parameters, flat, interrupted_copy  # noqa: E402

# 2 envs x 16 steps per rollout, minibatches of 16 rows: sequences are cut and padded inside minibatches.
LSTM_TINY = {
    "n_steps": 16,
    "batch_size": 16,
    "n_epochs": 2,
    "device": "cpu",
    "policy_kwargs": {"lstm_hidden_size": 8, "net_arch": [16]},
}
# 2 envs x 32 steps per rollout; the critic's minibatches of 32.
TRPO_TINY = {"n_steps": 32, "batch_size": 32, "n_critic_updates": 2, "device": "cpu", "policy_kwargs": {"net_arch": [16]}}
# Learning checks (slow): the mean return of a deterministic evaluation that must be reached.
LSTM_THRESHOLD = 150
TRPO_THRESHOLD = 475  # CartPole-v1's reward_threshold
CONTRIB_28 = tuple(int(part) for part in sb3_contrib.__version__.split(".")[:2]) >= (2, 8)


def venv(env_id: str, seed: int = 0):
    return make_vec_env(env_id, n_envs=2, backend="dummy", seed=seed)


def lstm_model(env_id: str = "CartPoleNoVel-v1", seed: int = 0, **kwargs):
    return SelfDistillRecurrentPPO("MlpLstmPolicy", venv(env_id, seed), seed=seed, **{**LSTM_TINY, **kwargs})


def trpo_model(env_id: str = "CartPole-v1", seed: int = 0, **kwargs):
    return SelfDistillTRPO("MlpPolicy", venv(env_id, seed), seed=seed, **{**TRPO_TINY, **kwargs})


# ----------------------------------------------------------------------------- the parents, bit for bit


@pytest.mark.parametrize("env_id", ["CartPoleNoVel-v1", "PendulumNoVel-v1"])
@pytest.mark.parametrize("interval", [None, 10**9], ids=["weight0", "before_refresh"])
def test_recurrent_ppo_is_its_parent_bit_for_bit(env_id, interval):
    """Weight 0 runs RecurrentPPO's own train(); before the first refresh the copied train() must match it exactly."""
    reference = RecurrentPPO("MlpLstmPolicy", venv(env_id, 3), seed=3, **LSTM_TINY).learn(96)
    options = {"distill_coef": 0} if interval is None else {"teacher_update_interval": interval}
    model = lstm_model(env_id, 3, **options).learn(96)
    assert_same_parameters(reference.policy, model.policy)
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/n_updates", "train/approx_kl"):
        assert model.logger.name_to_value[key] == reference.logger.name_to_value[key]
    assert len(model.teacher_networks) == 0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("interval", [None, 10**9], ids=["weight0", "before_refresh"])
def test_trpo_is_its_parent_bit_for_bit(env_id, interval):
    if interval is not None and not CONTRIB_28:
        pytest.skip("the copy follows sb3-contrib 2.8's TRPO.train: 2.7 takes a float32 step size (algos/ported.py)")
    reference = TRPO("MlpPolicy", venv(env_id, 3), seed=3, **TRPO_TINY).learn(192)
    options = {"distill_coef": 0} if interval is None else {"teacher_update_interval": interval}
    model = trpo_model(env_id, 3, **options).learn(192)
    assert_same_parameters(reference.policy, model.policy)
    for key in ("train/policy_objective", "train/kl_divergence_loss", "train/value_loss"):
        assert model.logger.name_to_value[key] == reference.logger.name_to_value[key]


# ----------------------------------------------------------------------------- the recurrent teacher


class RolloutRecorder:
    """Wraps the model's real train(): before each update, a copy of the rollout, the teacher and its cached outputs."""

    def __init__(self, model) -> None:
        self.rollouts: list[dict] = []
        original = model.train

        def train() -> None:
            buffer = model.rollout_buffer
            teacher = model.distiller.teacher
            self.rollouts.append(
                {
                    "observations": buffer.observations.copy(),  # (n_steps, n_envs, obs), not yet flattened
                    "episode_starts": buffer.episode_starts.copy(),
                    "start_state": (buffer.hidden_states_pi[0].copy(), buffer.cell_states_pi[0].copy()),
                    "teacher": copy.deepcopy(model.teacher_networks[0]) if teacher.is_ready else None,
                    "n_updates": teacher.n_updates,
                    "cache": None if model._rollout_teacher is None else model._rollout_teacher[0][0].clone(),
                }
            )
            original()

        model.train = train


def replay(teacher, rollouts: list[dict]) -> list[th.Tensor]:
    """The teacher stepped one env step at a time through consecutive rollouts, from the first one's start state."""
    state = tuple(th.as_tensor(part) for part in rollouts[0]["start_state"])
    outputs = []
    for rollout in rollouts:
        steps = []
        for obs, starts in zip(rollout["observations"], rollout["episode_starts"], strict=True):
            with th.no_grad():
                distribution, state = teacher.get_distribution(th.as_tensor(obs), state, th.as_tensor(starts).float())
            steps.append(distribution.distribution.logits)
        outputs.append(th.stack(steps))  # (n_steps, n_envs, actions)
    return outputs


def test_recurrent_teacher_outputs_equal_a_step_by_step_replay_through_the_rollouts():
    """The batched pass over each rollout's sequences, with the teacher's LSTM state carried from one rollout to the
    next, gives what the teacher stepped env step by env step from its refresh onwards gives."""
    model = lstm_model(teacher_update_interval=64)
    recorder = RolloutRecorder(model)
    model.learn(32 * 4)  # refresh before the 3rd rollout, kept for the 4th
    third, fourth = recorder.rollouts[2:]
    assert third["n_updates"] == fourth["n_updates"] == 1 and third["cache"] is not None
    assert any(rollout["episode_starts"][1:].any() for rollout in (third, fourth))  # episodes end inside the rollouts
    replayed = replay(third["teacher"], [third, fourth])
    for rollout, expected in zip((third, fourth), replayed, strict=True):
        cached = rollout["cache"].reshape(2, 16, -1).transpose(0, 1)  # env-major rows -> (n_steps, n_envs, p)
        th.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-6)


def test_minibatch_padding_rows_line_up_with_sb3_contrib_sequences():
    model = lstm_model(teacher_update_interval=32).learn(64)
    buffer = model.rollout_buffer
    observations = buffer.observations  # flat, env-major (get() has run)
    for samples in buffer.get(8):
        rows = buffer.last_padded_rows
        assert np.array_equal(rows >= 0, samples.mask.numpy() > 0)
        assert np.array_equal(observations[rows[rows >= 0]], samples.observations.numpy()[rows >= 0])
    # Two sequences of lengths 2 and 3 padded to 3: positions 0, 1 of the first, 0, 1, 2 of the second.
    assert padded_rows(np.array([7, 8, 0, 1, 2]), np.array([0, 2])).tolist() == [7, 8, -1, 0, 1, 2]


@pytest.mark.parametrize("env_id", ["CartPoleNoVel-v1", "PendulumNoVel-v1"])
def test_recurrent_kl_is_zero_right_after_a_hard_snapshot(env_id):
    """One epoch, one minibatch per rollout, a refresh before every rollout: the KL is measured before any step."""
    model = lstm_model(env_id, teacher_update_interval=32, n_epochs=1, batch_size=32).learn(32 * 4)
    assert model.distiller.teacher.n_updates == 3
    assert model.logger.name_to_value["distill/kl"] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("env_id", ["CartPoleNoVel-v1", "PendulumNoVel-v1"])
def test_recurrent_kl_grows_once_the_teacher_moved(env_id):
    model = lstm_model(env_id, teacher_update_interval=64).learn(32 * 4)
    logged = model.logger.name_to_value
    assert model.distiller.teacher.n_updates == 1 and logged["distill/kl"] > 0
    assert logged["distill/loss"] == pytest.approx(0.5 * logged["distill/kl"])
    assert logged["distill/teacher_updates"] == 1 and "distill/coef" in logged


@pytest.mark.parametrize(
    "options",
    [
        {"teacher_mode": "ensemble", "teacher_ensemble_size": 2, "distill_value_coef": 0.5},
        {"teacher_mode": "ema", "teacher_tau": 0.5, "distill_coef_mode": "relative"},
        {"teacher_mode": "lagged", "teacher_update_unit": "phases", "teacher_update_interval": 1, "distill_gate": True},
        {"teacher_mode": "reset", "teacher_update_interval": 64, "reset_parts": "heads", "distill_target_kl": 0.01},
    ],
    ids=["ensemble_value", "ema_relative", "lagged_phases", "reset_adaptive"],
)
def test_recurrent_teacher_modes_train_and_log(options):
    model = lstm_model(**{"teacher_update_interval": 32, **options}).learn(32 * 4)
    logged = model.logger.name_to_value
    assert model.distiller.teacher.is_ready and np.isfinite(logged["distill/kl"]) and logged["distill/kl"] > -1e-6
    if "distill_value_coef" in options:
        assert logged["distill/value_loss"] > 0 and model._rollout_teacher[1].shape == (2, 32)


def test_recurrent_teacher_on_dict_observations_and_under_vecnormalize():
    dict_env = sb3_make_vec_env(lambda: SimpleMultiObsEnv(random_start=True), n_envs=2, seed=0)
    model = SelfDistillRecurrentPPO("MultiInputLstmPolicy", dict_env, seed=0, teacher_update_interval=64, **LSTM_TINY)
    model.learn(32 * 4)
    assert model.distiller.teacher.n_updates == 1 and model.logger.name_to_value["distill/kl"] > 0
    normalized = VecNormalize(venv("PendulumNoVel-v1"))
    model = SelfDistillRecurrentPPO("MlpLstmPolicy", normalized, seed=0, teacher_update_interval=64, **LSTM_TINY)
    model.learn(32 * 4)
    ((_, stats),) = model.distiller.teacher.active_members()
    assert model.rollout_buffer.raw_observations is not None and stats.count < normalized.obs_rms.count
    assert model.logger.name_to_value["distill/kl"] > 0


# ----------------------------------------------------------------------------- the KL term inside TRPO's surrogate


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_trpo_kl_is_zero_right_after_a_hard_snapshot_and_grows_after(env_id):
    model = trpo_model(env_id, teacher_update_interval=64).learn(64 * 3)
    assert model.distiller.teacher.n_updates == 2  # refreshed before the 2nd and 3rd rollouts
    assert model.logger.name_to_value["distill/kl"] == 0.0  # measured where TRPO measures its surrogate
    model = trpo_model(env_id, teacher_update_interval=128).learn(64 * 4)  # refreshed before the 3rd rollout only
    logged = model.logger.name_to_value
    assert model.distiller.teacher.n_updates == 1 and logged["distill/kl"] > 0
    assert logged["distill/loss"] == pytest.approx(0.5 * logged["distill/kl"])


def teacher_kl(model) -> float:
    """KL(teacher || student) over the rollout in the buffer, from the teacher's cached outputs."""
    buffer = model.rollout_buffer
    with th.no_grad():
        student = model.policy_kl.params(model.policy, model.policy.get_distribution(th.as_tensor(buffer.observations)))
    return float(model.policy_kl.mean_over_teachers(model._rollout_teacher[0], student))


def test_trpo_distillation_is_in_the_search_direction_and_the_line_search_alike():
    """With every advantage 0 TRPO's own surrogate is flat: its direction is 0 and its line search cannot improve on
    0. Only a distillation term in both the gradient and the line search's objective yields an accepted step, and
    that step moves the policy towards the teacher, inside the trust region."""
    model = trpo_model(teacher_update_interval=128, distill_coef=1.0).learn(64 * 3)
    model.rollout_buffer.advantages[:] = 0.0
    before_kl, before = teacher_kl(model), flat(model.policy)
    model.train()
    logged = model.logger.name_to_value
    assert logged["train/is_line_search_success"] == 1.0
    assert 0 < logged["train/kl_divergence_loss"] < model.target_kl
    assert teacher_kl(model) < before_kl and not th.equal(flat(model.policy), before)
    plain = TRPO("MlpPolicy", venv("CartPole-v1"), seed=0, **TRPO_TINY).learn(64 * 3)
    plain.rollout_buffer.advantages[:] = 0.0
    plain.train()
    assert plain.logger.name_to_value["train/is_line_search_success"] == 0.0


def test_trpo_teacher_per_policy_update_runs_on_the_rollout_in_train():
    model = trpo_model(teacher_mode="lagged", teacher_update_unit="gradient_steps", teacher_update_interval=1)
    model.learn(64 * 4)
    assert model._rollout_teacher is None and model.logger.name_to_value["distill/kl"] > 0


# ----------------------------------------------------------------------------- both classes: invariants and files

BUILDERS = {"recurrent_ppo": (lstm_model, 32), "trpo": (trpo_model, 64)}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_teacher_is_frozen_independent_and_gets_no_gradient(name):
    build, rollout = BUILDERS[name]
    model = build(teacher_update_interval=2 * rollout).learn(4 * rollout)
    (teacher,) = model.teacher_networks
    assert not teacher.training and getattr(teacher, "optimizer", None) is None
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not {p.data_ptr() for p in model.policy.parameters()} & {p.data_ptr() for p in teacher.parameters()}
    assert not model._rollout_teacher[0].requires_grad
    before = flat(teacher)
    with th.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)
    assert th.equal(flat(teacher), before)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_save_load_restores_the_teacher_and_continues(tmp_path, name):
    build, rollout = BUILDERS[name]
    model = build(teacher_update_interval=2 * rollout, distill_target_kl=1e-6).learn(5 * rollout)
    model.save(tmp_path / "agent.zip")
    loaded = type(model).load(tmp_path / "agent.zip", env=model.get_env(), device="cpu")
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    assert loaded.distiller.teacher.n_updates == model.distiller.teacher.n_updates == 2
    assert loaded.distiller.coefficient.adaptive_value == model.distiller.coefficient.adaptive_value != 0.5
    loaded.learn(3 * rollout, reset_num_timesteps=False)  # refreshed before the 2nd of these rollouts
    assert loaded.distiller.teacher.n_updates == 3 and loaded.logger.name_to_value["distill/kl"] > 0


@pytest.mark.parametrize("name", list(BUILDERS))
def test_parameters_have_the_parents_structure_until_a_teacher_exists(name):
    build, rollout = BUILDERS[name]
    model = build(teacher_update_interval=2 * rollout)
    parent = RecurrentPPO("MlpLstmPolicy", venv("CartPoleNoVel-v1"), **LSTM_TINY) if name == "recurrent_ppo" else None
    parent = parent or TRPO("MlpPolicy", venv("CartPole-v1"), **TRPO_TINY)
    assert list(model.get_parameters()) == list(parent.get_parameters())
    model.learn(3 * rollout)
    params = copy.deepcopy(model.get_parameters())
    assert list(params) == [*parent.get_parameters(), "teacher_networks"]
    fresh = build(teacher_update_interval=2 * rollout, seed=1)
    fresh.set_parameters(params, exact_match=False)  # no teacher yet: the student is set, the teacher skipped
    assert len(fresh.teacher_networks) == 0
    assert_same_parameters(fresh.policy, model.policy)


@pytest.mark.parametrize(
    "algo,env_id,hyperparams",
    [
        ("sd_ppo_lstm", "CartPoleNoVel-v1", {**LSTM_TINY, "teacher_update_interval": 128}),
        ("sd_trpo", "CartPole-v1", {**TRPO_TINY, "teacher_update_interval": 128}),
    ],
)
def test_two_resumes_from_one_checkpoint_are_bit_identical(tmp_path, isolated_home, algo, env_id, hyperparams):
    """Through the run layer: checkpoints with teacher, optimizer and RNG states, as for sd_ppo and sd_a2c."""
    hyperparams = {key: value for key, value in hyperparams.items() if key != "device"}
    request = TrainRequest(
        algo=algo,
        env_id=env_id,
        n_timesteps=512,
        seed=7,
        vec_env="dummy",
        n_envs=2,
        eval_freq=0,
        save_freq=128,
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
        copy_dir = interrupted_copy(run_dir, tmp_path / f"resumed{attempt}", 256)
        resume_training(copy_dir)
        finals.append(registry.algo_class(algo).load(copy_dir / "model.zip", device="cpu"))
    assert finals[0].num_timesteps == finals[1].num_timesteps == 512
    assert finals[0].distiller.teacher.n_updates == finals[1].distiller.teacher.n_updates == 3
    assert_same_parameters(finals[0].policy, finals[1].policy)
    assert_same_parameters(finals[0].teacher_networks, finals[1].teacher_networks)


@pytest.mark.parametrize(
    "build,options,match",
    [
        (lstm_model, {"teacher_update_unit": "gradient_steps"}, "own LSTM states"),
        (
            lstm_model,
            {"teacher_mode": "lagged", "teacher_update_unit": "gradient_steps", "teacher_update_interval": 2},
            "phases",
        ),
        (lstm_model, {"distill_separate_batch": True}, "distill_separate_batch=False"),
        (trpo_model, {"distill_coef_mode": "relative"}, "distill_coef_mode=fixed"),
        (trpo_model, {"distill_value_coef": 0.5}, "distill_value_coef=0"),
        (trpo_model, {"distill_separate_batch": True}, "distill_separate_batch=False"),
    ],
)
def test_modes_that_cannot_apply_are_refused_in_one_line(build, options, match):
    with pytest.raises(UsageError, match=match) as error:
        build(**options)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- envs, presets, CLI


def test_no_velocity_cartpole_hides_the_velocities_of_the_same_states():
    full, hidden = venv("CartPole-v1", 5), venv("CartPoleNoVel-v1", 5)
    obs_full, obs_hidden = full.reset(), hidden.reset()
    for _ in range(5):
        assert np.array_equal(obs_hidden[:, [0, 2]], obs_full[:, [0, 2]]) and not obs_hidden[:, [1, 3]].any()
        obs_full, *_ = full.step(np.array([0, 1]))
        obs_hidden, *_ = hidden.step(np.array([0, 1]))
    assert make_vec_env("CartPoleNoVel-v1", n_envs=2, backend="subproc", seed=0).reset()[:, [1, 3]].sum() == 0


def test_presets_layer_sd_on_the_zoo_values():
    lstm, sd_lstm = resolve_hyperparams("ppo_lstm", "CartPoleNoVel-v1"), resolve_hyperparams("sd_ppo_lstm", "CartPoleNoVel-v1")
    assert lstm["policy"] == sd_lstm["policy"] == "MlpLstmPolicy" and lstm["n_steps"] == sd_lstm["n_steps"] == 32
    assert sd_lstm["teacher_update_interval"] == 1024 and "distill_coef" not in lstm
    trpo, sd_trpo = resolve_hyperparams("trpo", "CartPole-v1"), resolve_hyperparams("sd_trpo", "CartPole-v1")
    assert trpo["n_critic_updates"] == sd_trpo["n_critic_updates"] == 20 and sd_trpo["teacher_update_interval"] == 4096
    assert resolve_hyperparams("sd_trpo", "Pendulum-v1")["use_sde"] is False
    with pytest.raises(UsageError, match="MlpLstmPolicy"):
        resolve_hyperparams("sd_ppo_lstm", "CartPoleNoVel-v1", {"policy": "MlpPolicy"})


@pytest.mark.parametrize(
    "env_id,base,sd,extra",
    [
        ("CartPoleNoVel-v1", "ppo_lstm", "sd_ppo_lstm", ["--n-steps", "16"]),
        ("CartPole-v1", "trpo", "sd_trpo", ["--n-steps", "32"]),
    ],
)
def test_throughput_pair_through_the_cli(tmp_path, capsys, env_id, base, sd, extra):
    argv = ["throughput", "--env", env_id, "--a", base, "--b", sd, "--pairs", "1", "-n", "256", "--n-envs", "2"]
    argv += [*extra, "--teacher-update-interval", "64", "--device", "cpu", "--json", str(tmp_path / "t.json")]
    assert main(argv) == 0
    assert f"trial 1 {sd}@dummy:" in capsys.readouterr().out
    assert json.loads((tmp_path / "t.json").read_text())["teacher_updates"][f"{sd}@dummy"] >= 1


# ----------------------------------------------------------------------------- learning checks (slow)


def learns(model, env_id: str, seed: int, threshold: float, budget: int) -> float:
    """Trains until a deterministic evaluation of 10 episodes averages `threshold` or the budget is spent."""
    stop = StopTrainingOnRewardThreshold(reward_threshold=threshold, verbose=0)
    evaluation = EvalCallback(
        make_vec_env(env_id, n_envs=1, backend="dummy", seed=500 + seed),
        eval_freq=max(1, 4096 // model.n_envs),
        n_eval_episodes=10,
        callback_on_new_best=stop,
        verbose=1,  # each evaluation printed (pytest -s)
    )
    model.learn(budget, callback=evaluation)
    # Shown with pytest -s: what the docstrings' records of past runs are made of.
    print(f"{type(model).__name__} seed {seed}: best {evaluation.best_mean_reward:.1f} after {model.num_timesteps} steps")
    return evaluation.best_mean_reward


def zoo_model(algo: str, env_id: str, seed: int, **overrides):
    """The algorithm with its preset for `env_id` (the RL Zoo's values, SD layered on), built as the run layer does."""
    from rl_selfdistill.config import model_kwargs

    hyperparams = resolve_hyperparams(algo, env_id, overrides)
    env = make_vec_env(env_id, n_envs=hyperparams["n_envs"], backend="dummy", seed=seed)
    policy = hyperparams["policy"]
    return registry.algo_class(algo)(policy, env, seed=seed, device="cpu", **model_kwargs(hyperparams)), hyperparams


@pytest.mark.slow
@pytest.mark.timeout(3600)  # an LSTM over sequences, 20 epochs: on a loaded CPU a run can pass the 900 s default
@pytest.mark.parametrize("seed", [0, 1])
def test_sd_ppo_lstm_learns_cartpole_with_the_velocities_hidden(seed):
    """The Zoo's ppo_lstm CartPoleNoVel-v1 entry (8 envs x 32 steps, 20 epochs, its 100k-step budget) with
    sd_ppo_lstm.yaml's distillation settings, and a 32-unit LSTM instead of 256 (less CPU); training stops once a
    deterministic evaluation of 10 episodes averages 150 (random play: 22; the pole's angle alone, without memory,
    does not keep it up that long). Record: seed 0 ran twice (best 154 after 16k steps both times; 172 after 20k
    in the run that went on), seeds 1, 2 and 3 once (162 after 20k, 210 and 197 after 12k steps), each about 10
    minutes on a loaded 2-core machine: every run passed."""
    model, hyperparams = zoo_model("sd_ppo_lstm", "CartPoleNoVel-v1", seed, policy_kwargs={"lstm_hidden_size": 32})
    best = learns(model, "CartPoleNoVel-v1", seed, threshold=LSTM_THRESHOLD, budget=hyperparams["n_timesteps"])
    assert model.distiller.teacher.n_updates >= 1
    assert best >= LSTM_THRESHOLD


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sd_trpo_learns_cartpole(seed):
    """The Zoo's TRPO CartPole-v1 entry (2 envs x 512 steps, 20 critic updates, its 100k-step budget) with
    sd_trpo.yaml's distillation settings (a refresh every 4096 steps); training stops once a deterministic evaluation
    of 10 episodes averages 475, CartPole-v1's reward threshold. Held on every run: seeds 0-4 once each (best
    486-500 after 8k-29k steps) and seeds 0 and 1 once more. A threshold of 400 was reached by seeds 3 and 4 at the
    first evaluation, before the first refresh, so it did not test distillation. Plain TRPO, same preset, seeds 0
    and 1: 500 after 29k and 12k steps."""
    model, hyperparams = zoo_model("sd_trpo", "CartPole-v1", seed)
    best = learns(model, "CartPole-v1", seed, threshold=TRPO_THRESHOLD, budget=hyperparams["n_timesteps"])
    assert model.distiller.teacher.n_updates >= 1
    assert best >= TRPO_THRESHOLD


def test_recurrent_minibatch_stopped_by_target_kl_adds_nothing_to_the_distillation_records():
    from tests.test_algos import count_distilled_and_taken_steps

    model = lstm_model(teacher_update_interval=32, target_kl=1e-9, batch_size=8, learning_rate=1e-2)
    recorded, taken = count_distilled_and_taken_steps(model)
    model.learn(32 * 4)
    with_teacher = [(kls, steps) for kls, steps in zip(recorded, taken[:-1]) if kls]
    assert len(with_teacher) == 3 and any(steps < 8 for _, steps in with_teacher)  # the early stop happened
    assert all(kls == steps for kls, steps in with_teacher)
