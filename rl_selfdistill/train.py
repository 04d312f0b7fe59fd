"""One training run: environments, model, callbacks, run directory, checkpoints and resume.

Public API (used by the CLI and by the benchmark runner):

    run_training(TrainRequest(algo="sd_ppo", env_id="CartPole-v1")) -> run directory
    resume_training(run_dir) -> run directory

A run directory holds config.yaml (fully resolved), command.txt, run.json (status, for
schedulers), progress.csv, TensorBoard events (tb/), eval.csv, best_model.zip, model.zip,
checkpoints/ and the W&B files (wandb/).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rl_selfdistill import config as cfg
from rl_selfdistill.errors import UsageError

VEC_ENV_BACKENDS = ("auto", "dummy", "subproc", "envpool")
DEVICES = ("auto", "cpu", "cuda")
RUN_STATE_FILE = "run.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "ckpt_"
# Tests set this to hold a checkpoint between its temp write and its rename, to kill the process there.
CHECKPOINT_SLEEP_ENV = "RL_SELFDISTILL_CHECKPOINT_SLEEP_S"
# Offset between the training and evaluation env seeds, so the two never replay the same episodes.
EVAL_SEED_OFFSET = 10_000
# numpy seeds must stay below 2**32 after the eval offset and the per-env / resume offsets are added.
MAX_SEED = 2**31


@dataclass
class TrainRequest:
    """Everything one run needs; mirrors `rl-selfdistill train` options.

    `hyperparams` are `-params` overrides on top of the preset (validated like the preset);
    `n_timesteps` and `n_envs` override the preset's values when set.
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
    save_freq: int = 50_000
    keep_checkpoints: int = 3
    hyperparams: dict[str, Any] = field(default_factory=dict)
    conf_file: Path | None = None
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


# ----------------------------------------------------------------------------- validation and resolution


def _check_request(request: TrainRequest) -> None:
    cfg.check_algo(request.algo)
    checks = [
        ("-n/--n-timesteps", request.n_timesteps, 1, True),
        ("--seed", request.seed, 0, True),
        ("--n-envs", request.n_envs, 1, True),
        ("--eval-freq", request.eval_freq, 0, False),
        ("--eval-episodes", request.eval_episodes, 1, False),
        ("--save-freq", request.save_freq, 0, False),
        ("--keep-checkpoints", request.keep_checkpoints, 1, False),
    ]
    for option, value, minimum, may_be_none in checks:
        if value is None and may_be_none:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f"{option} must be an integer >= {minimum}, got {value!r}")
    if request.seed is not None and request.seed >= MAX_SEED:
        raise UsageError(f"--seed must be below {MAX_SEED}, got {request.seed}")
    if request.wandb_mode not in cfg.WANDB_MODES:
        raise UsageError(f"unknown --wandb-mode {request.wandb_mode!r}; choose one of {', '.join(cfg.WANDB_MODES)}")
    if request.vec_env not in VEC_ENV_BACKENDS:
        raise UsageError(f"unknown --vec-env {request.vec_env!r}; choose one of {', '.join(VEC_ENV_BACKENDS)}")
    _check_device(request.device)


def _check_device(device: str) -> None:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown --device {device!r}; choose auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} but no CUDA GPU is visible; use --device auto or cpu")


def resolve_config(request: TrainRequest) -> dict[str, Any]:
    """The fully resolved run configuration written to config.yaml (validated, no objects)."""
    _check_request(request)
    cfg.validate_hyperparams(request.algo, request.hyperparams, what="-params")  # fails fast, before any env lookup
    if request.run_dir is not None:
        refuse_existing_run_dir(Path(request.run_dir))
    hyperparams = cfg.resolve_hyperparams(request.algo, request.env_id, request.hyperparams, conf_file=request.conf_file)
    if request.n_timesteps is not None:
        hyperparams["n_timesteps"] = request.n_timesteps
    if request.n_envs is not None:
        hyperparams["n_envs"] = request.n_envs
    seed = request.seed if request.seed is not None else int(np.random.SeedSequence().entropy % MAX_SEED)
    options = {
        name: (str(value) if isinstance(value, Path) else value)
        for name, value in dataclasses.asdict(request).items()
        if name not in ("algo", "env_id", "n_timesteps", "seed", "n_envs", "hyperparams", "run_dir", "command")
    }
    return {"algo": request.algo, "env_id": request.env_id, "seed": seed, "hyperparams": hyperparams, "options": options}


