"""The run directory: the one module that knows its layout, its state file and its provenance.

    LOG_FOLDER/<algo>/<env>_<N>/   (or any new or empty --run-dir)
      config.yaml      fully resolved configuration (algo, env id, seed, hyperparams, options, provenance)
      command.txt      the command line, one more line per resume
      run.json         status for schedulers and reports; replaced atomically
      run.lock         flock held by the process running or resuming the run: its PID and host (see run.lock)
      progress.csv     SB3's CSV log; tb/ TensorBoard; wandb/ W&B files
      eval.csv         one row per evaluation; evaluations.npz SB3's per-episode evaluation arrays
      model.zip, vecnormalize.pkl, best_model.zip, best_vecnormalize.pkl
      checkpoints/ckpt_<step>/   see rl_selfdistill.run.checkpoints
      videos/          MP4s

`read_run_state` is the strict reader (resume refuses a broken file); `read_run_info` the
lenient one for schedulers and reports (None for a run killed before or while writing it).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rl_selfdistill.errors import UsageError

RUN_STATE = "run.json"
LOCK = "run.lock"
CONFIG = "config.yaml"
COMMAND = "command.txt"
PROGRESS_CSV = "progress.csv"
EVAL_CSV = "eval.csv"
EVALUATIONS_NPZ = "evaluations.npz"
MODEL = "model.zip"
VECNORMALIZE = "vecnormalize.pkl"
BEST_MODEL = "best_model.zip"
BEST_VECNORMALIZE = "best_vecnormalize.pkl"
CHECKPOINTS = "checkpoints"
VIDEOS = "videos"
EVAL_CSV_HEADER = "timesteps,mean_reward,std_reward,mean_ep_length,n_episodes"
# The small text files that describe a run and its results, without models (what a published benchmark keeps).
DESCRIPTION_FILES = (RUN_STATE, EVAL_CSV, PROGRESS_CSV, CONFIG, COMMAND)
PROGRAM = "rl-selfdistill"
# Packages whose versions decide what a run computes; recorded in config.yaml and run.json.
RECORDED_PACKAGES = (
    "rl-selfdistill",
    "stable-baselines3",
    "torch",
    "gymnasium",
    "numpy",
    "wandb",
    "ale-py",
    "mujoco",
    "envpool",
)


# ----------------------------------------------------------------------------- allocation


def safe_env_name(env_id: str) -> str:
    """An env id as one path component (ALE/Pong-v5 -> ALE_Pong-v5)."""
    return env_id.replace("/", "_")


def allocate_run_dir(log_folder: Path, algo: str, env_id: str) -> Path:
    """LOG_FOLDER/<algo>/<env>_<N>, N one more than the largest existing; created atomically, never reused."""
    parent = Path(log_folder) / algo
    if parent.exists() and not parent.is_dir() or Path(log_folder).exists() and not Path(log_folder).is_dir():
        raise UsageError(f"log folder {str(log_folder)!r} is not a directory; pass another -f LOG_FOLDER")
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{safe_env_name(env_id)}_"
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
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"run directory {str(run_dir)!r} already exists; pass --resume {run_dir} or choose a new one")


def claim_run_dir(run_dir: Path) -> Path:
    """Create a forced run directory; refuse one that already has content."""
    run_dir = Path(run_dir)
    refuse_existing_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def find_run_dir(path: Path, levels: int = 3) -> Path | None:
    """The run directory holding `path` (itself or one of its `levels` parents), or None."""
    path = Path(path)
    for candidate in (path, *path.parents[:levels]):
        if (candidate / CONFIG).is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------- provenance and command lines


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the source tree this package runs from (None outside a git checkout)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance() -> dict[str, Any]:
    return {"git_commit": git_commit(), "versions": package_versions()}


def format_command(words: Sequence[Any], options: Mapping[str, Any] | None = None) -> str:
    """A shell-quoted command line: `words`, then each flag of `options` with its value.

    None and False leave a flag out, True writes it alone, a list or tuple writes its items after it.
    """
    parts = [str(word) for word in words]
    for flag, value in (options or {}).items():
        if value is None or value is False or (isinstance(value, (list, tuple)) and not value):
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def invoked_command() -> str:
    """This process's command line as the user would type it."""
    return format_command([PROGRAM, *sys.argv[1:]])


# ----------------------------------------------------------------------------- files


def atomic_write_text(path: Path, text: str) -> None:
    from rl_selfdistill.tracking import atomic_write_text as write  # imports SB3: kept out of the fast error path

    write(Path(path), text)


def read_run_state(run_dir: Path) -> dict[str, Any]:
    """run.json, strictly: a missing or corrupt file is a one-line UsageError."""
    path = Path(run_dir) / RUN_STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UsageError(f"{str(path)!r} is missing or corrupt; {str(run_dir)!r} is not a usable run directory") from None
    if not isinstance(state, dict) or "status" not in state:
        raise UsageError(f"{str(path)!r} is not a run state file; {str(run_dir)!r} is not a usable run directory")
    return state


