"""What one run is asked to do (`TrainRequest`), its checks, and its fully resolved configuration."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rl_selfdistill.run.rundir as rundir
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import check_writable_folder

VEC_ENV_BACKENDS = ("auto", "dummy", "subproc", "envpool")
DEVICES = ("auto", "cpu", "cuda")
# numpy seeds must stay below 2**32 after the eval offset and the per-env / resume offsets are added.
MAX_SEED = 2**31
# Request fields that are not run options: they are config.yaml's top-level keys, or merged into its hyperparams.
# What a resumed run may change (TrainRequest fields, with their option names): the budget, how often it
# checkpoints and evaluates, where it computes, and its W&B mode. Everything else would make it another run.
RESUMABLE = {
    "n_timesteps": "-n/--n-timesteps",
    "save_freq": "--save-freq",
    "eval_freq": "--eval-freq",
    "device": "--device",
    "wandb_mode": "--wandb-mode",
    # A property of the machine the run resumes on, not of the run: a cell resumed beside other jobs needs its share.
    "num_threads": "--num-threads",
}
_NOT_OPTIONS = ("algo", "env_id", "n_timesteps", "seed", "n_envs", "hyperparams", "env_kwargs", "run_dir", "command")


@dataclass
class TrainRequest:
    """Everything one run needs; mirrors `rl-selfdistill train` options.

    `hyperparams` are `-params` overrides on top of the preset (validated like the preset);
    `n_timesteps` and `n_envs` override the preset's values when set; `env_kwargs` are merged
    over the preset's `env_kwargs`. `gym_packages` are imported first (they may register envs
    or algorithms). `num_threads` fixes torch's threads (default: sized to the env backend).
    `save_replay_buffer` puts an off-policy algorithm's replay buffer into every checkpoint.
    `divergence_guard` stops the run when a loss or parameter turns non-finite (run/divergence.py).
    """

    algo: str
    env_id: str
    n_timesteps: int | None = None
    seed: int | None = None
    vec_env: str = "auto"
    n_envs: int | None = None
    device: str = "auto"
    log_folder: Path = Path("logs")
    eval_freq: int = 10_000
    eval_episodes: int = 5
    n_eval_envs: int = 1
    save_freq: int = 50_000
    keep_checkpoints: int = 3
    save_replay_buffer: bool = False
    divergence_guard: bool = True
    hyperparams: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    conf_file: Path | None = None
    gym_packages: list[str] = field(default_factory=list)
    num_threads: int | None = None
    wandb_project: str = "rl-selfdistill"
    wandb_entity: str | None = None
    wandb_group: str | None = None
    wandb_mode: str = "auto"
    tags: list[str] = field(default_factory=list)
    extra_tags: list[str] = field(default_factory=list)
    progress: bool = True
    video: bool = False
    verbose: int = 1
    run_dir: Path | None = None
    command: str | None = None


def import_gym_packages(modules: list[str]) -> None:
    """Import the modules that register custom envs (gymnasium.register) or algorithms (algos.registry)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UsageError(f"--gym-packages: cannot import {name!r} ({error}); install it or fix the module name") from None


def check_request(request: TrainRequest) -> None:
    from rl_selfdistill import config as cfg

    cfg.check_algo(request.algo)
    checks = [
        ("-n/--n-timesteps", request.n_timesteps, 1, True),
        ("--seed", request.seed, 0, True),
        ("--n-envs", request.n_envs, 1, True),
        ("--eval-freq", request.eval_freq, 0, False),
        ("--eval-episodes", request.eval_episodes, 1, False),
        ("--n-eval-envs", request.n_eval_envs, 1, False),
        ("--save-freq", request.save_freq, 0, False),
        ("--keep-checkpoints", request.keep_checkpoints, 1, False),
        ("--num-threads", request.num_threads, 1, True),
        ("--verbose", request.verbose, 0, False),
    ]
    for option, value, minimum, may_be_none in checks:
        if value is None and may_be_none:
            continue
        _check_integer(option, value, minimum)
    if request.seed is not None and request.seed >= MAX_SEED:
        raise UsageError(f"--seed must be below {MAX_SEED}, got {request.seed}")
    _check_wandb_mode(request.wandb_mode)
    if request.vec_env not in VEC_ENV_BACKENDS:
        raise UsageError(f"unknown --vec-env {request.vec_env!r}; choose one of {', '.join(VEC_ENV_BACKENDS)}")
    check_device(request.device)


