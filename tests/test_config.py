"""Presets: layering, `base:` reuse, validation of every key and value, -params parsing, registries."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml
from stable_baselines3.common.utils import LinearSchedule

from rl_selfdistill import config as cfg
from rl_selfdistill.algos import registry
from rl_selfdistill.config import schema as schema_module
from rl_selfdistill.distill.config import DistillConfig
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import data_dir


def test_cartpole_ppo_preset_is_the_rl_zoo_tuned_one():
    hyperparams = cfg.resolve_hyperparams("ppo", "CartPole-v1")
    zoo = {
        "n_envs": 8,
        "n_timesteps": 100_000,
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": "lin_0.001",
        "clip_range": "lin_0.2",
        "policy": "MlpPolicy",
    }
    assert hyperparams == zoo


def test_sections_are_layered_default_family_env():
    atari = cfg.resolve_hyperparams("ppo", "PongNoFrameskip-v4")
    assert atari["policy"] == "CnnPolicy" and atari["frame_stack"] == 4 and atari["n_envs"] == 8
    mujoco = cfg.resolve_hyperparams("ppo", "Ant-v5")  # no own section: default < mujoco
    assert mujoco == {"policy": "MlpPolicy", "n_envs": 1, "n_timesteps": 1_000_000, "normalize": True}
    tuned = cfg.resolve_hyperparams("ppo", "HalfCheetah-v5")
    assert tuned["normalize"] is True and tuned["policy_kwargs"]["activation_fn"] == "relu"


@pytest.mark.parametrize(
    "algo,base", [("sd_ppo", "ppo"), ("sd_ppo_snapshot", "ppo"), ("sd_ppo_reset", "ppo"), ("sd_dqn", "dqn")]
)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "PongNoFrameskip-v4"])
def test_self_distill_presets_reuse_their_base(algo, base, env_id):
    distilled = cfg.resolve_hyperparams(algo, env_id)
    plain = cfg.resolve_hyperparams(base, env_id)
    assert {key: distilled[key] for key in plain} == plain
    assert set(distilled) - set(plain) >= {"distill_coef", "teacher_update_interval"}
    # Walk the `base:` chain (sd_ppo -> sd_ppo_snapshot -> ppo): every file on the way adds distillation keys only.
    name = algo
    while name != base:
        raw = yaml.safe_load((data_dir("agents") / f"{name}.yaml").read_text())
        own_keys = {key for section in raw.values() if isinstance(section, dict) for key in section}
        assert own_keys <= set(DistillConfig.names()), f"{name}: sd presets must not copy base hyperparameters"
        name = raw["base"]


def test_named_variants_train_the_same_class_with_their_own_teacher():
    assert registry.algo_class("sd_ppo_reset") is registry.algo_class("sd_ppo") is registry.algo_class("sd_ppo_snapshot")
    reset = cfg.resolve_hyperparams("sd_ppo_reset", "Continual-CartPole-v0")
    assert reset["teacher_mode"] == "reset" and reset["teacher_update_interval"] == 50_000  # one reset per level
    snapshot = cfg.resolve_hyperparams("sd_ppo_snapshot", "CartPole-v1")
    assert snapshot["teacher_mode"] == "snapshot" and snapshot["teacher_update_interval"] == 1024


def test_one_frozen_section_shared_by_two_envs_keeps_each_envs_base():
    # agents/sd_ppo.yaml gives continual Acrobot and LunarLander study 2's setting through one YAML alias: both get
    # it, each keeps its own PPO preset, and a caller editing one resolved dict cannot leak into the other.
    acrobot = cfg.resolve_hyperparams("sd_ppo", "Continual-Acrobot-v0")
    acrobot["distill_coef"] = 123.0
    lunar = cfg.resolve_hyperparams("sd_ppo", "Continual-LunarLander-v0")
    study2 = {"teacher_mode": "ema", "teacher_update_interval": 3, "teacher_tau": 0.177, "distill_coef": 0.08867}
    assert {key: lunar[key] for key in study2} == study2 and lunar["kl_direction"] == "reverse"
    assert cfg.resolve_hyperparams("sd_ppo", "Continual-Acrobot-v0")["distill_coef"] == 0.08867
    assert (acrobot["n_steps"], lunar["n_steps"]) == (256, 1024)
    assert cfg.resolve_hyperparams("sd_ppo", "Continual-MountainCar-v0")["teacher_mode"] == "snapshot"  # not studied


def test_cartpole_teacher_refreshes_within_a_4096_step_run():
    for algo in ("sd_ppo", "sd_dqn", "sd_a2c"):
        assert cfg.resolve_hyperparams(algo, "CartPole-v1")["teacher_update_interval"] <= 4096 // 2


def test_every_preset_file_is_valid_for_its_ids():
    for path in sorted(data_dir("agents").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for env_id in (key for key in raw if key not in (*cfg.FALLBACK_SECTIONS, cfg.BASE_KEY)):
            cfg.resolve_hyperparams(path.stem, env_id)


@pytest.mark.parametrize("algo", registry.names())
def test_schema_keys_are_constructor_arguments(algo):
    parameters = inspect.signature(registry.algo_class(algo)).parameters
    schema = cfg.hyperparameter_schema(algo)
    missing = [key for key in schema if key not in cfg.META_KEYS and key not in parameters]
    assert not missing, f"{algo}: {missing}"
    # The SB3 keys users set most are derived, not forgotten (DQN's n_steps was missing from a hand-written copy).
    # A2C has no batch_size: one gradient step on the whole rollout.
    assert {"learning_rate", "gamma", "n_steps"} | ({"batch_size"} & set(parameters)) <= set(schema)
    if registry.is_distilling(algo):
        assert set(DistillConfig.names()) <= set(schema)


def test_schema_follows_a_new_constructor_argument():
    """A keyword SB3 adds is a preset key without editing the schema; its annotation picks the validator."""
    from stable_baselines3 import PPO

    class PPOWithExtra(PPO):
        def __init__(self, *args, new_weight: float = 0.5, new_flag: bool = False, **kwargs) -> None:
            super().__init__(*args, **kwargs)

    keys = schema_module.constructor_keys(PPOWithExtra)
    # The SB3 parent's keywords (PPO here) and those the subclass adds, each validated by its annotation.
    assert "n_epochs" in keys and keys["new_weight"]("new_weight", "0.25") == 0.25
    with pytest.raises(UsageError, match="true or false"):
        keys["new_flag"]("new_flag", 1)
    assert schema_module.validator_for("new_weight", float)("new_weight", "0.25") == 0.25
    assert schema_module.validator_for("flag", bool)("flag", True) is True
    with pytest.raises(UsageError, match="true or false"):
        schema_module.validator_for("flag", bool)("flag", 1)
    assert schema_module.validator_for("obj", object) is None


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"n_step": 64}, "unknown key 'n_step' in -params (did you mean 'n_steps'?); valid keys: "),
        ({"n_steps": "abc"}, "'n_steps': got 'abc', expected an integer >= 1"),
        ({"n_steps": 1.5}, "expected an integer >= 1"),
        ({"gamma": 1.5}, "expected a number >= 0.0 and <= 1.0"),
        ({"learning_rate": "lin_x"}, "'lin_<initial value>'"),
        ({"learning_rate": -1}, "expected a number > 0.0"),
        ({"normalize_advantage": "yes"}, "expected true or false"),
        ({"policy_kwargs": {"activation_fn": "swish"}}, "one of elu, gelu, leaky_relu, relu, silu, tanh"),
        ({"policy_kwargs": {"net_arch": [64, -1]}}, "a list of positive layer sizes"),
        ({"policy_kwargs": {"act_fn": "tanh"}}, "unknown key 'act_fn' in policy_kwargs"),
        ({"policy": "LstmPolicy"}, "one of MlpPolicy, CnnPolicy, MultiInputPolicy"),
        ({"distill_coef": 0.5}, "unknown key 'distill_coef'"),  # plain PPO has no distillation
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(UsageError) as error:
        cfg.resolve_hyperparams("ppo", "CartPole-v1", overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"distill_coef": -0.1}, "'distill_coef': got -0.1, expected a number >= 0.0"),
        ({"teacher_mode": "target"}, "one of snapshot, ema, ensemble"),  # the target network is DQN-only
        ({"kl_direction": "both"}, "one of forward, reverse"),
        ({"distill_coef_bounds": [2, 1]}, "[low, high] with 0 < low <= high"),
        ({"teacher_update_interval": 0}, "expected an integer >= 1"),
    ],
)
def test_bad_distillation_values(overrides, message):
    with pytest.raises(UsageError, match=None) as error:
        cfg.resolve_hyperparams("sd_ppo", "CartPole-v1", overrides)
    assert message in str(error.value)


def test_unknown_key_error_lists_valid_keys():
    with pytest.raises(UsageError) as error:
        cfg.validate_hyperparams("sd_dqn", {"bogus": 1})
    text = str(error.value)
    for key in ("buffer_size", "teacher_mode", "distill_coef", "policy_kwargs"):
        assert key in text


def test_params_are_typed_with_yaml():
    overrides = cfg.parse_params(
        [
            "n_steps:128",
            "learning_rate:lin_3e-4",
            "gamma:0.95",
            "normalize:true",
            "policy_kwargs:{net_arch: [64, 64], activation_fn: tanh}",
            "target_kl:",
        ]
    )
    assert overrides == {
        "n_steps": 128,
        "learning_rate": "lin_3e-4",
        "gamma": 0.95,
        "normalize": True,
        "policy_kwargs": {"net_arch": [64, 64], "activation_fn": "tanh"},
        "target_kl": None,
    }
    resolved = cfg.resolve_hyperparams("ppo", "CartPole-v1", overrides)
    assert resolved["n_steps"] == 128 and resolved["policy_kwargs"]["net_arch"] == [64, 64]


@pytest.mark.parametrize("item", ["n_steps=128", ":5", "policy_kwargs:{net_arch: [64"])
def test_malformed_params(item):
    with pytest.raises(UsageError):
        cfg.parse_params([item])


def test_numbers_written_the_rl_zoo_way_are_accepted():
    # YAML 1.1 reads 1e-3 as a string and the Zoo writes budgets as floats (!!float 1e5).
    resolved = cfg.validate_hyperparams("ppo", {"learning_rate": "1e-3", "n_timesteps": 1e5})
    assert resolved == {"learning_rate": 1e-3, "n_timesteps": 100_000}
    assert isinstance(resolved["n_timesteps"], int)


def test_model_kwargs_use_registries_not_eval():
    kwargs = cfg.model_kwargs(
        cfg.resolve_hyperparams(
            "sd_ppo",
            "CartPole-v1",
            {
                "policy_kwargs": {"net_arch": {"pi": [32], "vf": [32]}, "activation_fn": "tanh", "optimizer_class": "adamw"},
                "distill_coef": "lin_0.4",
            },
        )
    )
    assert kwargs["policy_kwargs"]["activation_fn"] is torch.nn.Tanh
    assert kwargs["policy_kwargs"]["optimizer_class"] is torch.optim.AdamW
    for key, start in (("learning_rate", 0.001), ("clip_range", 0.2), ("distill_coef", 0.4)):
        schedule = kwargs[key]
        assert isinstance(schedule, LinearSchedule)
        assert schedule(1.0) == pytest.approx(start) and schedule(0.5) == pytest.approx(start / 2) and schedule(0.0) == 0.0
    assert "n_timesteps" not in kwargs and "n_envs" not in kwargs and "policy" not in kwargs


def test_base_chain_and_conf_file(tmp_path: Path):
    custom = tmp_path / "mine.yaml"
    custom.write_text("base: sd_ppo\nCartPole-v1:\n  distill_coef: 0.1\n  n_epochs: 3\n")
    resolved = cfg.load_preset("sd_ppo", "CartPole-v1", conf_file=custom)
    assert resolved["distill_coef"] == 0.1 and resolved["n_epochs"] == 3 and resolved["teacher_update_interval"] == 1024
    with pytest.raises(UsageError, match="must name another preset"):
        cfg.load_preset("ppo", "CartPole-v1", conf_file=_write(tmp_path / "other.yaml", "base: ddpg\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,message",
    [
        ("CartPole-v1: [1, 2\n", "is not valid YAML at line"),
        ("- a\n- b\n", "must hold a mapping at the top level"),
        ("CartPole-v1: 5\n", "section 'CartPole-v1'"),
        ("CartPole-v1:\n  learning_rat: 0.1\n", "unknown key 'learning_rat'"),
    ],
)
def test_bad_preset_files(tmp_path: Path, text, message):
    with pytest.raises(UsageError) as error:
        cfg.load_preset("ppo", "CartPole-v1", conf_file=_write(tmp_path / "bad.yaml", text))
    assert message in str(error.value)


def test_unknown_algo_and_env():
    choices = ", ".join(registry.names())
    assert choices.startswith("ppo, sd_ppo, sd_ppo_snapshot, sd_ppo_reset, dqn, sd_dqn, a2c, sd_a2c")
    with pytest.raises(UsageError, match=re.escape(f"unknown algorithm 'ddpg'; choose one of {choices}")):
        cfg.resolve_hyperparams("ddpg", "CartPole-v1")
    with pytest.raises(UsageError, match="CartPole-v1"):
        cfg.resolve_hyperparams("ppo", "CartPole-v9")


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_every_classic_suite_env_has_its_own_tuned_preset(algo):
    """A suite benchmark must not silently train with SB3's untuned defaults (LunarLander once did)."""
    from rl_selfdistill.benchmark.grid import incompatibility
    from rl_selfdistill.envs.suites import load_suite

    raw = yaml.safe_load(cfg.preset_path(algo).read_text())
    env_ids = [env.env_id for env in load_suite("classic").envs if incompatibility(algo, env.env_id) is None]
    assert "LunarLander-v3" in env_ids
    assert [env_id for env_id in env_ids if env_id not in raw] == []


