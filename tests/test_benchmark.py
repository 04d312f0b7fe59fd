"""`rl-selfdistill benchmark`: grid bookkeeping (fast) and real tiny CartPole grids on a process pool and on Ray."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rl_selfdistill.benchmark.grid import EnvBudget, Manifest, RunSpec, RunState, merge_manifest, run_state
from rl_selfdistill.benchmark.runners import RunJob, threads_per_worker, train_command
from rl_selfdistill.cli import benchmark as bench_cli
from rl_selfdistill.cli import main
from rl_selfdistill.config import parse_params
from rl_selfdistill.errors import UsageError

# Tiny budgets: 8 envs x 32 steps per PPO rollout, so 768 steps are 3 rollouts.
TINY = ["--envs", "CartPole-v1", "--algos", "ppo", "sd_ppo", "--seeds", "2", "-n", "768"]
TINY += ["--eval-freq", "256", "--eval-episodes", "2", "--save-freq", "0", "--wandb-mode", "disabled", "--device", "cpu"]
TINY += ["-params", "teacher_update_interval:256"]


def manifest(**changes):
    fields = dict(
        benchmark_id="b1",
        suite=None,
        envs=[EnvBudget("CartPole-v1", 1000)],
        algos=["ppo"],
        seeds=[0, 1],
        sd_params={"distill_coef": 0.1},
        git_commit="c",
        created_at="t",
    )
    return Manifest(**{**fields, **changes})


def test_params_are_yaml_values():
    # The benchmark reads -params with the same parser as train.
    assert parse_params(["distill_coef:0.1", "teacher_mode:ema", "net:[64, 64]"]) == {
        "distill_coef": 0.1,
        "teacher_mode": "ema",
        "net": [64, 64],
    }
    with pytest.raises(UsageError, match="key:value"):
        parse_params(["distill_coef=0.1"])


def test_manifest_keeps_its_id_and_refuses_a_changed_experiment():
    merged = merge_manifest(manifest(), manifest(benchmark_id="b2", algos=["sd_ppo"], seeds=[2]))
    assert (merged.benchmark_id, merged.algos, merged.seeds) == ("b1", ["ppo", "sd_ppo"], [0, 1, 2])
    with pytest.raises(UsageError, match="-params"):
        merge_manifest(manifest(), manifest(sd_params={"distill_coef": 0.5}))
    with pytest.raises(UsageError, match="-n 2000"):
        merge_manifest(manifest(), manifest(envs=[EnvBudget("CartPole-v1", 2000)]))
    with pytest.raises(UsageError, match="--env-kwargs"):
        merge_manifest(manifest(), manifest(env_kwargs={"schedule_seed": 1}))


def test_grid_is_algo_env_seed_product():
    specs = manifest(algos=["ppo", "sd_ppo"], seeds=[0, 1, 2]).specs()
    assert len(specs) == 6
    assert specs[0].run_dir(Path("OUT")) == Path("OUT/runs/ppo/CartPole-v1/seed0")


def test_run_state_reads_run_json(tmp_path):
    run_dir = tmp_path / "seed0"
    assert run_state(run_dir) is RunState.MISSING
    run_dir.mkdir()
    assert run_state(run_dir) is RunState.INTERRUPTED
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))
    assert run_state(run_dir) is RunState.INTERRUPTED
    (run_dir / "run.json").write_text(json.dumps({"status": "finished"}))
    assert run_state(run_dir) is RunState.FINISHED


def test_sd_params_reach_only_sd_runs_and_wandb_tags_name_the_cell(tmp_path):
    args = main_parser_args(TINY + ["-o", str(tmp_path / "out")])
    grid_manifest = bench_cli.requested_manifest(args)
    jobs = bench_cli.build_jobs(args, grid_manifest, bench_cli.requested_specs(args, grid_manifest))
    by_algo = {job.spec.algo: job for job in jobs if job.spec.seed == 0}
    assert by_algo["ppo"].hyperparams == {}
    assert by_algo["sd_ppo"].hyperparams == {"teacher_update_interval": 256}
    assert {job.wandb_group for job in jobs} == {grid_manifest.benchmark_id}
    assert by_algo["sd_ppo"].tags[:4] == (grid_manifest.benchmark_id, "sd_ppo", "CartPole-v1", "seed0")
    assert by_algo["sd_ppo"].tags[4].startswith("commit-")
    command = train_command(by_algo["sd_ppo"])
    assert command.startswith("rl-selfdistill train --algo sd_ppo --env CartPole-v1 -n 768 --seed 0 --run-dir ")
    assert "-params teacher_update_interval:256" in command


def test_env_kwargs_reach_every_run_and_a_changed_one_is_refused(tmp_path, capsys):
    """--env-kwargs applies to the base and the SD algo alike (another level sequence of a continual task), is
    recorded in benchmark.json, each run's config.yaml and command.txt, and a rerun with others is refused."""
    out = tmp_path / "out"
    argv = ["benchmark", "--envs", "Continual-CartPole-v0", "--algos", "ppo", "sd_ppo", "--seeds", "1", "-n", "512"]
    argv += ["--eval-freq", "256", "--eval-episodes", "1", "--save-freq", "0", "--wandb-mode", "disabled"]
    argv += ["--device", "cpu", "-params", "teacher_update_interval:256", "--env-kwargs", "schedule_seed:7", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "benchmark.json").read_text())["env_kwargs"] == {"schedule_seed": 7}
    for algo in ("ppo", "sd_ppo"):
        run_dir = out / "runs" / algo / "Continual-CartPole-v0" / "seed0"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["hyperparams"]["env_kwargs"]["schedule_seed"] == 7
        assert "--env-kwargs schedule_seed:7" in (run_dir / "command.txt").read_text()
    capsys.readouterr()
    assert main([*argv[:-3], "schedule_seed:8", "-o", str(out)]) == 2
    assert "--env-kwargs {'schedule_seed': 8} differ from this benchmark's {'schedule_seed': 7}" in capsys.readouterr().err