def _check_integer(option: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{option} must be an integer >= {minimum}, got {value!r}")


def _check_wandb_mode(mode: str) -> None:
    from rl_selfdistill import config as cfg

    if mode not in cfg.WANDB_MODES:
        raise UsageError(f"unknown --wandb-mode {mode!r}; choose one of {', '.join(cfg.WANDB_MODES)}")


def check_resume_changes(changes: dict[str, Any]) -> None:
    """What a resume may change (`RESUMABLE`), each checked like a new run's; anything else is refused, named."""
    fixed = sorted(set(changes) - set(RESUMABLE))
    if fixed:
        raise UsageError(
            f"a resumed run keeps its {', '.join(fixed)} from its config.yaml; only {', '.join(RESUMABLE)} can change"
        )
    for name, minimum in (("n_timesteps", 1), ("save_freq", 0), ("eval_freq", 0), ("num_threads", 1)):
        if name in changes:
            _check_integer(RESUMABLE[name], changes[name], minimum)
    if "wandb_mode" in changes:
        _check_wandb_mode(changes["wandb_mode"])
    if "device" in changes:
        check_device(changes["device"])


def check_device(device: str) -> None:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown --device {device!r}; choose auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} but no CUDA GPU is visible; use --device auto or cpu")


def resolve_config(request: TrainRequest) -> dict[str, Any]:
    """The fully resolved run configuration written to config.yaml (validated, no objects)."""
    import numpy as np

    from rl_selfdistill import config as cfg

    import_gym_packages(request.gym_packages)
    check_request(request)
    if request.run_dir is not None:
        rundir.refuse_existing_run_dir(Path(request.run_dir))
        check_writable_folder(Path(request.run_dir), "--run-dir")
    else:
        check_writable_folder(Path(request.log_folder), "-f/--log-folder")  # before any env is built
    cfg.validate_hyperparams(request.algo, request.hyperparams, what="-params")  # fails fast, before any env lookup
    # -n and --n-envs are overrides like -params (an env the preset does not list needs -n to have a budget at all).
    budget = {"n_timesteps": request.n_timesteps, "n_envs": request.n_envs}
    overrides = {**request.hyperparams, **{key: value for key, value in budget.items() if value is not None}}
    hyperparams = cfg.resolve_hyperparams(request.algo, request.env_id, overrides, conf_file=request.conf_file)
    if request.env_kwargs:
        merged = {**(hyperparams.get("env_kwargs") or {}), **request.env_kwargs}
        hyperparams.update(cfg.validate_hyperparams(request.algo, {"env_kwargs": merged}, what="--env-kwargs"))
    seed = request.seed if request.seed is not None else int(np.random.SeedSequence().entropy % MAX_SEED)
    options = {
        name: (str(value) if isinstance(value, Path) else value)
        for name, value in dataclasses.asdict(request).items()
        if name not in _NOT_OPTIONS
    }
    return {"algo": request.algo, "env_id": request.env_id, "seed": seed, "hyperparams": hyperparams, "options": options}


def with_provenance(config: dict[str, Any]) -> dict[str, Any]:
    """The config with the class defaults the preset left out, the git commit and package versions."""
    from rl_selfdistill.config.schema import constructor_defaults

    # Class defaults of the keys the preset leaves out, so that config.yaml is fully resolved.
    defaults = constructor_defaults(config["algo"])
    missing = {key: value for key, value in defaults.items() if key not in config["hyperparams"]}
    hyperparams = {**config["hyperparams"], **missing}
    return {**config, "hyperparams": hyperparams, **rundir.provenance()}
