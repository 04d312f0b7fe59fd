"""Shared fixtures: an isolated home for W&B, and a runner for the real `rl-selfdistill` command."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import cli_command

_WANDB_VARIABLES = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "NETRC")


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, W&B directories and credentials pointed at a temp dir: nothing leaks in or out of the test."""
    home = tmp_path / "home"
    home.mkdir()
    for name in _WANDB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    return home


@pytest.fixture
def run_cli(isolated_home: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `rl-selfdistill ARGS` in a subprocess (cwd = tmp_path) with the isolated environment."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.run(
            [*cli_command(), *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=timeout
        )

    return run


def pytest_configure(config: pytest.Config) -> None:
    # The tests' networks are tiny: one torch thread is faster than two fighting env workers on a 2-core runner.
    import torch

    torch.set_num_threads(1)
