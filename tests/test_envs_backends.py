"""MuJoCo and classic control under every backend, truncation, VecNormalize round trips, and user errors."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecNormalize

from rl_selfdistill.envs import EnvPoolVecEnv, make_vec_env
from rl_selfdistill.envs.device import configure_torch_threads, recommended_torch_threads
from rl_selfdistill.envs.registry import MUJOCO_IDS, resolve
from rl_selfdistill.errors import UsageError

pytest.importorskip("mujoco")
pytest.importorskip("envpool")


def _spaces(env_id: str, backend: str) -> tuple:
    venv = make_vec_env(env_id, n_envs=2, backend=backend, seed=0)
    try:
        obs = venv.reset()
        assert obs.shape == (2, *venv.observation_space.shape) and obs.dtype == venv.observation_space.dtype
        obs, rewards, dones, _ = venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
        assert rewards.shape == (2,) and dones.shape == (2,)
        return venv.observation_space, venv.action_space
    finally:
        venv.close()


@pytest.mark.parametrize("env_id", MUJOCO_IDS)
def test_mujoco_builds_with_matching_spaces(env_id):
    assert _spaces(env_id, "dummy") == _spaces(env_id, "envpool")


# Subproc workers import torch and SB3 (seconds each on 2 cores): the fast suite checks subproc spaces for
# HalfCheetah in the truncation test below; -m slow checks every MuJoCo id.
@pytest.mark.slow
@pytest.mark.parametrize("env_id", MUJOCO_IDS)
def test_mujoco_subproc_matches_dummy(env_id):
    assert _spaces(env_id, "subproc") == _spaces(env_id, "dummy")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "LunarLander-v3", "Pendulum-v1"])
def test_classic_control_builds_with_matching_spaces(env_id):
    pytest.importorskip("Box2D") if env_id.startswith("LunarLander") else None
    assert _spaces(env_id, "dummy") == _spaces(env_id, "envpool")


@pytest.mark.parametrize("backend", ["dummy", "subproc", "envpool"])
def test_mujoco_truncation_gives_true_final_observation(backend):
    """HalfCheetah never terminates: with max_episode_steps=20 every episode is a truncation at step 20."""
    steps = 45
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(steps, 1, 6)).astype(np.float32)
    short = make_vec_env("HalfCheetah-v5", n_envs=1, backend=backend, seed=3, max_episode_steps=20)
    reference = make_vec_env("HalfCheetah-v5", n_envs=1, backend="dummy" if backend == "subproc" else backend, seed=3)
    try:
        assert (short.observation_space, short.action_space) == (reference.observation_space, reference.action_space)
        ref_obs = [reference.reset()[0]] + [reference.step(a)[0][0] for a in actions]
        short.reset()
        done_at = []
        for t, action in enumerate(actions):
            obs, _, done, infos = short.step(action)
            if done[0]:
                done_at.append(t + 1)
                assert infos[0]["TimeLimit.truncated"] is True
                assert infos[0]["episode"]["l"] == 20
                if len(done_at) == 1:
                    np.testing.assert_allclose(infos[0]["terminal_observation"], ref_obs[t + 1])
                    assert not np.allclose(obs[0], ref_obs[t + 1])
    finally:
        short.close()
        reference.close()
    assert done_at == [20, 40]  # no lost step at the episode boundary (EnvPool's lazy reset is hidden)


@pytest.mark.parametrize("backend", ["dummy", "envpool"])
def test_classic_termination_is_not_truncation(backend):
    venv = make_vec_env("CartPole-v1", n_envs=2, backend=backend, seed=0)
    try:
        venv.reset()
        ends = []
        for _ in range(200):
            _, _, dones, infos = venv.step(np.zeros(2, dtype=np.int64))  # always push left: falls in ~10 steps
            ends += [infos[i] for i in np.flatnonzero(dones)]
    finally:
        venv.close()
    assert len(ends) >= 4
    assert all(info["TimeLimit.truncated"] is False and "terminal_observation" in info for info in ends)
    assert all(info["episode"]["l"] < 50 and info["episode"]["r"] == info["episode"]["l"] for info in ends)


@pytest.mark.parametrize("backend", ["dummy", "envpool"])
def test_env_i_is_seeded_with_seed_plus_i_and_unaffected_by_other_envs_resets(backend):
    """Env 1 of a 2-env VecEnv (seed 0) replays a 1-env VecEnv with seed 1, although env 0 ends at other times.

    This checks that restarting finished envs (EnvPool's extra step on a subset) leaves the others untouched.
    """
    actions = np.random.default_rng(0).integers(0, 2, size=(300, 2))
    pair = make_vec_env("CartPole-v1", n_envs=2, backend=backend, seed=0)
    single = make_vec_env("CartPole-v1", n_envs=1, backend=backend, seed=1)
    try:
        np.testing.assert_array_equal(pair.reset()[1], single.reset()[0])
        dones_0 = 0
        for action in actions:
            obs_pair, _, done_pair, _ = pair.step(action)
            obs_single, _, done_single, _ = single.step(action[1:])
            dones_0 += done_pair[0]
            np.testing.assert_array_equal(obs_pair[1], obs_single[0])
            assert done_pair[1] == done_single[0]
    finally:
        pair.close()
        single.close()
    assert dones_0 >= 5


@pytest.mark.parametrize("backend", ["dummy", "envpool"])
def test_vecnormalize_statistics_round_trip(backend, tmp_path):
    venv = VecNormalize(make_vec_env("HalfCheetah-v5", n_envs=2, backend=backend, seed=0))
    venv.reset()
    for _ in range(30):
        venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
    path = tmp_path / "vecnormalize.pkl"
    venv.save(str(path))
    restored = VecNormalize.load(str(path), make_vec_env("HalfCheetah-v5", n_envs=2, backend=backend, seed=1))
    try:
        np.testing.assert_array_equal(restored.obs_rms.mean, venv.obs_rms.mean)
        np.testing.assert_array_equal(restored.obs_rms.var, venv.obs_rms.var)
        np.testing.assert_array_equal(restored.ret_rms.var, venv.ret_rms.var)
        assert restored.obs_rms.count == venv.obs_rms.count > 30
        raw = np.random.default_rng(0).normal(size=(2, 17))
        np.testing.assert_allclose(restored.normalize_obs(raw), venv.normalize_obs(raw))
    finally:
        venv.close()
        restored.close()


def test_envpool_vecenv_reports_episode_stats_to_sb3():
    """SB3's evaluate_policy and ep_info_buffer rely on Monitor-style infos; the adapter claims and provides them."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    venv = make_vec_env("CartPole-v1", n_envs=2, backend="envpool", seed=0)
    try:
        assert isinstance(venv, EnvPoolVecEnv) and venv.env_is_wrapped(Monitor) == [True, True]

        class AlwaysLeft:
            def predict(self, obs, state=None, episode_start=None, deterministic=True):
                return np.zeros(len(obs), dtype=np.int64), None

        rewards, lengths = evaluate_policy(AlwaysLeft(), venv, n_eval_episodes=4, return_episode_rewards=True)
    finally:
        venv.close()
    assert len(rewards) == 4 and rewards == [float(n) for n in lengths] and max(lengths) < 50


def test_video_recorder_works_on_atari(tmp_path):
    pytest.importorskip("moviepy")
    from stable_baselines3.common.vec_env import VecVideoRecorder

    venv = make_vec_env("ALE/Pong-v5", n_envs=1, seed=0, render_mode="rgb_array")  # auto: not envpool
    venv = VecVideoRecorder(venv, str(tmp_path), record_video_trigger=lambda step: step == 0, video_length=20)
    try:
        venv.reset()
        for _ in range(25):
            venv.step(np.zeros(1, dtype=np.int64))
    finally:
        venv.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


# --- user errors: one line, naming the problem and the fix ---------------------------------------------------
def _one_line_error(**kwargs) -> str:
    with pytest.raises(UsageError) as err:
        make_vec_env(**kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_env_id_lists_closest_ids():
    message = _one_line_error(env_id="HalfCheeta-v5")
    assert "unknown env id 'HalfCheeta-v5'" in message and "HalfCheetah-v5" in message
    assert "ALE/Pong-v5" in _one_line_error(env_id="ALE/Pongg-v5")


def test_unavailable_backend_names_the_backends_that_have_it():
    message = _one_line_error(env_id="FrozenLake-v1", backend="envpool")
    assert "not available on backend 'envpool'" in message and "dummy, subproc" in message


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"env_id": "CartPole-v1", "backend": "gpu"}, "unknown backend 'gpu'"),
        ({"env_id": "CartPole-v1", "n_envs": 0}, "n_envs must be a positive integer"),
        ({"env_id": "CartPole-v1", "wrapper_kwargs": {"noop_max": 3}}, "not an Atari env"),
        ({"env_id": "ALE/Pong-v5", "wrapper_kwargs": {"noop": 3}}, "unknown Atari wrapper option"),
        ({"env_id": "ALE/Pong-v5", "backend": "envpool", "wrapper_kwargs": {"noop_max": 0}}, "noop_max=0"),
        ({"env_id": "CartPole-v1", "backend": "dummy", "env_kwargs": {"bogus": 1}}, "bad env_kwargs"),
        ({"env_id": "CartPole-v1", "backend": "envpool", "render_mode": "rgb_array"}, "render_mode is not supported"),
        ({"env_id": "CartPole-v1", "backend": "envpool", "env_kwargs": {"bogus": 1}}, "bad env_kwargs"),
    ],
)
def test_bad_arguments_give_one_line_errors(kwargs, fragment):
    assert fragment in _one_line_error(**kwargs)