def algo_class(algo: str) -> type:
    from stable_baselines3 import DQN, PPO

    from rl_selfdistill import SelfDistillDQN, SelfDistillPPO

    return {"ppo": PPO, "dqn": DQN, "sd_ppo": SelfDistillPPO, "sd_dqn": SelfDistillDQN}[algo]


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of `cls` including those its __init__ forwards to its bases via **kwargs."""
    parameters: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for name, parameter in inspect.signature(klass.__init__).parameters.items():
                parameters.setdefault(name, parameter)
    return parameters


def constructor_defaults(algo: str, hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Class defaults of the schema keys the preset leaves out, so config.yaml is fully resolved."""
    parameters = constructor_parameters(algo_class(algo))
    defaults: dict[str, Any] = {}
    for key in cfg.SCHEMAS[algo]:
        parameter = parameters.get(key)
        # Meta keys (policy_kwargs, ...) are run-level; their absence is meaningful (SB3 builds its own defaults).
        if key in hyperparams or key in cfg.META_KEYS or parameter is None or parameter.default is inspect.Parameter.empty:
            continue
        value = parameter.default
        defaults[key] = list(value) if isinstance(value, tuple) else value
    return defaults


# ----------------------------------------------------------------------------- environments


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


def normalize_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any] | None:
    """VecNormalize options from the preset's `normalize` key; None when off."""
    value = hyperparams.get("normalize", False)
    if value is False:
        return None
    kwargs = {} if value is True else dict(value)
    kwargs.setdefault("gamma", hyperparams.get("gamma", 0.99))
    return kwargs


def build_envs(config: dict[str, Any], *, seed: int, vecnormalize_path: Path | None = None) -> tuple[Any, Any]:
    """Training and evaluation envs; VecNormalize statistics restored from `vecnormalize_path` when given."""
    from stable_baselines3.common.vec_env import VecNormalize

    hyperparams, options = config["hyperparams"], config["options"]
    env = make_env(config["env_id"], hyperparams, n_envs=hyperparams["n_envs"], backend=options["vec_env"], seed=seed)
    eval_env = make_env(config["env_id"], hyperparams, n_envs=1, backend="dummy", seed=seed + EVAL_SEED_OFFSET)
    kwargs = normalize_kwargs(hyperparams)
    if kwargs is not None:
        if vecnormalize_path is not None:
            env = VecNormalize.load(str(vecnormalize_path), env)
        else:
            env = VecNormalize(env, **kwargs)
        # Evaluation reports raw returns: statistics are synced from training, never updated here.
        eval_env = VecNormalize(eval_env, **{**kwargs, "training": False, "norm_reward": False})
    return env, eval_env


def _check_action_space(algo: str, env: Any) -> None:
    from gymnasium import spaces

    if algo.endswith("dqn") and not isinstance(env.action_space, spaces.Discrete):
        kind = type(env.action_space).__name__
        raise UsageError(f"{algo} needs a discrete action space, this env's is {kind}; use ppo or sd_ppo")


# ----------------------------------------------------------------------------- run directory and state


def _safe_env_name(env_id: str) -> str:
    return env_id.replace("/", "_")


def allocate_run_dir(log_folder: Path, algo: str, env_id: str) -> Path:
    """LOG_FOLDER/<algo>/<env>_<N>, N one more than the largest existing; created atomically, never reused."""
    parent = Path(log_folder) / algo
    if parent.exists() and not parent.is_dir() or Path(log_folder).exists() and not Path(log_folder).is_dir():
        raise UsageError(f"log folder {str(log_folder)!r} is not a directory; pass another -f LOG_FOLDER")
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{_safe_env_name(env_id)}_"
    numbers = [int(path.name[len(prefix) :]) for path in parent.glob(prefix + "*") if path.name[len(prefix) :].isdigit()]
    number = max(numbers, default=0) + 1
    while True:
        candidate = parent / f"{prefix}{number}"
        try:
            candidate.mkdir()  # fails if a concurrent run took this number: try the next one
            return candidate
        except FileExistsError:
            number += 1


