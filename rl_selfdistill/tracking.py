"""Run tracking: SB3 logger outputs (CSV, TensorBoard, stdout) and Weights & Biases.

W&B is on by default and never blocks training: `auto` mode goes online only when an
API key is configured, and an online start that fails or hangs falls back to an offline
run (uploadable later with `wandb sync`) within FALLBACK_PROMISE_S, with one warning line
that gives the reason; the failed attempt's `wandb/run-*` folder is removed.

W&B and TensorBoard are optional (the `track` extra): the algorithms are a library first,
and a run without them still writes progress.csv. Without tensorboard there are no `tb/`
event files; without wandb, W&B is off and one warning line says how to install it.
"""

from __future__ import annotations

import netrc
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from stable_baselines3.common import logger as sb3_logger
from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HumanOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
    Video,
    filter_excluded_keys,
)

from rl_selfdistill.config import WANDB_MODES
from rl_selfdistill.errors import UsageError

# What README.md and docs/training.md promise: an unreachable server costs at most this many seconds.
FALLBACK_PROMISE_S = 20
# Seconds an online wandb.init may take before we give up on it; wandb's own teardown of the attempt
# (about a second) must still fit under the promise.
ONLINE_INIT_TIMEOUT_S = 15.0
STEP_METRIC = "global_step"
TRACK_EXTRA = "pip install 'rl-selfdistill[track]'"


# ----------------------------------------------------------------------------- SB3 logger outputs


class WandbOutputFormat(KVWriter):
    """SB3 logger output that sends every scalar key to W&B, with the env step as x-axis."""

    def __init__(self, run: Any) -> None:
        self.run = run
        # A custom step metric (not wandb's own step) accepts steps that go back after a resume from a checkpoint.
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        import wandb

        data: dict[str, Any] = {}
        for key, value in filter_excluded_keys(key_values, key_excluded, "wandb").items():
            if isinstance(value, Video):
                frames = value.frames.detach().cpu().numpy() if hasattr(value.frames, "detach") else np.asarray(value.frames)
                data[key] = wandb.Video(frames[0] if frames.ndim == 5 else frames, fps=int(value.fps), format="mp4")
            elif isinstance(value, (bool, int, float, np.integer, np.floating)):
                data[key] = value.item() if isinstance(value, np.generic) else value
            elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
                data[key] = value.item()
        if data:
            data[STEP_METRIC] = int(step)
            self.run.log(data)

    def close(self) -> None:
        pass  # the run is finished by finish_wandb, after the final artifacts are logged


class AppendingCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV output, but continuing an existing file instead of truncating it (for resumed runs)."""

    def __init__(self, filename: str) -> None:
        path = Path(filename)
        if not path.exists() or path.stat().st_size == 0:
            super().__init__(filename)
            return
        # "r+" keeps the rows; SB3's rewrite-on-new-key logic (seek(0), rewrite) still works in this mode.
        self.file = open(filename, "r+")  # closed by close(), like SB3's own CSV output
        header = self.file.readline().rstrip("\n")
        self.keys = header.split(",") if header else []
        self.separator = ","
        self.quotechar = '"'
        self.file.seek(0, os.SEEK_END)


def truncate_csv_after(path: Path, step: int, step_column: str) -> None:
    """Drop the rows logged after `step` (they will be logged again by the resumed run); atomic."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return
    header = lines[0].rstrip("\n").split(",")
    if step_column not in header:
        return
    column = header.index(step_column)
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.endswith("\n"):
            break  # a row cut short by a crash
        cells = line.rstrip("\n").split(",")
        try:
            row_step = float(cells[column])
        except (IndexError, ValueError):
            continue
        if row_step <= step:
            kept.append(line)
    atomic_write_text(path, "".join(kept))


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so readers never see a half-written file."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def make_logger(run_dir: Path, wandb_run: Any | None, *, stdout: bool, resume: bool) -> Logger:
    """SB3 logger writing progress.csv, TensorBoard events (run_dir/tb, when tensorboard is installed), optionally
    stdout, and W&B (when a run is given)."""
    csv_path = run_dir / "progress.csv"
    csv_format = AppendingCSVOutputFormat(str(csv_path)) if resume else CSVOutputFormat(str(csv_path))
    formats: list[KVWriter] = [csv_format]
    if tensorboard_available():
        formats.append(TensorBoardOutputFormat(str(run_dir / "tb")))
    if stdout:
        formats.append(HumanOutputFormat(sys.stdout))
    if wandb_run is not None:
        formats.append(WandbOutputFormat(wandb_run))
    return Logger(folder=str(run_dir), output_formats=formats)


def tensorboard_available() -> bool:
    """Whether SB3 could import TensorBoard's SummaryWriter (it tries once, when its logger module loads)."""
    return sb3_logger.SummaryWriter is not None