def test_auto_backend_choice():
    assert resolve("PongNoFrameskip-v4").envpool_id == "Pong-v5"
    from rl_selfdistill.envs.registry import choose_backend

    assert choose_backend(resolve("ALE/Pong-v5"), "auto", 8) == "envpool"
    assert choose_backend(resolve("FrozenLake-v1"), "auto", 8) == "subproc"
    assert choose_backend(resolve("FrozenLake-v1"), "auto", 1) == "dummy"
    from rl_selfdistill.envs import resolve_backend

    assert resolve_backend("HalfCheetah-v5", "auto", 4) == "envpool" and resolve_backend("Hopper-v5", "subproc") == "subproc"


def test_torch_threads_leave_cores_to_env_workers(monkeypatch):
    import torch

    assert recommended_torch_threads(8, "subproc", cores=2) == 1
    assert recommended_torch_threads(8, "envpool", cores=16) == 8
    assert recommended_torch_threads(8, "dummy", cores=2) == 2
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("RL_SELFDISTILL_TORCH_THREADS", "1")
    try:
        assert configure_torch_threads(8, "dummy") == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_busy_machine_is_named_when_the_planned_threads_do_not_fit():
    from rl_selfdistill.envs.device import busy_machine_note

    # Another job keeps one of two cores busy: two threads oversubscribe, one fits.
    note = busy_machine_note(2, cores=2, load=1.1)
    assert note is not None and "load average 1.1" in note and "--cpus-per-run" in note
    assert busy_machine_note(1, cores=2, load=1.1) is None
    assert busy_machine_note(2, cores=2, load=0.3) is None  # an idle machine: all cores are this command's
    assert busy_machine_note(4, cores=16, load=6.0) is None


