"""Paired A/B throughput measurement, with real (tiny) PPO/SelfDistillPPO and DQN/SelfDistillDQN training."""

import dataclasses
import json
import statistics
import time

import pytest
import torch as th

from rl_selfdistill.algos import registry
from rl_selfdistill.benchmark.throughput import (
    AlgoSpec,
    ThroughputSettings,
    algo_kwargs,
    alternate,
    check_pair,
    measure_throughput,
    median_paired_ratio,
)
from rl_selfdistill.cli import main
from rl_selfdistill.errors import UsageError

TINY = ThroughputSettings(
    n_envs=4, timesteps=128, device="cpu", n_steps=32, n_epochs=1, batch_size=64, teacher_update_interval=128
)


def test_alternate_runs_the_variants_round_robin_and_reports_each_value():
    calls, reported = [], []

    def trial(name):
        def run():
            calls.append(name)
            return len(calls)

        return run

    results = alternate({"a": trial("a"), "b": trial("b"), "c": trial("c")}, 2, lambda *item: reported.append(item))
    assert calls == ["a", "b", "c", "a", "b", "c"]
    assert results == {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    assert reported == [("a", 0, 1), ("b", 0, 2), ("c", 0, 3), ("a", 1, 4), ("b", 1, 5), ("c", 1, 6)]
    assert median_paired_ratio([100.0, 50.0, 100.0], [90.0, 45.0, 95.0]) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        median_paired_ratio([1.0, 2.0], [1.0])  # rounds must pair up


def test_specs_follow_the_algorithm_registry():
    """A registered algorithm is a valid spec, in the family of its base, with the distillation keys if it distils."""
    entry = registry.AlgoEntry("sd_ppo_test", "rl_selfdistill.algos.ppo:SelfDistillPPO", base="ppo")
    registry.register(entry)
    try:
        spec = AlgoSpec.parse("sd_ppo_test@dummy")
        assert spec.is_sd and spec.on_policy
        check_pair(AlgoSpec("ppo"), spec, pairs=1)
        assert algo_kwargs(spec, TINY)["teacher_update_interval"] == 128
        expected = r"different algorithm families; pick both from one \(dqn family: dqn, sd_dqn; ppo family: ppo, sd_ppo, "
        with pytest.raises(UsageError, match=expected + r".*sd_ppo_test\)$"):
            check_pair(AlgoSpec("dqn"), spec, pairs=1)
    finally:
        registry.unregister(entry.name)
    with pytest.raises(UsageError, match="unknown algo 'sd_ppo_test'"):
        AlgoSpec.parse("sd_ppo_test")


def test_spec_parsing():
    assert AlgoSpec.parse("sd_ppo@envpool") == AlgoSpec("sd_ppo", "envpool")
    assert AlgoSpec.parse("dqn").label == "dqn@dummy"
    with pytest.raises(UsageError, match="unknown algo"):
        AlgoSpec.parse("ddpg")


def test_a_and_b_share_every_hyperparameter_but_the_distillation_keys():
    base, sd = algo_kwargs(AlgoSpec("ppo"), TINY), algo_kwargs(AlgoSpec("sd_ppo"), TINY)
    assert {key: value for key, value in sd.items() if key not in base} == {
        "distill_coef": 0.5,
        "teacher_update_interval": 128,
    }
    assert all(sd[key] == value for key, value in base.items())


def test_the_target_copy_interval_goes_to_hard_copy_q_learners_only():
    # DQN's target_update_interval counts env steps between copies; SAC's counts gradient steps between Polyak
    # updates, so passing DQN's 1,000 would time a SAC that almost never updates its target.
    assert algo_kwargs(AlgoSpec("dqn"), TINY)["target_update_interval"] == TINY.target_update_interval
    assert algo_kwargs(AlgoSpec("sd_qrdqn"), TINY)["target_update_interval"] == TINY.target_update_interval
    for name in ("sac", "sd_sac", "td3"):
        kwargs = algo_kwargs(AlgoSpec(name), TINY)
        assert "target_update_interval" not in kwargs and kwargs["train_freq"] == TINY.train_freq


def test_warmup_reaches_past_the_first_teacher_refresh():
    assert TINY.warmup_for(AlgoSpec("sd_ppo")) == 128 + 4 * 32
    assert TINY.warmup_for(AlgoSpec("sd_dqn")) == max(128, TINY.learning_starts) + 4 * TINY.train_freq


def test_ppo_pair_alternates_and_reports_medians():
    seen = []
    result = measure_throughput(
        "CartPole-v1", "ppo", "sd_ppo", pairs=2, settings=TINY, report=lambda *trial: seen.append(trial)
    )
    assert [(label, trial) for label, trial, _ in seen] == [
        (label, trial) for trial in range(2) for label in ("ppo@dummy", "sd_ppo@dummy")
    ]
    # The live reports are the recorded trials, in A B A B order.
    assert [fps for _, _, fps in seen] == [result.fps_a[0], result.fps_b[0], result.fps_a[1], result.fps_b[1]]
    assert result.median_b == statistics.median(result.fps_b)
    assert result.ratio == pytest.approx(result.median_b / result.median_a)
    # The teacher was refreshed during warm-up and again during the timed trials.
    assert result.teacher_updates["ppo@dummy"] is None
    assert result.teacher_updates["sd_ppo@dummy"] >= 2


def test_dqn_pair_through_the_cli(tmp_path, capsys):
    argv = ["throughput", "--env", "CartPole-v1", "--a", "dqn", "--b", "sd_dqn", "--pairs", "1", "-n", "256"]
    argv += ["--n-envs", "2", "--learning-starts", "128", "--teacher-update-interval", "128", "--batch-size", "32"]
    argv += ["--buffer-size", "2000", "--device", "cpu", "--json", str(tmp_path / "t.json")]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert "trial 1 dqn@dummy:" in output and "trial 1 sd_dqn@dummy:" in output and "ratio B/A:" in output
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["ratio_b_over_a"] == pytest.approx(saved["median_b"] / saved["median_a"])
    assert saved["teacher_updates"]["sd_dqn@dummy"] >= 1
    collect, update = saved["us_per_step_collect_update_b"]
    # One pair: collecting and updating split exactly the trial's time per step.
    assert collect + update == pytest.approx(1e6 / saved["fps_b"][0]) and 0 < update < collect + update
    assert "us/step collecting" in output


def test_update_share_is_the_time_spent_in_train(monkeypatch):
    """The update time the callback measures is the time `train()` itself took (slowed down to dominate)."""
    from stable_baselines3 import PPO

    from rl_selfdistill.benchmark.throughput import build_model, timed_trial

    original_train = PPO.train
    train_seconds = []

    def slow_timed_train(self):
        start = time.perf_counter()
        time.sleep(0.05)
        original_train(self)
        train_seconds.append(time.perf_counter() - start)

    settings = ThroughputSettings(n_envs=4, device="cpu", n_steps=32, n_epochs=1, batch_size=64)
    model = build_model("CartPole-v1", AlgoSpec("ppo"), settings)
    monkeypatch.setattr(PPO, "train", slow_timed_train)
    fps, share, cpu_fps = timed_trial(model, 4 * 32 * 4)  # four rollouts, four updates
    elapsed = 4 * 32 * 4 / fps
    assert len(train_seconds) == 4
    assert share * elapsed == pytest.approx(sum(train_seconds), abs=0.02)
    assert 0 < share < 1
    # Sleeping costs wall-clock, not CPU time: more steps per CPU-second than per wall-clock second.
    assert cpu_fps > fps


def test_paired_ratio_is_the_median_of_per_round_ratios():
    from rl_selfdistill.benchmark.throughput import ThroughputResult

    # Load doubled in round 2: the ratio of medians mixes rounds, the per-round ratios do not.
    result = ThroughputResult("E", "a", "b", fps_a=[100.0, 50.0, 100.0], fps_b=[90.0, 45.0, 95.0], settings={})
    assert result.paired_ratio == pytest.approx(0.9)
    assert result.ratio == pytest.approx(90.0 / 100.0)
    assert result.to_dict()["median_paired_ratio"] == pytest.approx(0.9)
    assert result.phase_costs("a") is None  # no update shares recorded


def test_mixed_families_are_refused(capsys):
    assert main(["throughput", "--env", "CartPole-v1", "--a", "ppo", "--b", "sd_dqn"]) == 2
    assert "different algorithm families" in capsys.readouterr().err


def test_env_speed_script_alternates_backends():
    """scripts/env_speed.py times backends with the same paired timer: A B A B, then medians and ratios."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("envpool")
    script = Path(__file__).parents[1] / "scripts" / "env_speed.py"
    argv = ["collect", "CartPole-v1", "--n-envs", "2", "--steps", "16", "--backends", "dummy", "envpool", "--repeats", "2"]
    result = subprocess.run(
        [sys.executable, str(script), *argv, "--torch-threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = re.findall(r"^  collect CartPole-v1 x2 (\w+): \d+ steps/s$", result.stdout, re.MULTILINE)
    assert trials == ["dummy", "envpool", "dummy", "envpool"]
    assert re.search(r"^collect .* envpool: median \d+ steps/s over \[\d+, \d+\], ratio to dummy [\d.]+ ", result.stdout, re.M)


def test_distillation_options_of_the_sd_spec_through_the_cli(tmp_path, capsys):
    """-params sets a variant of the SD spec (a lagged teacher here); the process-time ratio is reported too."""
    argv = ["throughput", "--env", "CartPole-v1", "--pairs", "1", "-n", "256", "--n-envs", "2", "--n-steps", "64"]
    argv += ["--n-epochs", "2", "--batch-size", "64", "--device", "cpu", "--json", str(tmp_path / "t.json")]
    argv += ["-params", "teacher_mode:lagged", "teacher_update_unit:gradient_steps", "teacher_update_interval:2"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["settings"]["sd_params"] == {
        "teacher_mode": "lagged",
        "teacher_update_unit": "gradient_steps",
        "teacher_update_interval": 2,
    }
    # A lagged teacher is pushed once per gradient step: 2 epochs x 2 minibatches per rollout, warm-up included.
    assert saved["teacher_updates"]["sd_ppo@dummy"] >= 4
    assert saved["median_paired_cpu_ratio"] == pytest.approx(saved["cpu_fps_b"][0] / saved["cpu_fps_a"][0])
    assert "steps per CPU-second" in capsys.readouterr().out


@pytest.mark.parametrize(
    "params,message",
    [(["n_steps:3"], "not a distillation option"), (["teacher_mode:sideways"], "teacher_mode"), (["nokey"], "key:value")],
)
def test_bad_distillation_options_are_refused_before_any_training(params, message, capsys):
    assert main(["throughput", "--env", "CartPole-v1", "-params", *params]) == 2
    assert message in capsys.readouterr().err


def test_shared_params_reach_both_models_built_like_a_presets():
    settings = dataclasses.replace(TINY, shared_params={"policy_kwargs": {"n_quantiles": 10, "activation_fn": "tanh"}})
    for name in ("qrdqn", "sd_qrdqn"):
        policy_kwargs = algo_kwargs(AlgoSpec(name), settings)["policy_kwargs"]
        assert policy_kwargs == {"n_quantiles": 10, "activation_fn": th.nn.Tanh}


@pytest.mark.parametrize(
    "params,message",
    [
        (["n_steps:64"], "has its own option; use --n-steps"),
        (["distill_coef:1"], "has its own option; use --distill-coef"),
        (["teacher_mode:ema"], "is a distillation option; pass it with -params"),
        (["normalize:true"], "is a run setting"),
        (["nosuch:1"], "unknown key 'nosuch' in the settings of ppo@dummy"),
        (["policy_kwargs:{activation_fn: swish}"], "swish"),
    ],
)
def test_bad_shared_params_are_refused_before_any_training(params, message, capsys):
    assert main(["throughput", "--env", "CartPole-v1", "--shared-params", *params]) == 2
    assert message in capsys.readouterr().err
