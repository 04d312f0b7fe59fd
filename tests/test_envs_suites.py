"""Benchmark suites: they load, every env builds, scores are present, cited and usable for normalisation."""

from __future__ import annotations

import pytest
import yaml

from rl_selfdistill.envs import list_suites, load_suite, make_vec_env, normalize_score
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import data_dir

SUITES = ["atari5", "atari10", "classic", "mujoco5"]


def test_expected_suites_are_shipped():
    assert set(SUITES) <= set(list_suites())


@pytest.mark.parametrize("name", SUITES)
def test_suite_scores_present_and_cited(name):
    suite = load_suite(name)
    assert suite.name == name and suite.envs
    for env in suite.envs:
        assert env.n_timesteps > 0
        assert env.reference_score > env.floor_score >= env.random_score  # all shipped tasks: higher is better
        assert normalize_score(env, env.floor_score) == pytest.approx(0.0)
        assert normalize_score(env, env.reference_score) == pytest.approx(1.0)
        assert env.source and env.reference
        if env.env_id.startswith("ALE/"):
            assert env.reference == "human" and "Badia et al. 2020" in env.source
        else:  # random scores measured here must say how many episodes
            assert "measured here" in env.source and "episodes" in env.source
    header = (data_dir("envs") / f"{name}.yaml").read_text().split("\nname:")[0]
    assert "benchmark.md" in header or "Badia et al. 2020" in header  # the file itself cites its sources


def test_atari5_contents():
    assert load_suite("atari5").env_ids == [f"ALE/{g}-v5" for g in ("Pong", "Breakout", "BeamRider", "Qbert", "SpaceInvaders")]
    assert set(load_suite("atari5").env_ids) < set(load_suite("atari10").env_ids)
    assert load_suite("mujoco5").env_ids == ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5"]


def test_every_listed_env_builds():
    env_ids = sorted({env_id for name in SUITES for env_id in load_suite(name).env_ids})
    for env_id in env_ids:
        venv = make_vec_env(env_id, n_envs=1, backend="dummy", seed=0)
        try:
            assert venv.reset().shape[0] == 1
        finally:
            venv.close()


def test_unknown_suite_lists_available_suites():
    with pytest.raises(UsageError) as err:
        load_suite("atari7")
    assert "unknown suite 'atari7'" in str(err.value) and "atari5" in str(err.value) and "\n" not in str(err.value)


def test_suite_files_are_plain_yaml():
    for name in SUITES:  # safe_load only: no tags, no Python objects
        assert isinstance(yaml.safe_load((data_dir("envs") / f"{name}.yaml").read_text()), dict)