# ----------------------------------------------------------------------------- W&B run


def has_wandb_credentials() -> bool:
    """An API key in WANDB_API_KEY or in the netrc entry for the configured W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(str(netrc_path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise UsageError(f"unknown W&B mode {mode!r}; choose one of {', '.join(WANDB_MODES)}")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


def init_wandb(
    *,
    mode: str,
    run_dir: Path,
    project: str,
    entity: str | None,
    group: str | None,
    name: str,
    tags: Sequence[str],
    config: Mapping[str, Any],
    run_id: str | None = None,
) -> Any | None:
    """Start (or resume, when `run_id` is given) the W&B run; None when disabled or wandb is not installed.

    Never raises for network trouble.
    """
    resolved = resolve_wandb_mode(mode)
    if resolved == "disabled":
        return None
    try:
        import wandb
    except ModuleNotFoundError as error:
        if error.name != "wandb":
            raise  # wandb is there but broken: say so, rather than pretend it is missing
        print(f"warning: wandb is not installed, so W&B logging is off; {TRACK_EXTRA} to turn it on", file=sys.stderr)
        return None

    kwargs: dict[str, Any] = {
        "project": project,
        "entity": entity,
        "group": group,
        "name": name,
        "tags": list(tags),
        "config": dict(config),
        "dir": str(run_dir),
        "id": run_id,
        "resume": "allow" if run_id else None,
    }
    if resolved == "online":
        started = time.monotonic()
        before = _attempt_folders(run_dir)
        try:
            return wandb.init(mode="online", settings=_settings(wandb, timeout=ONLINE_INIT_TIMEOUT_S), **kwargs)
        except Exception as error:  # wandb raises several types (CommError, UsageError, timeouts): all mean "no server"
            _remove_failed_attempt(run_dir, before)
            print(
                f"warning: W&B online start failed after {time.monotonic() - started:.1f} s ({failure_reason(error)}); "
                "logging offline instead, upload later with `wandb sync`",
                file=sys.stderr,
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resume in offline mode is only a local concern; wandb warns about it
        return wandb.init(mode="offline", settings=_settings(wandb), **kwargs)


def failure_reason(error: BaseException, limit: int = 160) -> str:
    """One line saying why: the error's type and the first line of its message, cut at a word."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = f"{type(error).__name__}: {lines[0]}" if lines else f"{type(error).__name__}, without a message"
    return reason if len(reason) <= limit else reason[:limit].rsplit(" ", 1)[0] + " ..."


def _attempt_folders(run_dir: Path) -> set[Path]:
    return set((Path(run_dir) / "wandb").glob("run-*"))


def _remove_failed_attempt(run_dir: Path, before: set[Path]) -> None:
    """The `wandb/run-*` folder a failed online start left: it holds no data, and `wandb sync` would trip on it."""
    import shutil

    for folder in _attempt_folders(run_dir) - before:
        shutil.rmtree(folder, ignore_errors=True)


def _settings(wandb: Any, *, timeout: float | None = None) -> Any:
    # console="off": our own progress bar and SB3's stdout table stay untouched; everything reaches W&B via the logger.
    options: dict[str, Any] = {"console": "off", "silent": True, "x_disable_stats": True}
    if timeout is not None:
        options["init_timeout"] = timeout
    return wandb.Settings(**options)


def describe_wandb_run(run: Any) -> str:
    if run is None:
        return "W&B: disabled"
    if run.settings.mode == "offline" or getattr(run, "offline", False):
        return f"W&B: offline run {run.id} in {run.dir.rsplit('/files', 1)[0]}; upload later with `wandb sync`"
    return f"W&B: {run.url}"


def log_model_artifact(run: Any, model_path: Path, *, name: str, metadata: Mapping[str, Any]) -> None:
    import wandb

    artifact = wandb.Artifact(name=name, type="model", metadata=dict(metadata))
    artifact.add_file(str(model_path))
    vecnormalize = model_path.with_name("vecnormalize.pkl")
    if vecnormalize.exists():
        artifact.add_file(str(vecnormalize))
    run.log_artifact(artifact)


def log_video(run: Any, video_path: Path, *, key: str, step: int) -> None:
    import wandb

    run.log({key: wandb.Video(str(video_path), format="mp4"), STEP_METRIC: int(step)})


def finish_wandb(run: Any | None, *, exit_code: int = 0) -> None:
    """Finish the run and stop wandb's service, which is what flushes the run files to disk.

    Without the teardown, run.finish() can return before run-<id>.wandb holds the history
    (observed with wandb 0.31), and a caller reading the run directory right after would miss it.
    """
    if run is not None:
        import wandb

        run.finish(exit_code=exit_code)
        wandb.teardown()
