"""Building what a run trains: its vectorised envs, torch's thread count and the model."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.interrupts import sigint_ignored_by_env_workers

# Offset between the training and evaluation env seeds, so the two never replay the same episodes.
EVAL_SEED_OFFSET = 10_000


def evaluates_deterministically(env_id: str) -> bool:
    """The RL Zoo's convention: Atari policies are evaluated stochastically, everything else greedily."""
    from rl_selfdistill.config import env_family

    return env_family(env_id) != "atari"


def make_env(env_id: str, hyperparams: dict[str, Any], *, n_envs: int, backend: str, seed: int, render: bool = False) -> Any:
    """Vectorised env from the environment layer, with Monitor stats, Atari preprocessing and frame stacking."""
    from rl_selfdistill.envs import make_vec_env

    return make_vec_env(
        env_id,
        n_envs=n_envs,
        backend=backend,
        seed=seed,
        max_episode_steps=hyperparams.get("max_episode_steps"),
        env_kwargs=hyperparams.get("env_kwargs") or None,
        frame_stack=hyperparams.get("frame_stack"),
        wrapper_kwargs=hyperparams.get("wrapper_kwargs"),
        render_mode="rgb_array" if render else None,
    )


def backend_of(env: Any) -> str:
    """The backend a built VecEnv runs on (what --vec-env auto chose): dummy, subproc or envpool."""
    names = {"DummyVecEnv": "dummy", "SubprocVecEnv": "subproc", "EnvPoolVecEnv": "envpool"}
    kind = type(env.unwrapped).__name__
    return names.get(kind, kind)


def normalize_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any] | None:
    """VecNormalize options from the preset's `normalize` key; None when off."""
    value = hyperparams.get("normalize", False)
    if value is False:
        return None
    kwargs = {} if value is True else dict(value)
    kwargs.setdefault("gamma", hyperparams.get("gamma", 0.99))
    return kwargs


def frozen_normalization(env: Any, statistics: Any) -> Any:
    """`env` wrapped in VecNormalize whose statistics (a saved file, or a live VecNormalize) never update; raw rewards."""
    import copy

    from stable_baselines3.common.vec_env import VecNormalize

    if isinstance(statistics, (str, Path)):
        wrapped = VecNormalize.load(str(statistics), env)
    else:
        settings = ("norm_obs", "clip_obs", "clip_reward", "gamma", "epsilon", "norm_obs_keys")
        wrapped = VecNormalize(env, **{name: getattr(statistics, name) for name in settings})
        # Copies, as SB3's sync_envs_normalization makes: evaluating must not touch the training statistics.
        wrapped.obs_rms, wrapped.ret_rms = copy.deepcopy(statistics.obs_rms), copy.deepcopy(statistics.ret_rms)
    wrapped.training = False
    wrapped.norm_reward = False
    return wrapped


def build_envs(config: dict[str, Any], *, seed: int, vecnormalize_path: Path | None = None) -> tuple[Any, Any]:
    """Training and evaluation envs; VecNormalize statistics restored from `vecnormalize_path` when given."""
    from stable_baselines3.common.vec_env import VecNormalize

    hyperparams, options = config["hyperparams"], config["options"]
    with sigint_ignored_by_env_workers():  # Ctrl-C reaches the workers too; the run must finish its rollout
        env = make_env(config["env_id"], hyperparams, n_envs=hyperparams["n_envs"], backend=options["vec_env"], seed=seed)
    # The eval env is a DummyVecEnv so that it can render; --n-eval-envs runs several episodes side by side.
    n_eval_envs = int(options.get("n_eval_envs") or 1)
    eval_env = make_env(config["env_id"], hyperparams, n_envs=n_eval_envs, backend="dummy", seed=seed + EVAL_SEED_OFFSET)
    kwargs = normalize_kwargs(hyperparams)
    if kwargs is not None:
        if vecnormalize_path is not None:
            env = VecNormalize.load(str(vecnormalize_path), env)
        else:
            env = VecNormalize(env, **kwargs)
        # Evaluation reports raw returns: statistics are synced from training, never updated here.
        eval_env = VecNormalize(eval_env, **{**kwargs, "training": False, "norm_reward": False})
    return env, eval_env


def check_action_space(algo: str, env: Any) -> None:
    from gymnasium import spaces

    from rl_selfdistill.algos import registry

    if registry.get(algo).discrete_only and not isinstance(env.action_space, spaces.Discrete):
        usable = [name for name in registry.names() if not registry.get(name).discrete_only]
        kind = type(env.action_space).__name__
        raise UsageError(f"{algo} needs a discrete action space, this env's is {kind}; use one of {', '.join(usable)}")
    if registry.get(algo).continuous_only and not isinstance(env.action_space, spaces.Box):
        usable = [name for name in registry.names() if not registry.get(name).continuous_only]
        kind = type(env.action_space).__name__
        raise UsageError(f"{algo} needs a continuous (Box) action space, this env's is {kind}; use one of {', '.join(usable)}")
    if registry.get(algo).needs_action_masks and not env.has_attr("action_masks"):
        usable = [name for name in registry.names() if not registry.get(name).needs_action_masks]
        raise UsageError(
            f"{algo} needs an env with action masks (an action_masks() method) and this one has none; "
            f"train it on one that has, e.g. MaskedIdentity-v0, or use one of {', '.join(usable)}"
        )


def torch_threads(config: dict[str, Any]) -> int:
    """Threads for torch: --num-threads, else a count that leaves cores to the env workers of the real backend."""
    from rl_selfdistill.envs import configure_torch_threads, resolve_backend

    hyperparams, options = config["hyperparams"], config["options"]
    requested = options.get("num_threads")
    if requested:
        import torch

        torch.set_num_threads(int(requested))
        return int(requested)
    # "auto" is resolved first: it may mean envpool or subproc, whose workers need cores of their own.
    backend = resolve_backend(config["env_id"], options["vec_env"], hyperparams["n_envs"])
    return configure_torch_threads(hyperparams["n_envs"], backend)


def build_model(config: dict[str, Any], env: Any) -> Any:
    from rl_selfdistill import config as cfg
    from rl_selfdistill.algos import registry
    from rl_selfdistill.config.policy import action_noise

    torch_threads(config)
    hyperparams = config["hyperparams"]
    algo_class = registry.algo_class(config["algo"])
    kwargs = cfg.model_kwargs(hyperparams)
    noise = action_noise(hyperparams, env.action_space)
    if noise is not None:
        if "action_noise" not in inspect.signature(algo_class).parameters:
            raise UsageError(f"{config['algo']} takes no action noise; drop noise_type and noise_std")
        kwargs["action_noise"] = noise
    return algo_class(
        hyperparams.get("policy", "MlpPolicy"),
        env,
        seed=config["seed"],
        device=config["options"]["device"],
        verbose=0,
        **kwargs,
    )


def load_model(config: dict[str, Any], path: Path, env: Any, *, device: str | None = None) -> Any:
    """A saved model of this run's algorithm, attached to `env`."""
    from rl_selfdistill.algos import registry

    return registry.algo_class(config["algo"]).load(path, env=env, device=device or config["options"]["device"])
