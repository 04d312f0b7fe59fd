"""get_parameters / set_parameters: the SB3 parent's structure before the first refresh, the teacher once it exists."""

import copy

import pytest
import torch as th
from stable_baselines3 import A2C, DQN, PPO

from rl_selfdistill import SelfDistillA2C, SelfDistillDQN, SelfDistillPPO
from tests.helpers import A2C_TINY, DQN_TINY, PPO_TINY, assert_same_parameters

# (self-distilling class, SB3 parent, tiny settings, teacher_update_interval, steps that pass the first refresh)
ALGOS = [
    (SelfDistillPPO, PPO, PPO_TINY, 128, 256),
    (SelfDistillDQN, DQN, DQN_TINY, 100, 200),
    (SelfDistillA2C, A2C, A2C_TINY, 32, 64),
]
IDS = ["ppo", "dqn", "a2c"]


def parameters(model) -> dict:
    """get_parameters() as values: its state dicts share storage with the live networks."""
    return copy.deepcopy(model.get_parameters())


def randomised(params: dict, names: list[str]) -> dict:
    """What generic SB3 code does to perturb a model: a random tensor for every entry of the given modules."""
    return {name: {key: th.rand_like(value) for key, value in params[name].items()} for name in names}


def equal_states(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(th.equal(a[key], b[key]) for key in a)


def build(algo_class, tiny, interval, seed=0):
    return algo_class("MlpPolicy", "CartPole-v1", seed=seed, teacher_update_interval=interval, **tiny)


@pytest.mark.parametrize("algo_class,parent,tiny,interval,steps", ALGOS, ids=IDS)
def test_before_the_first_refresh_the_parameters_look_like_the_sb3_parents(algo_class, parent, tiny, interval, steps):
    model = build(algo_class, tiny, interval)
    reference = parent("MlpPolicy", "CartPole-v1", seed=0, **tiny)
    params = parameters(model)
    assert list(params) == list(reference.get_parameters())
    # Generic round trips: a partial random update, then the full dict back with an exact match.
    modules = [name for name in params if not name.endswith("optimizer")]
    model.set_parameters(randomised(params, modules), exact_match=False)
    assert not equal_states(model.get_parameters()["policy"], params["policy"])
    model.set_parameters(params, exact_match=True)
    assert all(equal_states(model.get_parameters()[name], params[name]) for name in modules)
    # The same dict sets the SB3 parent's parameters, and the other way round.
    reference.set_parameters(params, exact_match=True)
    model.set_parameters(parameters(reference), exact_match=True)
    assert_same_parameters(reference.policy, model.policy)


@pytest.mark.parametrize("algo_class,parent,tiny,interval,steps", ALGOS, ids=IDS)
def test_after_the_first_refresh_the_teacher_is_a_parameter_and_round_trips(algo_class, parent, tiny, interval, steps):
    model = build(algo_class, tiny, interval).learn(steps)
    assert model.distiller.teacher.n_updates >= 1
    params = parameters(model)
    assert list(params)[-1] == "teacher_networks" and len(params["teacher_networks"]) > 0
    model.set_parameters(randomised(params, ["teacher_networks"]), exact_match=False)
    assert not equal_states(model.get_parameters()["teacher_networks"], params["teacher_networks"])
    assert equal_states(model.get_parameters()["policy"], params["policy"])
    model.set_parameters(params, exact_match=True)
    assert equal_states(model.get_parameters()["teacher_networks"], params["teacher_networks"])
    # Into a model without a teacher yet: exact_match=False sets what it has (the student) and skips the rest.
    fresh = build(algo_class, tiny, interval, seed=1)
    fresh.set_parameters(params, exact_match=False)
    assert len(fresh.teacher_networks) == 0
    assert equal_states(fresh.get_parameters()["policy"], params["policy"])


@pytest.mark.parametrize("algo_class,parent,tiny,interval,steps", ALGOS, ids=IDS)
def test_save_and_load_before_and_after_the_first_refresh(tmp_path, algo_class, parent, tiny, interval, steps):
    model = build(algo_class, tiny, interval)
    model.save(tmp_path / "before.zip")
    loaded = algo_class.load(tmp_path / "before.zip", device="cpu")
    assert len(loaded.teacher_networks) == 0 and list(loaded.get_parameters()) == list(model.get_parameters())
    # Files of earlier versions held an empty teacher state dict before the first refresh: they still load.
    loaded.set_parameters({**parameters(model), "teacher_networks": {}}, exact_match=True)
    model.learn(steps)
    model.save(tmp_path / "after.zip")
    loaded = algo_class.load(tmp_path / "after.zip", device="cpu")
    assert len(loaded.teacher_networks) == len(model.teacher_networks) > 0
    assert_same_parameters(model.teacher_networks, loaded.teacher_networks)
