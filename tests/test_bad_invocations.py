"""Bad input to every subcommand, through the real `rl-selfdistill` in subprocesses: exit status 2, exactly one
line on stderr that names the problem, no traceback, and nothing written (the folder's checksum is unchanged).

Each row is checked before any expensive work: the rows that would otherwise fail late (an unwritable log folder
after the envs are built, a bad benchmark -params after the first cells trained, SB3's asserts once training
runs) finish in the seconds it takes to import torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

Runner = Callable[..., subprocess.CompletedProcess]

TRAIN = ["train", "--algo", "ppo", "--env", "CartPole-v1"]
BENCHMARK = ["benchmark", "--envs", "CartPole-v1", "-n", "1000", "--seeds", "1"]
EVALUATE = ["evaluate", "logs/ppo/CartPole-v1_1"]
THROUGHPUT = ["throughput", "--env", "CartPole-v1", "--pairs", "1", "-n", "64"]
TUNE = ["tune", "--algo", "sd_ppo", "--envs", "CartPole-v1", "-n", "1000"]

# (arguments, text the one stderr line must contain)
BAD_INVOCATIONS: list[tuple[list[str], str]] = [
    # train: names, values, files
    (["train", "--algo", "ddpg", "--env", "CartPole-v1"], "unknown algorithm 'ddpg'"),
    (["train", "--algo", "ppo", "--env", "CartPol-v1"], "unknown env id 'CartPol-v1'"),
    ([*TRAIN, "-params", "n_step:64"], "unknown key 'n_step'"),
    ([*TRAIN, "-params", "n_steps:abc"], "expected an integer >= 1"),
    ([*TRAIN, "-params", "n_steps=64"], "-params expects key:value"),
    (["train", "--algo", "sd_ppo", "--env", "CartPole-v1", "-params", "distill_coef:-1"], "'distill_coef': got -1"),
    ([*TRAIN, "-params", "distill_coef:0.5"], "unknown key 'distill_coef'"),
    ([*TRAIN, "-params", "policy_kwargs:{activation_fn: swish}"], "swish"),
    (
        [*TRAIN, "-params", "n_steps:!!python/name:os.system"],
        "YAML tag '!!python/name:os.system' at line 1, which is not allowed",
    ),
    ([*TRAIN, "-n", "-100"], "-n/--n-timesteps must be an integer >= 1"),
    ([*TRAIN, "--n-envs", "0"], "--n-envs must be an integer >= 1"),
    ([*TRAIN, "--n-envs", "two"], "invalid int value: 'two'"),
    ([*TRAIN, "--seed", "-1"], "--seed must be an integer >= 0"),
    ([*TRAIN, "--vec-env", "gpu"], "unknown --vec-env 'gpu'"),
    ([*TRAIN, "--wandb-mode", "cloud"], "unknown --wandb-mode 'cloud'"),
    (["train", "--algo", "dqn", "--env", "Pendulum-v1", "-n", "100"], "needs a discrete action space"),
    # what a class cannot apply, refused before any env is built (the class refuses it again when built)
    (
        ["train", "--algo", "sd_trpo", "--env", "CartPole-v1", "-params", "distill_coef_mode:relative"],
        "SelfDistillTRPO: TRPO's surrogate is about 0",
    ),
    (
        ["train", "--algo", "sd_ppo_lstm", "--env", "CartPoleNoVel-v1", "-params", "distill_separate_batch:true"],
        "SelfDistillRecurrentPPO: a separate batch would need LSTM sequences",
    ),
    (["train", "--algo", "ppo"], "--algo and --env are required"),
    ([*TRAIN, "--conf-file", "broken.yaml"], "is not valid YAML at line"),
    ([*TRAIN, "--conf-file", "absent.yaml"], "cannot read preset file"),
    ([*TRAIN, "--conf-file", "latin1.yaml"], "'latin1.yaml' is not UTF-8 text"),
    ([*TRAIN, "--conf-file", "tag.yaml"], "YAML tag '!!python/object/apply:os.system' at line 2, which is not allowed"),
    ([*TRAIN, "--conf-file", "budgetless.yaml"], "no n_timesteps for 'CartPole-v1' in 'budgetless.yaml'; pass -n"),
    ([*TRAIN, "--run-dir", "logs/ppo/CartPole-v1_1"], "already exists"),
    ([*TRAIN, "-f", "afile/logs"], "-f/--log-folder 'afile/logs' cannot be created: 'afile' is a file"),
    ([*TRAIN, "--run-dir", "afile/run"], "--run-dir 'afile/run' cannot be created"),
    (["train", "--resume", "logs/ppo/CartPole-v1_9"], "no such run directory"),
    (["train", "--resume", "logs/ppo/CartPole-v1_1"], "already finished its budget"),
    (["train", "--resume", "corrupt"], "is not valid YAML"),
    (["train", "--resume", "notarun"], "cannot read run config"),
    (["train", "--resume", "logs/ppo/CartPole-v1_1", "--algo", "ppo"], "drop --algo"),
    ([*TRAIN, "--env-kwargs", "gravity=9"], "--env-kwargs expects KEY:VALUE"),
    ([*TRAIN, "--gym-packages", "no_such_module"], "cannot import 'no_such_module'"),
    ([*TRAIN, "--num-threads", "0"], "--num-threads must be an integer >= 1"),
    ([*TRAIN, "--n-eval-envs", "0"], "--n-eval-envs must be an integer >= 1"),
    ([*TRAIN, "--track", "--wandb-mode", "offline"], "not allowed with"),
    ([*TRAIN, "--verbose", "-1"], "--verbose must be an integer >= 0"),
    # train: what SB3 would assert on only once the envs exist or training runs
    ([*TRAIN, "-n", "100", "--n-envs", "1", "-params", "n_steps:1"], "n_steps x n_envs = 1 x 1"),
    ([*TRAIN, "-n", "100", "-params", "batch_size:1"], "batch_size must be at least 2 with normalize_advantage"),
    (
        ["train", "--algo", "dqn", "--env", "CartPole-v1", "--n-envs", "2", "-params", "train_freq:[1, episode]"],
        "needs n_envs 1",
    ),
    # evaluate
    (["evaluate", "nowhere"], "does not exist"),
    ([*EVALUATE, "--episodes", "0"], "--episodes must be >= 1"),
    ([*EVALUATE, "--episodes", "-1"], "--episodes must be >= 1, got -1"),
    ([*EVALUATE, "--video-length", "0"], "--video-length must be >= 1"),
    ([*EVALUATE, "--video-path", "afile/agent.mp4"], "--video-path's folder 'afile' cannot be created"),
    ([*EVALUATE, "--video", "--video-path", "agent.gif"], "must name an .mp4 file"),
    ([*EVALUATE, "--video-path", "videos.mp4"], "'videos.mp4' is a folder"),
    (["evaluate", "notarun"], "no config.yaml in or above 'notarun'"),
    # benchmark: every cell of the grid checked before the first one trains
    ([*BENCHMARK, "-params", "nosuch:1", "-o", "bench"], "sd_ppo on CartPole-v1: unknown key 'nosuch'"),
    ([*BENCHMARK, "--n-envs", "1", "-params", "n_steps:1", "-o", "bench"], "sd_ppo on CartPole-v1: n_steps x n_envs = 1 x 1"),
    ([*BENCHMARK, "--algos", "ppo", "-params", "n_steps:64", "-o", "bench"], "--algos names none; drop -params"),
    ([*BENCHMARK, "--algos", "ppo", "--vec-env", "gpu", "-o", "bench"], "ppo on CartPole-v1: unknown --vec-env 'gpu'"),
    ([*BENCHMARK, "-o", "afile/bench"], "-o 'afile/bench' cannot be created: 'afile' is a file"),
    (["benchmark", "--envs", "CartPol-v1", "-n", "1000", "-o", "bench"], "unknown env id 'CartPol-v1'"),
    ([*BENCHMARK, "--algos", "ddpg", "-o", "bench"], "unknown algorithm 'ddpg'"),
    (["benchmark", "--envs", "CartPole-v1", "-n", "1000", "--seeds", "0", "-o", "bench"], "--seeds must be at least 1"),
    ([*BENCHMARK, "--cpus-per-run", "0", "-o", "bench"], "--cpus-per-run must be positive"),
    ([*BENCHMARK, "--gpus-per-run", "-1", "-o", "bench"], "--gpus-per-run must be at least 0"),
    # report
    (["report", "nowhere"], "benchmark folder nowhere does not exist"),
    (["report", "empty"], "empty holds no benchmark runs"),
    (["report", "empty", "--reps", "5"], "--reps 5 is too few"),
    (["report", "empty", "-o", "afile/report"], "-o 'afile/report' cannot be created"),
    (["report", "empty", "empty"], "named twice"),
    # throughput
    ([*THROUGHPUT, "-params", "nosuch:1"], "'nosuch' is not a distillation option"),
    ([*THROUGHPUT, "--pairs", "0"], "--pairs must be at least 1"),
    ([*THROUGHPUT, "--n-epochs", "0"], "'n_epochs': got 0"),
    ([*THROUGHPUT, "--n-envs", "1", "--n-steps", "1", "--batch-size", "2"], "n_steps x n_envs = 1 x 1"),
    ([*THROUGHPUT, "--threads", "0"], "--threads must be positive"),
    ([*THROUGHPUT, "--json", "afile/result.json"], "--json's folder 'afile' cannot be created"),
    ([*THROUGHPUT, "--a", "ppo", "--b", "sd_dqn"], "different algorithm families"),
    (
        ["throughput", "--env", "Pendulum-v1", "--a", "dqn", "--b", "sd_dqn", "--pairs", "1"],
        "dqn needs a discrete action space",
    ),
    # tune
    ([*TUNE, "--space", "latin1.yaml", "-o", "study"], "search space 'latin1.yaml' is not UTF-8 text"),
    ([*TUNE, "--space", "broken.yaml", "-o", "study"], "search space 'broken.yaml' is not valid YAML"),
    ([*TUNE, "--space", "absent.yaml", "-o", "study"], "cannot read search space"),
    ([*TUNE], "-o STUDY_DIR is required"),
]

# Rows checked after tune has found Optuna (the `tune` extra).
NEED_OPTUNA: list[tuple[list[str], str]] = [
    ([*TUNE, "--n-trials", "0", "-o", "study"], "--n-trials must be at least 1"),
    ([*TUNE, "--sampler-seed", "-1", "-o", "study"], "--sampler-seed must be at least 0"),
    ([*TUNE, "-o", "afile/study"], "-o 'afile/study' cannot be created"),
    ([*TUNE, "--enqueue", "tag.yaml", "-o", "study"], "candidates file 'tag.yaml' uses the YAML tag"),
]


def _permission_rows(root: Path) -> list[tuple[list[str], str]]:
    """A folder this process may not write: read-only for an ordinary user, /sys (read-only even for root) on Linux."""
    rows = []
    if os.geteuid() != 0:
        (root / "readonly").mkdir()
        (root / "readonly").chmod(0o555)
        rows.append(([*TRAIN, "-f", "readonly/logs"], "-f/--log-folder 'readonly/logs' is not writable"))
    if Path("/sys").is_dir() and not _writable("/sys"):
        rows += [
            ([*TRAIN, "-f", "/sys/rl-selfdistill-logs"], "is not writable"),
            ([*EVALUATE, "--video-path", "/sys/agent.mp4"], "--video-path's folder '/sys' is not writable"),
            ([*BENCHMARK, "-o", "/sys/rl-selfdistill-bench"], "-o '/sys/rl-selfdistill-bench' is not writable"),
        ]
    return rows


def _writable(folder: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with its content's hash; the isolated HOME (caches such as matplotlib's
    font list, written by any program that imports it) is not output of the commands."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(root.rglob("*"))
        if path.relative_to(root).parts[0] != "home"
    }


def _fake_run(run_dir: Path, *, status: str) -> Path:
    run_dir.mkdir(parents=True)
    config = {
        "algo": "ppo",
        "env_id": "CartPole-v1",
        "seed": 0,
        "options": {"device": "cpu"},
        "hyperparams": {"policy": "MlpPolicy", "n_envs": 1, "n_timesteps": 1000},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "run.json").write_text(json.dumps({"status": status}))
    return run_dir


def _make_inputs(root: Path) -> None:
    _fake_run(root / "logs" / "ppo" / "CartPole-v1_1", status="finished")
    corrupt = _fake_run(root / "corrupt", status="running")
    (corrupt / "config.yaml").write_text("algo: ppo\nhyperparams: [\n")
    (root / "notarun").mkdir()
    (root / "empty").mkdir()
    (root / "videos.mp4").mkdir()
    (root / "afile").write_text("a file where a folder is expected\n")
    (root / "broken.yaml").write_text("CartPole-v1:\n  n_steps: [64\n")
    (root / "latin1.yaml").write_bytes("CartPole-v1:\n  n_steps: 64  # größer\n".encode("latin-1"))
    (root / "tag.yaml").write_text("- n_steps: 64\n  batch_size: !!python/object/apply:os.system ['echo pwned']\n")
    (root / "budgetless.yaml").write_text("CartPole-v1:\n  n_envs: 1\n  n_steps: 64\n")


def test_bad_invocations_exit_2_with_one_line_and_touch_nothing(run_cli: Runner, tmp_path: Path):
    _make_inputs(tmp_path)
    cases = BAD_INVOCATIONS + _permission_rows(tmp_path)
    if importlib.util.find_spec("optuna") is not None:
        cases += NEED_OPTUNA
    assert len(cases) >= 45
    before = _tree_digest(tmp_path)

    def check(case: tuple[list[str], str]) -> str | None:
        args, expected = case
        result = run_cli(*args, env={"WANDB_MODE": "disabled"})
        lines = result.stderr.strip().splitlines()
        if result.returncode != 2 or len(lines) != 1 or expected not in lines[0] or "Traceback" in result.stderr:
            return f"{args}: rc={result.returncode} stderr={result.stderr[-500:]!r}"
        return None

    # Independent read-only invocations: two at a time halves the wall clock on a 2-core machine.
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [failure for failure in pool.map(check, cases) if failure]
    assert not failures, "\n".join(failures)
    assert _tree_digest(tmp_path) == before
    assert not (tmp_path / "bench").exists() and not (tmp_path / "study").exists()