def test_save_replay_buffer_reaches_the_off_policy_runs_checkpoints(tmp_path):
    # A grid that spans sessions resumes its off-policy runs exactly only with the buffer in each checkpoint.
    from rl_selfdistill.run.checkpoints import REPLAY_BUFFER, list_checkpoints

    out = tmp_path / "out"
    argv = ["benchmark", "--envs", "CartPole-v1", "--algos", "sd_dqn", "--seeds", "1", "-n", "512", "--save-freq", "256"]
    argv += ["--eval-freq", "0", "--wandb-mode", "disabled", "--device", "cpu", "--vec-env", "dummy", "-o", str(out)]
    assert main([*argv, "--save-replay-buffer"]) == 0
    run_dir = out / "runs/sd_dqn/CartPole-v1/seed0"
    checkpoints = list_checkpoints(run_dir)
    assert checkpoints and all((checkpoint / REPLAY_BUFFER).exists() for checkpoint in checkpoints)
    assert "--save-replay-buffer" in (run_dir / "command.txt").read_text()
    assert "--save-replay-buffer" in json.loads((out / "benchmark.json").read_text())["invocations"][0]["command"]

    args = main_parser_args(TINY + ["-o", str(tmp_path / "plain")])  # without the flag: train's default, no flag written
    grid_manifest = bench_cli.requested_manifest(args)
    job = bench_cli.build_jobs(args, grid_manifest, bench_cli.requested_specs(args, grid_manifest))[0]
    assert "--save-replay-buffer" not in train_command(job)


def test_threads_per_worker_never_oversubscribes():
    assert threads_per_worker(1, cpu_count=8) == 8
    assert threads_per_worker(3, cpu_count=8) == 2
    assert threads_per_worker(16, cpu_count=8) == 1


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["benchmark", "--envs", "CartPole-v1", "--seeds", "0", "-n", "100", "-o", str(tmp_path / "o")]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def main_parser_args(argv):
    from rl_selfdistill.cli import build_parser

    return build_parser().parse_args(["benchmark", *argv])


def run_dirs(out):
    return sorted(str(path.relative_to(out)) for path in out.glob("runs/*/*/seed*"))