def read_run_info(run_dir: Path) -> dict[str, Any] | None:
    """run.json, leniently: None when it is absent or unreadable (a run killed before or while writing it)."""
    try:
        info = json.loads((Path(run_dir) / RUN_STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def is_finished(run_dir: Path) -> bool:
    info = read_run_info(run_dir)
    return info is not None and info.get("status") == "finished"


def write_run_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / RUN_STATE, json.dumps(state, indent=2) + "\n")


def initial_run_state(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "running",
        "algo": config["algo"],
        "env_id": config["env_id"],
        "seed": config["seed"],
        "n_timesteps": config["hyperparams"]["n_timesteps"],
        "num_timesteps_done": 0,
        "wall_clock_s": 0.0,
        "cpu_time_s": 0.0,
        "started_at": utc_now(),
        "finished_at": None,
        "git_commit": config.get("git_commit"),
        "versions": config.get("versions", {}),
        "wandb_run_id": None,
    }


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    import yaml

    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False))


def read_raw_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml as written, checked for its top-level keys only (nothing looked up in the registry yet)."""
    from rl_selfdistill import config as cfg

    path = Path(run_dir) / CONFIG
    config = cfg.read_yaml_mapping(path, what="run config")
    missing = [key for key in ("algo", "env_id", "seed", "hyperparams", "options") if key not in config]
    if missing:
        raise UsageError(
            f"run config {str(path)!r} lacks {', '.join(missing)}; {str(run_dir)!r} is not a usable run directory"
        )
    return config


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml of a run, re-validated (a hand-edited or truncated file is a one-line error)."""
    from rl_selfdistill import config as cfg

    config = read_raw_config(run_dir)
    what = f"run config {str(Path(run_dir) / CONFIG)!r}"
    config["hyperparams"] = cfg.validate_hyperparams(config["algo"], config["hyperparams"], what=what)
    return config


def append_command(run_dir: Path, command: str) -> None:
    with open(Path(run_dir) / COMMAND, "a") as handle:
        handle.write(command + "\n")


def start_eval_csv(run_dir: Path) -> None:
    (Path(run_dir) / EVAL_CSV).write_text(EVAL_CSV_HEADER + "\n")


def append_eval_row(run_dir: Path, steps: int, rewards: Sequence[float], lengths: Sequence[float]) -> None:
    import numpy as np

    row = f"{steps},{np.mean(rewards)},{np.std(rewards)},{np.mean(lengths)},{len(rewards)}\n"
    with open(Path(run_dir) / EVAL_CSV, "a") as handle:
        handle.write(row)


def last_evaluation(run_dir: Path) -> dict[str, float] | None:
    """eval.csv's newest row (timesteps, mean_reward, std_reward, mean_ep_length, n_episodes), or None before the first."""
    path = Path(run_dir) / EVAL_CSV
    if not path.exists():
        return None
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
    names = EVAL_CSV_HEADER.split(",")
    complete = [row for row in rows if len(row) == len(names)]
    return {name: float(value) for name, value in zip(names, complete[-1], strict=True)} if complete else None


def best_eval_mean(run_dir: Path) -> float | None:
    """The best mean evaluation return in eval.csv, or None before the first evaluation."""
    path = Path(run_dir) / EVAL_CSV
    if not path.exists():
        return None
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
    means = [float(row[1]) for row in rows if len(row) >= 2]
    return max(means) if means else None


def rewind_logs(run_dir: Path, steps: int) -> dict[str, Any]:
    """Forget what was logged after step `steps` (the resumed run logs those steps again).

    Returns the evaluations.npz arrays that remain (empty when there is none), for the
    evaluation callback to continue from.
    """
    from rl_selfdistill.tracking import truncate_csv_after

    run_dir = Path(run_dir)
    truncate_csv_after(run_dir / PROGRESS_CSV, steps, "time/total_timesteps")
    truncate_csv_after(run_dir / EVAL_CSV, steps, "timesteps")
    if not (run_dir / EVAL_CSV).exists():
        start_eval_csv(run_dir)
    return _rewind_evaluations(run_dir / EVALUATIONS_NPZ, steps)


def _rewind_evaluations(path: Path, steps: int) -> dict[str, Any]:
    import os

    import numpy as np

    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError):
        return {}  # none yet, or torn by a kill while SB3 wrote it: the history restarts at the resume
    keep = np.asarray(arrays.get("timesteps", [])) <= steps
    # Every array SB3 writes has one row per evaluation; anything else cannot be rewound and is dropped.
    arrays = {key: value[keep] for key, value in arrays.items() if len(value) == len(keep)}
    temp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(temp, **arrays)
    os.replace(temp, path)
    return arrays