def refuse_existing_run_dir(run_dir: Path) -> None:
    """A forced run directory must be new or empty: an existing run is never overwritten."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"run directory {str(run_dir)!r} already exists; pass --resume {run_dir} or choose a new one")


def claim_run_dir(run_dir: Path) -> Path:
    """Create a forced run directory; refuse one that already has content."""
    run_dir = Path(run_dir)
    refuse_existing_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for package in (
        "rl-selfdistill",
        "stable-baselines3",
        "torch",
        "gymnasium",
        "numpy",
        "wandb",
        "ale-py",
        "mujoco",
        "envpool",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_run_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"{str(path)!r} is missing or corrupt; {str(run_dir)!r} is not a usable run directory") from None
    if not isinstance(state, dict) or "status" not in state:
        raise UsageError(f"{str(path)!r} is not a run state file; {str(run_dir)!r} is not a usable run directory")
    return state


def _atomic_write(path: Path, text: str) -> None:
    from rl_selfdistill.tracking import atomic_write_text  # imports SB3: kept out of the fast error path

    atomic_write_text(path, text)


def write_run_state(run_dir: Path, state: dict[str, Any]) -> None:
    _atomic_write(Path(run_dir) / RUN_STATE_FILE, json.dumps(state, indent=2) + "\n")


def initial_run_state(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "running",
        "algo": config["algo"],
        "env_id": config["env_id"],
        "seed": config["seed"],
        "n_timesteps": config["hyperparams"]["n_timesteps"],
        "num_timesteps_done": 0,
        "wall_clock_s": 0.0,
        "started_at": _now(),
        "finished_at": None,
        "git_commit": config.get("git_commit"),
        "versions": config.get("versions", {}),
        "wandb_run_id": None,
    }


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml of a run, re-validated (a hand-edited or truncated file is a one-line error)."""
    path = Path(run_dir) / CONFIG_FILE
    config = cfg.read_yaml_mapping(path, what="run config")
    missing = [key for key in ("algo", "env_id", "seed", "hyperparams", "options") if key not in config]
    if missing:
        raise UsageError(
            f"run config {str(path)!r} lacks {', '.join(missing)}; {str(run_dir)!r} is not a usable run directory"
        )
    config["hyperparams"] = cfg.validate_hyperparams(config["algo"], config["hyperparams"], what=f"run config {str(path)!r}")
    return config


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_steps(path: Path) -> int | None:
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint is complete when its meta.json exists and every file it lists has the recorded size."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        return all((path / name).stat().st_size == size for name, size in meta["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(steps, path) for path in folder.iterdir() if (steps := _checkpoint_steps(path)) is not None]
    return [path for _, path in sorted(found) if is_complete_checkpoint(path)]