def test_local_and_ray_backends_give_the_same_runs_and_report(tmp_path):
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    assert main(["benchmark", *TINY, "--backend", "local", "--workers", "2", "-o", str(local)]) == 0
    assert main(["benchmark", *TINY, "--backend", "ray", "--workers", "2", "-o", str(ray_out)]) == 0
    expected = [f"runs/{algo}/CartPole-v1/seed{seed}" for algo in ("ppo", "sd_ppo") for seed in (0, 1)]
    assert run_dirs(local) == run_dirs(ray_out) == expected
    for name in expected:
        for out in (local, ray_out):
            info = json.loads((out / name / "run.json").read_text())
            assert (info["status"], info["num_timesteps_done"]) == ("finished", 768)
        # Same seed, one torch thread each: the two backends train bit-identical runs.
        pd.testing.assert_frame_equal(pd.read_csv(local / name / "eval.csv"), pd.read_csv(ray_out / name / "eval.csv"))
    summaries = []
    for out in (local, ray_out):
        assert main(["report", str(out), "--reps", "200"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        summaries.append([(row["env_id"], row["algo"], row.get("scores")) for row in summary["per_env"]])
        markdown = (out / "report.md").read_text()
        assert markdown.count("| CartPole-v1 | ppo | 2 / 2 |") == markdown.count("| CartPole-v1 | sd_ppo | 2 / 2 |") == 1
        assert markdown.count("| finished | 768 / 768 |") == 4
        assert (out / "figures" / "learning_curves.png").stat().st_size > 10_000
    assert summaries[0] == summaries[1]


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # 3 real runs in fresh processes plus a re-run: minutes on a busy 2-core machine
def test_rerun_after_a_kill_finishes_only_the_missing_runs(tmp_path):
    """Kill a 1-worker benchmark while its second run is mid-training, then re-run the same command."""
    from rl_selfdistill.run.checkpoints import list_checkpoints

    out = tmp_path / "out"
    argv = ["benchmark", "--envs", "CartPole-v1", "--algos", "ppo", "--seeds", "3", "-n", "1536", "--save-freq", "256"]
    argv += ["--eval-freq", "512", "--eval-episodes", "2", "--wandb-mode", "disabled", "--device", "cpu", "-o", str(out)]
    first, second = out / "runs/ppo/CartPole-v1/seed0", out / "runs/ppo/CartPole-v1/seed1"
    code = "import sys; from rl_selfdistill.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *argv], start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: run_state(first) is RunState.FINISHED and list_checkpoints(second), timeout=240)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole session: the benchmark and its pool worker
        process.wait()
    assert run_state(second) is RunState.INTERRUPTED
    finished_model = (first / "model.zip").stat().st_mtime_ns

    assert main(argv) == 0
    assert all(run_state(out / f"runs/ppo/CartPole-v1/seed{seed}") is RunState.FINISHED for seed in range(3))
    assert (first / "model.zip").stat().st_mtime_ns == finished_model  # untouched, not retrained
    assert "resumed at step" in (second / "command.txt").read_text()
    invocations = json.loads((out / "benchmark.json").read_text())["invocations"]
    assert [inv["finished_at"] is None for inv in invocations] == [True, False]  # the killed one stays marked
    assert len({json.loads((out / "benchmark.json").read_text())["benchmark_id"]}) == 1


@pytest.mark.slow  # a real grid in its own process group, stopped with Ctrl-C's signal
def test_ctrl_c_stops_the_grid_after_checkpointing_and_starts_no_other_cell(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the running cell checkpoints and stops,
    and no further cell starts (the pool used to have the next one queued already)."""
    from rl_selfdistill.run.checkpoints import list_checkpoints

    out = tmp_path / "out"
    argv = ["benchmark", "--envs", "CartPole-v1", "--algos", "ppo", "--seeds", "3", "-n", "200000", "--save-freq", "256"]
    argv += ["--eval-freq", "0", "--wandb-mode", "disabled", "--device", "cpu", "--vec-env", "dummy", "-o", str(out)]
    first = out / "runs/ppo/CartPole-v1/seed0"
    code = "import sys; from rl_selfdistill.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, *argv], start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(list_checkpoints(first)) >= 2, timeout=240)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert run_state(first) is RunState.INTERRUPTED
    assert json.loads((first / "run.json").read_text())["num_timesteps_done"] < 200_000
    assert sorted(path.name for path in (out / "runs/ppo/CartPole-v1").iterdir()) == ["seed0"]  # nothing else started


def test_job_is_picklable_for_pool_and_ray(tmp_path):
    import pickle

    job = RunJob(RunSpec("ppo", "CartPole-v1", 0, 10), tmp_path / "r", {}, {"device": "cpu"}, "g", ("t",), 1)
    assert pickle.loads(pickle.dumps(job)) == job


def test_a_failing_run_is_recorded_and_reported(tmp_path, capsys, monkeypatch):
    # Bad input is refused before any cell trains; this run fails because its env cannot be built.
    monkeypatch.syspath_prepend(str(Path(__file__).with_name("plugins")))
    out = tmp_path / "out"
    argv = ["benchmark", "--envs", "FailingCartPole-v0", "--algos", "sd_ppo", "--seeds", "1", "-n", "256", "--device", "cpu"]
    argv += ["--n-envs", "1", "--vec-env", "dummy", "--gym-packages", "failing_env", "--wandb-mode", "disabled"]
    assert main([*argv, "-o", str(out)]) == 1  # the grid ran to its end; one run failed
    assert "FAILED" in capsys.readouterr().out
    failures = json.loads((out / "benchmark.json").read_text())["invocations"][0]["failures"]
    assert [failure["run"] for failure in failures] == ["sd_ppo/FailingCartPole-v0/seed0"]
    assert main(["report", str(out), "--reps", "100", "--gym-packages", "failing_env"]) == 0
    assert "`sd_ppo/FailingCartPole-v0/seed0`: failed: RuntimeError" in (out / "report.md").read_text()


def test_unknown_env_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["benchmark", "--envs", "CartPol-v1", "-n", "100", "-o", str(tmp_path / "o")]) == 2
    assert "CartPol-v1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_run_killed_before_its_config_is_set_aside_not_deleted(tmp_path):
    from rl_selfdistill.benchmark.aggregate import discover_specs
    from rl_selfdistill.benchmark.runners import _resumable, set_aside

    run_dir = tmp_path / "runs/ppo/CartPole-v1/seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "command.txt").write_text("partial\n")
    assert not _resumable(run_dir)
    moved = set_aside(run_dir)
    assert not run_dir.exists() and (moved / "command.txt").read_text() == "partial\n"
    assert moved.name.startswith("seed0.incomplete-")
    assert discover_specs(tmp_path) == []  # the report does not mistake it for a run


def test_a_resumed_cell_takes_the_grids_thread_share_not_the_one_it_started_with(tmp_path):
    """A cell started alone with two threads, resumed with `--cpus-per-run 1` beside other jobs, must use one:
    with its old two threads beside another job it ran 10-60x slower (oversubscription)."""
    from tests.helpers import interrupted_copy

    out = tmp_path / "out"
    argv = ["benchmark", "--envs", "CartPole-v1", "--algos", "ppo", "--seeds", "1", "-n", "512", "--save-freq", "256"]
    argv += ["--eval-freq", "0", "--wandb-mode", "disabled", "--device", "cpu", "--vec-env", "dummy", "-o", str(out)]
    cell = out / "runs/ppo/CartPole-v1/seed0"
    assert main([*argv, "--cpus-per-run", "2"]) == 0
    interrupted_copy(cell.rename(tmp_path / "finished"), cell, step=256)
    assert yaml.safe_load((cell / "config.yaml").read_text())["options"]["num_threads"] == 2

    assert main([*argv, "--cpus-per-run", "1"]) == 0
    assert run_state(cell) is RunState.FINISHED
    assert yaml.safe_load((cell / "config.yaml").read_text())["options"]["num_threads"] == 1
    resumes = json.loads((cell / "run.json").read_text())["resumes"]
    assert [resume["changes"] for resume in resumes] == [{"num_threads": 1}]

    shutil.rmtree(cell)  # the same crash, resumed with the threads it started with: nothing to record
    interrupted_copy(tmp_path / "finished", cell, step=256)
    assert main([*argv, "--cpus-per-run", "2"]) == 0
    assert [resume["changes"] for resume in json.loads((cell / "run.json").read_text())["resumes"]] == [{}]


def folder_snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `folder`, with each file's size and modification time (a folder's own time changes when the
    writability probe, `paths.check_writable_folder`, makes and removes its file in it: not a write that stays)."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None for path in folder.rglob("*")
    }


def test_dry_run_says_what_each_run_would_do_and_writes_nothing(tmp_path, capsys):
    """One run finished, one crashed after its 256-step checkpoint (run.json says 512: the steps after the checkpoint
    are trained again), one new seed: the dry run lists skip / resume from 256 / start, the same command then does
    exactly that, and neither an existing nor a new folder is touched by the dry run."""
    from tests.helpers import interrupted_copy

    out = tmp_path / "out"
    argv = ["benchmark", "--envs", "CartPole-v1", "--algos", "ppo", "-n", "512", "--save-freq", "256"]
    argv += ["--eval-freq", "0", "--wandb-mode", "disabled", "--device", "cpu", "--vec-env", "dummy", "-o", str(out)]
    assert main([*argv, "--seeds", "2"]) == 0
    seed0, seed1 = out / "runs/ppo/CartPole-v1/seed0", out / "runs/ppo/CartPole-v1/seed1"
    interrupted_copy(seed0.rename(tmp_path / "finished"), seed0, step=256)
    assert json.loads((seed0 / "run.json").read_text())["num_timesteps_done"] == 512
    before = folder_snapshot(out)
    capsys.readouterr()

    assert main([*argv, "--seeds", "3", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "(dry run, nothing trained or written): 3 runs: 1 skip, 1 resume, 1 start" in printed
    assert "  skip     ppo/CartPole-v1/seed1\n" in printed
    assert "  resume   ppo/CartPole-v1/seed0 from step 256 of 512\n" in printed
    assert "  start    ppo/CartPole-v1/seed2\n" in printed
    assert "env steps left to train: 768 of 1536" in printed
    assert folder_snapshot(out) == before

    finished_seed1 = (seed1 / "run.json").read_text()
    assert main([*argv, "--seeds", "3"]) == 0  # the same command for real does what the dry run said
    assert [resume["step"] for resume in json.loads((seed0 / "run.json").read_text())["resumes"]] == [256]
    assert (seed1 / "run.json").read_text() == finished_seed1
    assert run_state(out / "runs/ppo/CartPole-v1/seed2") is RunState.FINISHED

    new = tmp_path / "new"
    assert main([*argv[:-1], str(new), "--seeds", "1", "--dry-run"]) == 0 and not new.exists()
    assert "1 runs: 1 start" in capsys.readouterr().out
