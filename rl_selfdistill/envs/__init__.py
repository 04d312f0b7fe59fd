"""Environments: vectorized Atari, MinAtar, MuJoCo, classic and continual control on SB3 or EnvPool backends; suites."""

from rl_selfdistill.envs.atari import AtariSettings
from rl_selfdistill.envs.continual import ContinualLevelCallback, ContinualWrapper, sync_levels
from rl_selfdistill.envs.device import configure_torch_threads
from rl_selfdistill.envs.envpool_vec import EnvPoolVecEnv
from rl_selfdistill.envs.factory import make_vec_env
from rl_selfdistill.envs.registry import BACKENDS, resolve, resolve_backend
from rl_selfdistill.envs.suites import Suite, SuiteEnv, list_suites, load_suite, normalize_score

__all__ = [
    "BACKENDS",
    "AtariSettings",
    "ContinualLevelCallback",
    "ContinualWrapper",
    "EnvPoolVecEnv",
    "Suite",
    "SuiteEnv",
    "configure_torch_threads",
    "list_suites",
    "load_suite",
    "make_vec_env",
    "normalize_score",
    "resolve",
    "resolve_backend",
    "sync_levels",
]
