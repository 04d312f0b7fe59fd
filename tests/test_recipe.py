"""The recipe for a user's own algorithm (examples/custom_algorithm.py): a KL-penalty PPO variant that knows nothing
about distillation gains it by mixing in OnPolicyDistillMixin and adding four calls to a copy of its train()."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch as th
from stable_baselines3 import PPO

from rl_selfdistill import SelfDistillPPO
from tests.helpers import assert_same_parameters, flat

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_algorithm.py"
# Two minibatches and two epochs per 64-step rollout: the copied loop's every branch runs.
TINY = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "kl_beta": 0.5, "device": "cpu", "policy_kwargs": {"net_arch": [32]}}


def load_example() -> ModuleType:
    """The example file as a module (examples/ is not a package; users copy the file)."""
    spec = importlib.util.spec_from_file_location("custom_algorithm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # SB3's load unpickles the saved class by module name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example()


def test_it_trains_logs_the_kl_to_its_teacher_and_the_teacher_gets_no_gradient(example):
    model = example.SelfDistillKLPenaltyPPO("MlpPolicy", "CartPole-v1", seed=0, teacher_update_interval=128, **TINY)
    model.learn(320)  # refreshed at the rollout starting at 128; the next rollouts train against that teacher
    logged = model.logger.name_to_value
    assert model.distiller.teacher.n_updates == 2 and logged["distill/teacher_updates"] == 2
    assert logged["distill/kl"] > 0 and logged["distill/loss"] == pytest.approx(0.5 * logged["distill/kl"])
    (teacher,) = model.teacher_networks
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # The teacher's outputs were computed once for the rollout, in the shared mixin.
    params, _values = model._rollout_teacher
    assert params.shape == (1, 64, 2) and not params.requires_grad


def test_kl_is_zero_right_after_a_snapshot(example):
    options = {**TINY, "batch_size": 64, "n_epochs": 1}  # one gradient step per rollout, measured before it moves
    model = example.SelfDistillKLPenaltyPPO("MlpPolicy", "CartPole-v1", seed=1, teacher_update_interval=64, **options)
    model.learn(256)
    assert model.distiller.teacher.n_updates == 3 and model.logger.name_to_value["distill/kl"] == 0.0


@pytest.mark.parametrize("distill", [{"distill_coef": 0}, {"teacher_update_interval": 10**9}])
def test_without_a_teacher_it_trains_bit_for_bit_like_the_users_class(example, distill):
    """Weight 0 runs the user's train() itself; before the first refresh the copied loop runs, and must match it."""
    reference = example.KLPenaltyPPO("MlpPolicy", "CartPole-v1", seed=2, **TINY).learn(256)
    model = example.SelfDistillKLPenaltyPPO("MlpPolicy", "CartPole-v1", seed=2, **distill, **TINY).learn(256)
    assert_same_parameters(reference.policy, model.policy)
    assert model.distiller.teacher.n_updates == 0


def test_save_and_load_keep_the_teacher_and_the_users_own_setting(example, tmp_path: Path):
    model = example.SelfDistillKLPenaltyPPO("MlpPolicy", "CartPole-v1", seed=3, teacher_update_interval=128, **TINY)
    model.learn(256)
    model.save(tmp_path / "agent.zip")
    loaded = example.SelfDistillKLPenaltyPPO.load(tmp_path / "agent.zip", env=model.get_env(), device="cpu")
    assert loaded.kl_beta == 0.5 and loaded.distill_config.teacher_update_interval == 128
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
    assert_same_parameters(model.policy, loaded.policy)
    assert loaded.distiller.teacher.n_updates == model.distiller.teacher.n_updates == 1
    loaded.learn(128, reset_num_timesteps=False)  # continues, and refreshes its teacher on the same cadence
    assert loaded.distiller.teacher.n_updates == 2
    assert not th.equal(flat(loaded.teacher_networks), flat(model.teacher_networks))


def test_the_example_runs_as_a_script_would(example, tmp_path: Path):
    loaded = example.main(total_timesteps=1280, directory=tmp_path)  # refreshed at the rollout starting at 1024
    assert (tmp_path / "klppo.zip").exists()
    assert len(loaded.teacher_networks) == 1 and loaded.distiller.teacher.n_updates == 1


class WarmupPPO(PPO):
    """A user's PPO variant that keeps PPO's train(): its learning rate warms up over the first four rollouts."""

    def _update_learning_rate(self, optimizers: th.optim.Optimizer | list[th.optim.Optimizer]) -> None:
        super()._update_learning_rate(optimizers)
        scale = min(1.0, (self._n_updates // self.n_epochs + 1) / 4)
        for group in self.policy.optimizer.param_groups:
            group["lr"] *= scale


class SelfDistillWarmupPPO(SelfDistillPPO, WarmupPPO):
    """The recipe's short case: a variant that keeps its parent's train() puts SelfDistillPPO first, and that is all."""


@pytest.mark.parametrize("distill", [{"distill_coef": 0}, {"teacher_update_interval": 10**9}])
def test_a_variant_that_keeps_ppos_train_needs_only_selfdistillppo_first(distill):
    options = {key: value for key, value in TINY.items() if key != "kl_beta"}
    reference = WarmupPPO("MlpPolicy", "CartPole-v1", seed=4, **options).learn(256)
    plain = PPO("MlpPolicy", "CartPole-v1", seed=4, **options).learn(256)
    model = SelfDistillWarmupPPO("MlpPolicy", "CartPole-v1", seed=4, **distill, **options).learn(256)
    assert_same_parameters(reference.policy, model.policy)  # the user's override runs in either train()
    assert not th.equal(flat(plain.policy), flat(model.policy))
    distilling = SelfDistillWarmupPPO("MlpPolicy", "CartPole-v1", seed=4, teacher_update_interval=128, **options)
    assert distilling.learn(256).logger.name_to_value["distill/kl"] > 0