@pytest.mark.parametrize(
    "key,bad",
    [
        ("distill_coef", -1),
        ("distill_coef_bounds", [0, 1]),
        ("teacher_update_interval", 0),
        ("teacher_tau", 0),
        ("teacher_ensemble_size", 0),
        ("kl_direction", "sideways"),
        ("distill_temperature", -1),
        ("distill_target_kl", 0),
    ],
)
def test_presets_and_constructors_refuse_the_same_values_with_the_same_message(key, bad):
    from rl_selfdistill import SelfDistillPPO

    with pytest.raises(UsageError) as from_preset:
        cfg.validate_hyperparams("sd_ppo", {key: bad})
    with pytest.raises(UsageError) as from_constructor:
        SelfDistillPPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, **{key: bad})
    assert str(from_preset.value) == str(from_constructor.value)


def test_new_distillation_options_go_from_params_to_the_model():
    """Every DistillConfig key is a preset / -params key: parsed, validated and passed to the constructor."""
    from rl_selfdistill import SelfDistillPPO

    overrides = cfg.parse_params(
        [
            "teacher_mode:lagged",
            "teacher_update_unit:gradient_steps",
            "teacher_update_interval:3",
            "distill_coef_mode:relative",
            "distill_gaussian:mean_kl",
            "distill_value_coef:0.5",
            "distill_gate:true",
        ]
    )
    hyperparams = cfg.resolve_hyperparams("sd_ppo", "Pendulum-v1", overrides)
    kwargs = {key: value for key, value in cfg.model_kwargs(hyperparams).items() if key in DistillConfig.names()}
    model = SelfDistillPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, **kwargs)
    config = model.distill_config
    assert (config.teacher_mode, config.teacher_update_unit, config.teacher_update_interval) == ("lagged", "gradient_steps", 3)
    assert (config.distill_coef_mode, config.distill_gaussian, config.distill_value_coef, config.distill_gate) == (
        "relative",
        "mean_kl",
        0.5,
        True,
    )
    with pytest.raises(UsageError, match="lags by gradient steps or phases"):
        cfg.resolve_hyperparams("sd_ppo", "CartPole-v1", {"teacher_mode": "lagged"})