def rng_state(model: Any) -> dict[str, Any]:
    """Every RNG that training draws from: python, numpy, torch (CPU and CUDA) and the action space's."""
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def write_checkpoint(run_dir: Path, model: Any, *, wandb_run_id: str | None, keep: int) -> Path:
    """Write model (+teacher, optimizer), VecNormalize stats, replay buffer and RNG state; atomic via directory rename."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    steps = int(model.num_timesteps)
    final = folder / f"{CHECKPOINT_PREFIX}{steps:012d}"
    temp = folder / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    # RNG first: saving must not be observed as a draw by anything below.
    with open(temp / "rng.pkl", "wb") as handle:
        pickle.dump(rng_state(model), handle)
    model.save(temp / "model.zip")
    if model.get_vec_normalize_env() is not None:
        model.get_vec_normalize_env().save(str(temp / "vecnormalize.pkl"))
    if getattr(model, "replay_buffer", None) is not None:
        model.save_replay_buffer(temp / "replay_buffer.pkl")
    files = {path.name: path.stat().st_size for path in temp.iterdir()}
    meta = {"num_timesteps": steps, "wandb_run_id": wandb_run_id, "created_at": _now(), "files": files}
    (temp / "meta.json").write_text(json.dumps(meta, indent=2))
    _fsync_tree(temp)
    delay = float(os.environ.get(CHECKPOINT_SLEEP_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    if final.exists():  # same step saved before a crash: replace it with this one
        shutil.rmtree(final)
    os.rename(temp, final)
    _prune_checkpoints(run_dir, keep)
    return final


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    complete = list_checkpoints(run_dir)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in (Path(run_dir) / CHECKPOINT_DIR).glob(".tmp-*"):
        if not leftover.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)  # half-written by a killed process


def load_checkpoint(checkpoint: Path, config: dict[str, Any], *, device: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Model restored from a checkpoint with its envs, replay buffer and RNG state: (model, eval_env, meta)."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    steps = int(meta["num_timesteps"])
    vecnormalize = checkpoint / "vecnormalize.pkl"
    # Env state is not checkpointed: the envs are re-seeded deterministically from the run seed and the step count.
    env, eval_env = build_envs(
        config, seed=config["seed"] + steps, vecnormalize_path=vecnormalize if vecnormalize.exists() else None
    )
    device = device or config["options"]["device"]
    _configure_threads(config)
    model = algo_class(config["algo"]).load(checkpoint / "model.zip", env=env, device=device)
    if (checkpoint / "replay_buffer.pkl").exists():
        model.load_replay_buffer(checkpoint / "replay_buffer.pkl")
    with open(checkpoint / "rng.pkl", "rb") as handle:
        set_rng_state(model, pickle.load(handle))
    env.seed(config["seed"] + steps)
    model._last_obs = None  # makes learn() reset the freshly built envs instead of stepping them un-reset
    return model, eval_env, meta


# ----------------------------------------------------------------------------- callbacks


def _callbacks(session: _Session) -> Any:
    from stable_baselines3.common.callbacks import CallbackList

    from rl_selfdistill.progress import ProgressBarCallback, progress_wanted

    callbacks = [_checkpoint_callback(session)]
    options = session.config["options"]
    if options["eval_freq"] > 0:
        callbacks.append(_make_eval_callback(session))
    if progress_wanted(options["progress"]):
        callbacks.append(ProgressBarCallback(session.config["hyperparams"]["n_timesteps"]))
    callbacks.extend(session.extra_callbacks)
    return CallbackList(callbacks)


def _make_eval_callback(session: _Session) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

    class _EvalRecorder(BaseCallback):
        """Appends one eval.csv row per evaluation (raw returns, from the eval env's Monitor)."""

        def _on_step(self) -> bool:
            parent = self.parent
            rewards, lengths = parent.evaluations_results[-1], parent.evaluations_length[-1]
            row = f"{self.num_timesteps},{np.mean(rewards)},{np.std(rewards)},{np.mean(lengths)},{len(rewards)}\n"
            with open(session.run_dir / "eval.csv", "a") as handle:
                handle.write(row)
            return True

    class _SaveBestVecNormalize(BaseCallback):
        def _on_step(self) -> bool:
            vecnormalize = self.model.get_vec_normalize_env()
            if vecnormalize is not None:
                vecnormalize.save(str(session.run_dir / "best_vecnormalize.pkl"))
            return True

    options = session.config["options"]
    n_envs = session.config["hyperparams"]["n_envs"]
    # The eval env is always a DummyVecEnv (it must be able to render); SB3 warns when training uses another backend.
    warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
    callback = EvalCallback(
        session.eval_env,
        callback_on_new_best=_SaveBestVecNormalize(),
        callback_after_eval=_EvalRecorder(),
        n_eval_episodes=options["eval_episodes"],
        eval_freq=max(options["eval_freq"] // n_envs, 1),
        log_path=str(session.run_dir),  # writes evaluations.npz
        best_model_save_path=str(session.run_dir),
        # As in the RL Zoo: Atari policies are evaluated stochastically, everything else deterministically.
        deterministic=cfg.env_family(session.config["env_id"]) != "atari",
        verbose=0,
    )
    _continue_eval_history(callback, session, n_envs)
    return callback


def _continue_eval_history(callback: Any, session: _Session, n_envs: int) -> None:
    """On resume: keep the evaluation cadence in absolute steps and the best reward seen so far."""
    steps = session.model.num_timesteps
    callback.n_calls = steps // n_envs
    path = session.run_dir / "eval.csv"
    if steps and path.exists():
        rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
        means = [float(row[1]) for row in rows if len(row) >= 2]
        if means:
            callback.best_mean_reward = max(means)


def _checkpoint_callback(session: _Session) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class CheckpointCallback(BaseCallback):
        """Checkpoint at the first rollout start after each multiple of save_freq.

        Rollout starts are the one point where the previous update is complete and nothing of
        the next one exists, so a resumed run continues where the algorithm's own loop would.
        """

        def __init__(self) -> None:
            super().__init__()
            self.save_freq = session.config["options"]["save_freq"]
            self.next_save = -1

        def _on_training_start(self) -> None:
            if self.save_freq > 0:
                self.next_save = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

        def _on_rollout_start(self) -> None:
            if self.save_freq > 0 and self.model.num_timesteps >= self.next_save:
                session.checkpoint()
                self.next_save = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

        def _on_step(self) -> bool:
            return True

    return CheckpointCallback()


# ----------------------------------------------------------------------------- one run


@dataclass
class _Session:
    config: dict[str, Any]
    run_dir: Path
    model: Any
    eval_env: Any
    state: dict[str, Any]
    wandb_run: Any = None
    resumed: bool = False
    extra_callbacks: list[Any] = field(default_factory=list)
    _clock_start: float = field(default_factory=time.monotonic)
    _clock_base: float = 0.0

    def update_state(self, **changes: Any) -> None:
        self.state.update(changes)
        self.state["num_timesteps_done"] = int(self.model.num_timesteps)
        self.state["wall_clock_s"] = round(self._clock_base + time.monotonic() - self._clock_start, 3)
        write_run_state(self.run_dir, self.state)

    def checkpoint(self) -> None:
        wandb_id = self.wandb_run.id if self.wandb_run is not None else None
        write_checkpoint(self.run_dir, self.model, wandb_run_id=wandb_id, keep=self.config["options"]["keep_checkpoints"])
        self.update_state()


def _configure_threads(config: dict[str, Any]) -> None:
    from rl_selfdistill.envs import configure_torch_threads

    # Leaves cores to env workers (subproc/envpool); OMP_NUM_THREADS or RL_SELFDISTILL_TORCH_THREADS win.
    configure_torch_threads(config["hyperparams"]["n_envs"], config["options"]["vec_env"])


def _build_model(config: dict[str, Any], env: Any) -> Any:
    _configure_threads(config)
    hyperparams = config["hyperparams"]
    kwargs = cfg.model_kwargs(hyperparams)
    return algo_class(config["algo"])(
        hyperparams.get("policy", "MlpPolicy"),
        env,
        seed=config["seed"],
        device=config["options"]["device"],
        verbose=0,
        **kwargs,
    )


def run_training(request: TrainRequest, *, callbacks: list[Any] | None = None) -> Path:
    """Train one run from scratch; returns its run directory.

    Everything that can be wrong with the request is checked before the run directory exists.
    `callbacks` are extra SB3 callbacks (not recorded in config.yaml).
    """
    config = resolve_config(request)
    config["hyperparams"] = {**config["hyperparams"], **constructor_defaults(request.algo, config["hyperparams"])}
    config["git_commit"] = git_commit()
    config["versions"] = package_versions()
    env, eval_env = build_envs(config, seed=config["seed"])
    _check_action_space(request.algo, env)
    model = _build_model(config, env)
    run_dir = (
        claim_run_dir(request.run_dir)
        if request.run_dir
        else allocate_run_dir(request.log_folder, request.algo, request.env_id)
    )
    _atomic_write(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    (run_dir / "command.txt").write_text((request.command or _command_line()) + "\n")
    (run_dir / "eval.csv").write_text("timesteps,mean_reward,std_reward,mean_ep_length,n_episodes\n")
    session = _Session(config, run_dir, model, eval_env, initial_run_state(config), extra_callbacks=list(callbacks or []))
    write_run_state(run_dir, session.state)
    _learn(session, request.extra_tags)
    return run_dir


def _command_line() -> str:
    import shlex

    return " ".join(shlex.quote(part) for part in ["rl-selfdistill", *sys.argv[1:]])


def resume_training(run_dir: Path, *, callbacks: list[Any] | None = None, extra_tags: list[str] | None = None) -> Path:
    """Continue a run from its newest complete checkpoint to its original budget; returns the run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {str(run_dir)!r}: no such run directory; pass a folder like logs/sd_ppo/CartPole-v1_1")
    config = read_config(run_dir)
    # A run killed between writing config.yaml and run.json has no state yet: it starts over.
    state = read_run_state(run_dir) if (run_dir / RUN_STATE_FILE).exists() else initial_run_state(config)
    if state["status"] == "finished":
        raise UsageError(f"run {str(run_dir)!r} already finished its budget; start a new run instead of --resume")
    _check_device(config["options"]["device"])
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        model, eval_env, meta = load_checkpoint(checkpoints[-1], config)
        state["wandb_run_id"] = meta.get("wandb_run_id") or state.get("wandb_run_id")
    else:  # killed before its first checkpoint: start over in the same directory
        env, eval_env = build_envs(config, seed=config["seed"])
        model = _build_model(config, env)
    steps = int(model.num_timesteps)
    _rewind_logs(run_dir, steps)
    session = _Session(config, run_dir, model, eval_env, state, resumed=True, extra_callbacks=list(callbacks or []))
    session._clock_base = float(state.get("wall_clock_s") or 0.0)
    with open(run_dir / "command.txt", "a") as handle:
        handle.write(_command_line() + f"  # resumed at step {steps}\n")
    _learn(session, extra_tags or [])
    return run_dir


def _rewind_logs(run_dir: Path, steps: int) -> None:
    """Forget what was logged after the checkpoint: the resumed run logs those steps again."""
    from rl_selfdistill.tracking import truncate_csv_after

    truncate_csv_after(run_dir / "progress.csv", steps, "time/total_timesteps")
    truncate_csv_after(run_dir / "eval.csv", steps, "timesteps")
    if not (run_dir / "eval.csv").exists():
        (run_dir / "eval.csv").write_text("timesteps,mean_reward,std_reward,mean_ep_length,n_episodes\n")


def _start_tracking(session: _Session, extra_tags: list[str]) -> None:
    from rl_selfdistill import tracking

    config, options = session.config, session.config["options"]
    session.wandb_run = tracking.init_wandb(
        mode=options["wandb_mode"],
        run_dir=session.run_dir,
        project=options["wandb_project"],
        entity=options["wandb_entity"],
        group=options["wandb_group"] or f"{config['algo']}_{_safe_env_name(config['env_id'])}",
        name=session.run_dir.name,
        tags=[config["algo"], config["env_id"], *options["tags"], *options.get("extra_tags", []), *extra_tags],
        config=config,
        run_id=session.state.get("wandb_run_id"),
    )
    if session.wandb_run is not None:
        session.state["wandb_run_id"] = session.wandb_run.id
    if options["verbose"] >= 1:
        print(f"run directory: {session.run_dir}", file=sys.stderr)
        print(tracking.describe_wandb_run(session.wandb_run), file=sys.stderr)
    from rl_selfdistill.progress import progress_wanted

    stdout_table = options["verbose"] >= 1 and not progress_wanted(options["progress"])
    session.model.set_logger(
        tracking.make_logger(session.run_dir, session.wandb_run, stdout=stdout_table, resume=session.resumed)
    )


def _learn(session: _Session, extra_tags: list[str]) -> None:
    from rl_selfdistill import tracking

    _start_tracking(session, extra_tags)
    session.update_state(status="running")
    total = int(session.config["hyperparams"]["n_timesteps"])
    remaining = max(total - int(session.model.num_timesteps), 0)
    exit_code = 1
    try:
        # SB3 adds num_timesteps to the budget when reset_num_timesteps=False (issue #1277): pass what is left.
        session.model.learn(remaining, callback=_callbacks(session), reset_num_timesteps=not session.resumed)
        if session.model._total_timesteps != total:
            raise RuntimeError(f"schedule horizon is {session.model._total_timesteps}, expected {total}")
        _finish(session)
        exit_code = 0
    finally:
        session.model.logger.close()
        tracking.finish_wandb(session.wandb_run, exit_code=exit_code)


def _finish(session: _Session) -> None:
    from rl_selfdistill import tracking

    final = session.run_dir / "model.zip"
    temp = session.run_dir / ".model.zip.tmp.zip"
    session.model.save(temp)
    os.replace(temp, final)
    if session.model.get_vec_normalize_env() is not None:
        session.model.get_vec_normalize_env().save(str(session.run_dir / "vecnormalize.pkl"))
    session.update_state(status="finished", finished_at=_now())
    if session.config["options"].get("video"):
        from rl_selfdistill.evaluate import record_video

        video = record_video(session.run_dir, session.run_dir / "videos" / "final.mp4")
        if session.wandb_run is not None:
            tracking.log_video(session.wandb_run, video, key="eval/video", step=session.model.num_timesteps)
    if session.wandb_run is not None:
        name = f"model-{session.config['algo']}-{_safe_env_name(session.config['env_id'])}-{session.wandb_run.id}"
        metadata = {"num_timesteps": int(session.model.num_timesteps), "seed": session.config["seed"]}
        tracking.log_model_artifact(session.wandb_run, final, name=name.replace("/", "_"), metadata=metadata)
