"""Helpers shared by the test modules (tests import helpers from here, never from each other).

- the command that runs the installed `rl-selfdistill`, and a prelude that makes packages look uninstalled;
- tiny SB3 hyperparameters and a parameter-equality assertion for the algorithm tests;
- a reader of the files an offline W&B run writes (`run-<id>.wandb`), so tests can check what
  reached W&B without a server.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import torch as th


def cli_command() -> list[str]:
    """The installed console script when present (what users run), else the module entry point."""
    script = Path(sys.executable).with_name("rl-selfdistill")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rl_selfdistill.cli"]


def not_installed_prelude(packages: set[str]) -> str:
    """Python source to run first in a fresh interpreter (`python -c`): afterwards, importing any of `packages`
    raises ModuleNotFoundError, as when they are not installed. A real import failure, not a mock: a meta-path
    finder ahead of the others refuses the names before anything has imported them."""
    return (
        "import sys\n"
        "class _NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {sorted(packages)!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NotInstalled())\n"
    )


# ----------------------------------------------------------------------------- tiny algorithm settings

PPO_TINY = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "device": "cpu", "policy_kwargs": {"net_arch": [32, 32]}}
# A2C steps once per rollout of n_envs x n_steps samples (no epochs, no minibatches).
A2C_TINY = {"n_steps": 8, "device": "cpu", "policy_kwargs": {"net_arch": [32, 32]}}
DQN_TINY = {
    "learning_starts": 100,
    "train_freq": 4,
    "target_update_interval": 100,
    "buffer_size": 5_000,
    "device": "cpu",
    "policy_kwargs": {"net_arch": [32, 32]},
}


def assert_same_parameters(a: th.nn.Module, b: th.nn.Module) -> None:
    """Same parameter names, and every tensor exactly equal (bit for bit)."""
    for (name_a, pa), (name_b, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert name_a == name_b
        assert th.equal(pa, pb), name_a


def flat(module: th.nn.Module) -> th.Tensor:
    """All parameters of `module` as one detached vector (a copy: later training does not change it)."""
    return th.cat([p.detach().flatten().clone() for p in module.parameters()])


class StudentHistory:
    """Records a network's parameters before each step of the model's optimizer (the real optimizer, wrapped)."""

    def __init__(self, model: Any, network: th.nn.Module) -> None:
        self.states: list[th.Tensor] = []
        optimizer = model.policy.optimizer
        original_step = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            self.states.append(flat(network))
            return original_step(*args, **kwargs)

        optimizer.step = step


def interrupted_copy(run_dir: Path, target: Path, step: int) -> Path:
    """A copy of a finished run directory as a crash right after its checkpoint of `step` would have left it."""
    import shutil

    from rl_selfdistill.run.checkpoints import list_checkpoints

    shutil.copytree(run_dir, target)
    for checkpoint in list_checkpoints(target):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)
    state = json.loads((target / "run.json").read_text())
    state.update(status="running", finished_at=None)
    (target / "run.json").write_text(json.dumps(state))
    (target / "model.zip").unlink()
    return target


# ----------------------------------------------------------------------------- reading offline W&B runs back

_LOG_BLOCK = 32 * 1024
_LOG_HEADER = 7  # crc32 (4) + length (2) + type (1), LevelDB log format
_FILE_HEADER = 7  # ":W&B" + magic (2) + version (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path) -> list[bytes]:
    """Raw protobuf records of a `run-<id>.wandb` file (LevelDB log framing, as written by wandb)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    records: list[bytes] = []
    pending = b""
    offset = _FILE_HEADER
    while offset + _LOG_HEADER <= len(data):
        space = _LOG_BLOCK - offset % _LOG_BLOCK
        if space < _LOG_HEADER:  # block trailer padding
            offset += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + _LOG_HEADER])
        payload = data[offset + _LOG_HEADER : offset + _LOG_HEADER + length]
        offset += _LOG_HEADER + length
        if kind == _FULL:
            records.append(payload)
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            records.append(pending + payload)
            pending = b""
        else:
            break  # zero fill at the end of a file cut short
    return records


def _records(path: Path, kind: str) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    found = []
    for file in sorted(Path(path).rglob("run-*.wandb")):
        for raw in _wandb_records(file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == kind:
                found.append(getattr(record, kind))
    return found


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) if item.value_json else None for item in items}


def read_wandb_config(path: Path) -> dict[str, Any]:
    """The run config (merged updates) of every `run-*.wandb` file under `path`."""
    config: dict[str, Any] = {}
    for record in _records(path, "run"):  # wandb.init(config=...) travels in the run record
        config.update(_items(record.config.update))
    for record in _records(path, "config"):  # later run.config updates
        config.update(_items(record.update))
    return config


def read_wandb_run(path: Path) -> dict[str, Any]:
    """Identity of the run stored under `path`: id, project, group, tags (from its first run record)."""
    records = _records(path, "run")
    if not records:
        raise ValueError(f"no W&B run record under {path}")
    run = records[0]
    return {"id": run.run_id, "project": run.project, "group": run.run_group, "tags": list(run.tags)}


def read_wandb_artifacts(path: Path) -> list[dict[str, Any]]:
    """Artifacts logged by the run(s) under `path`: name, type and the files they hold."""
    return [
        {"name": artifact.name, "type": artifact.type, "files": [entry.path for entry in artifact.manifest.contents]}
        for artifact in _records(path, "artifact")
    ]


def read_wandb_history(path: Path) -> list[dict[str, Any]]:
    """History rows (dicts of logged values) of every `run-*.wandb` file under `path`, in file order.

    Reads what an offline (or online) run wrote to disk, without a server.
    """
    return [_items(record.item) for record in _records(path, "history")]