def test_benchmark_names_a_busy_machine_before_its_runs(tmp_path, capfd, monkeypatch):
    """The kernel's load average is replaced here (the one fake in this test): a real one cannot be set to a known
    value in a test. Everything else is a real benchmark, which plans all cores for its one run."""
    import os

    from rl_selfdistill.cli import main
    from rl_selfdistill.envs.device import available_cores

    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.5, 1.5))
    argv = ["benchmark", "--envs", "CartPole-v1", "--algos", "ppo", "--seeds", "1", "-n", "256", "--eval-freq", "0"]
    argv += ["--save-freq", "0", "--wandb-mode", "disabled", "--device", "cpu", "--vec-env", "dummy"]
    assert main([*argv, "--cpus-per-run", str(available_cores()), "-o", str(tmp_path / "all")]) == 0
    assert "this machine is already busy (load average 1.5" in capfd.readouterr().err


# Each CLI call starts a fresh interpreter (torch, SB3, W&B imports): one runs in the fast suite; the function-level
# tests above cover the same messages.
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--env", "HalfCheeta-v5"], "unknown env id 'HalfCheeta-v5'; closest valid ids: HalfCheetah-v5"),
        pytest.param(
            ["--env", "FrozenLake-v1", "--vec-env", "envpool"], "backends that have it: dummy, subproc", marks=pytest.mark.slow
        ),
    ],
)
def test_cli_reports_env_errors_in_one_line(run_cli, tmp_path, args, fragment):
    result = run_cli("train", "--algo", "ppo", "-n", "64", "--run-dir", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_an_env_registered_after_the_first_lookup_is_found():
    """A --gym-packages module imported late (e.g. on resume) registers ids after the id list was first read."""
    import gymnasium

    from rl_selfdistill.envs import resolve

    resolve("CartPole-v1")  # reads and caches the registered ids
    gymnasium.register(id="LateCartPole-v0", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv")
    try:
        assert resolve("LateCartPole-v0").family == "gym"
    finally:
        gymnasium.registry.pop("LateCartPole-v0")
