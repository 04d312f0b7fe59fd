"""`rl-selfdistill tune`: real Optuna studies on CartPole with tiny budgets, real processes and real signals.

- a study with median pruning SIGKILLed mid-trial, then resumed with the same command: the killed trial is
  FAIL, its parameters are retried, and the study ends with the intended number of finished trials;
- two worker processes sharing one study: both ran trials, and together exactly the intended number;
- a pruned trial stops its run early and marks it (a pruner that always prunes makes this deterministic);
- bad search spaces, candidates and seeds: exit 2 with one line, before the study folder exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from rl_selfdistill.cli import main  # noqa: E402
from rl_selfdistill.errors import UsageError  # noqa: E402
from rl_selfdistill.tune.seeds import TUNING_SEED_START, check_reporting_seeds  # noqa: E402
from rl_selfdistill.tune.study import storage  # noqa: E402
from tests.helpers import cli_command  # noqa: E402

TINY = ["--envs", "CartPole-v1", "--seeds", "1", "-n", "512", "--eval-freq", "128", "--eval-episodes", "2"]
TINY += ["--wandb-mode", "disabled", "--n-startup-trials", "1", "--sampler-seed", "0"]
RUN = f"runs/sd_ppo/CartPole-v1/seed{TUNING_SEED_START}"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SMALL_SPACE = """\
distill_coef: {type: float, low: 0.5, high: 20.0, log: true}
teacher_update_interval: {type: int, low: 64, high: 256}
kl_direction: forward
"""


def tune_args(study_dir: Path, *extra: str) -> list[str]:
    return ["tune", "--algo", "sd_ppo", *TINY, *extra, "-o", str(study_dir)]


def load(study_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=study_dir.name, storage=storage(study_dir))


def run_status(study_dir: Path, number: int) -> str:
    return json.loads((study_dir / "trials" / f"trial_{number:04d}" / RUN / "run.json").read_text())["status"]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_killed_study_resumes_to_the_intended_number_of_finished_trials(tmp_path, isolated_home, capsys):
    study_dir = tmp_path / "study"
    space = tmp_path / "space.yaml"  # teachers refreshed within the tiny budget, so trials differ and can be pruned
    space.write_text(SMALL_SPACE)
    args = tune_args(study_dir, "--seeds", "2", "--n-trials", "2", "--pruner", "median", "--space", str(space))
    first, second = (f"runs/sd_ppo/CartPole-v1/seed{TUNING_SEED_START + k}" for k in (0, 1))
    trial_0, trial_1 = study_dir / "trials" / "trial_0000", study_dir / "trials" / "trial_0001"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*cli_command(), *args], env=environment, text=True, stderr=subprocess.PIPE, start_new_session=True
    )
    # The deterministic point: the first trial's second run directory exists, so its first run has finished and
    # the trial is RUNNING in the middle of its second run.
    wait_for(trial_0 / second / "run.json", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert load(study_dir).trials[0].state == optuna.trial.TrialState.RUNNING

    assert main(args) == 0  # the same command again
    assert "trial 0: its worker died" in capsys.readouterr().out

    trials = load(study_dir).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert [trial.state in FINISHED for trial in trials[1:]] == [True, True]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert json.loads((trial_0 / "trial.json").read_text())["status"] == "failed"
    assert json.loads((trial_0 / second / "run.json").read_text())["status"] == "running"  # kept as it was left
    # The killed trial's finished run has the retry's parameters and seed: it is moved over, not trained again.
    assert not (trial_0 / first).exists()
    assert json.loads((trial_1 / "trial.json").read_text())["runs"][0]["reused_from_trial"] == 0
    for trial in trials[1:]:
        record = json.loads((study_dir / "trials" / f"trial_{trial.number:04d}" / "trial.json").read_text())
        assert record["status"] == trial.state.name.lower()
        for run in record["runs"]:  # finished runs are "finished", the one the pruner stopped is "pruned"
            assert json.loads((study_dir / run["run_dir"] / "run.json").read_text())["status"] == run["status"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert [run["status"] for run in record["runs"]] == ["finished", "finished"]
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["finished"] == 2 and summary["counts"]["FAIL"] == 1
    assert summary["best_commands"][0].startswith(
        f"rl-selfdistill train --algo sd_ppo --env CartPole-v1 -n 512 --seed {TUNING_SEED_START}"
    )
    assert (study_dir / "objective.png").stat().st_size > 0
    assert "## Best trials" in (study_dir / "summary.md").read_text()

    assert main(args) == 0  # a finished study: nothing more runs
    assert len(load(study_dir).trials) == 3
    (study_dir / "summary.md").unlink()
    assert main([*args, "--summary"]) == 0 and (study_dir / "summary.md").exists()


def test_ctrl_c_mid_run_is_continued_from_its_checkpoint_by_the_retried_trial(tmp_path, isolated_home, capsys):
    """Ctrl-C (SIGINT to the process group) in a trial's second run: that run writes a checkpoint and stops. The same
    command retries the trial, takes the first run over and resumes the second from its step, reporting every
    evaluation of both runs to the pruner."""
    study_dir = tmp_path / "study"
    args = tune_args(study_dir, "--seeds", "2", "--n-trials", "1", "--pruner", "none")
    args[args.index("-n") + 1], args[args.index("--eval-freq") + 1] = "8192", "1024"
    first, second = (f"runs/sd_ppo/CartPole-v1/seed{TUNING_SEED_START + k}" for k in (0, 1))
    trial_0, trial_1 = study_dir / "trials" / "trial_0000", study_dir / "trials" / "trial_0001"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*cli_command(), *args], env=environment, text=True, stderr=subprocess.PIPE, start_new_session=True
    )
    evaluations = trial_0 / second / "eval.csv"  # one evaluation row: the second run is training, 7 more to go
    deadline = time.monotonic() + 240
    while not (evaluations.exists() and len(evaluations.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=120)
    stopped_at = json.loads((trial_0 / second / "run.json").read_text())["num_timesteps_done"]
    assert 1024 <= stopped_at < 8192

    assert main(args) == 0
    assert "trial 0: its worker died" in capsys.readouterr().out
    trials = load(study_dir).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    runs = json.loads((trial_1 / "trial.json").read_text())["runs"]
    assert [(run["reused_from_trial"], run["status"]) for run in runs[:1]] == [(0, "finished")]
    assert [(run["resumed_from_trial"], run["status"]) for run in runs[1:]] == [(0, "finished")]
    assert not (trial_0 / first).exists() and not (trial_0 / second).exists()
    resumed = json.loads((trial_1 / second / "run.json").read_text())
    assert resumed["status"] == "finished" and [entry["step"] for entry in resumed["resumes"]] == [stopped_at]
    # Both runs' evaluations, before and after the stop, each at its fixed step: run r's evaluation k is 8r + k.
    assert sorted(trials[1].intermediate_values) == list(range(2 * 8))
    assert trials[1].user_attrs["run_first_step"] == 8


def test_two_workers_share_one_study(tmp_path, isolated_home, capsys):
    study_dir = tmp_path / "shared"
    candidates = tmp_path / "candidates.yaml"  # the old defaults, evaluated first
    candidates.write_text("- {distill_coef: 0.5, teacher_mode: snapshot, teacher_update_interval: 20000}\n")
    args = tune_args(study_dir, "--n-trials", "4", "--pruner", "none", "--workers", "2", "--enqueue", str(candidates))
    assert main(args) == 0
    trials = load(study_dir).trials
    assert {key: trials[0].params[key] for key in ("distill_coef", "teacher_mode", "teacher_update_interval")} == {
        "distill_coef": 0.5,
        "teacher_mode": "snapshot",
        "teacher_update_interval": 20000,
    }
    assert len(trials) == 4 and all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    pids = {trial.user_attrs["worker"]["pid"] for trial in trials}
    assert len(pids) == 2 and os.getpid() not in pids  # two spawned processes, each ran trials
    for trial in trials:
        assert run_status(study_dir, trial.number) == "finished"
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["importances"] or "Optuna could not" in summary["importances_note"]
    assert main(["report", str(study_dir / "trials" / "trial_0000"), "--reps", "100"]) == 0  # a trial reads as a benchmark
    report = json.loads((study_dir / "trials" / "trial_0000" / "summary.json").read_text())
    assert "CartPole-v1" in json.dumps(report)

    capsys.readouterr()
    assert main(tune_args(study_dir, "--n-trials", "4", "--pruner", "median")) == 2  # not the same study
    assert "was created with another pruner" in one_error_line(capsys)


def test_a_pruned_trial_stops_its_run_and_marks_it(tmp_path, isolated_home):
    from rl_selfdistill.cli import build_parser
    from rl_selfdistill.cli.tune import tune_settings
    from rl_selfdistill.tune import study as studies
    from rl_selfdistill.tune.space import load_space

    study_dir = tmp_path / "pruned"
    settings = tune_settings(build_parser().parse_args(tune_args(study_dir, "--n-trials", "1")), load_space("sd_ppo"))
    studies.open_study(settings)
    # A real pruner that prunes whatever is reported (any return is below 1e9) makes the outcome deterministic.
    study = optuna.load_study(
        study_name="pruned", storage=storage(study_dir), pruner=optuna.pruners.ThresholdPruner(lower=1e9)
    )
    trial = studies.claim_trial(study, settings)
    assert studies.execute(study, trial, settings) == "PRUNED"
    state = json.loads((study_dir / "trials" / "trial_0000" / RUN / "run.json").read_text())
    assert state["status"] == "pruned" and 128 <= state["num_timesteps_done"] < 512
    assert not (study_dir / "trials" / "trial_0000" / RUN / "model.zip").exists()
    assert load(study_dir).trials[0].state == optuna.trial.TrialState.PRUNED
    assert studies.claim_trial(study, settings) is None  # the one intended trial has finished


def test_evaluations_past_the_budget_are_neither_scored_nor_reported(tmp_path, isolated_home):
    """CartPole's PPO preset collects 256-step rollouts, so a 640-step run trains to 768 and evaluates there too.
    That evaluation is not part of the score (the objective is the 640-step one) and not reported: each run has
    5 steps, the second run's starting at 5, as in a trial whose rollouts stop exactly at the budget."""
    import pandas as pd

    study_dir = tmp_path / "overshoot"
    args = tune_args(study_dir, "--seeds", "2", "--n-trials", "1", "--pruner", "none")
    args[args.index("-n") + 1] = "640"
    assert main(args) == 0
    (trial,) = load(study_dir).trials
    last_returns = []
    for k in range(2):
        run = study_dir / "trials" / "trial_0000" / f"runs/sd_ppo/CartPole-v1/seed{TUNING_SEED_START + k}"
        assert json.loads((run / "run.json").read_text())["num_timesteps_done"] == 768
        evals = pd.read_csv(run / "eval.csv")
        assert list(evals["timesteps"]) == [128, 256, 384, 512, 640, 768]
        last_returns.append(float(evals.loc[evals["timesteps"] == 640, "mean_reward"].iloc[0]))
    assert sorted(trial.intermediate_values) == list(range(10))
    assert trial.value == pytest.approx(sum(last_returns) / 2)  # the final 10% of 640 steps holds one evaluation


def test_the_median_pruner_judges_a_trial_on_its_current_run():
    """Three complete trials learn 0.1 -> 1.0 on each of two runs (steps 0-9 and 10-19). A trial that matches them
    on run 1 and stays at 0 on run 2 is pruned in run 2 once its warm-up evaluations are over. Optuna's median
    pruner alone compares the best value over all steps (1.0, from run 1) and never prunes it."""
    from rl_selfdistill.tune.study import RunWisePruner
    from rl_selfdistill.tune.trial import RUN_START_ATTR

    curve = [0.1 * (k + 1) for k in range(10)]
    verdicts = {}
    for name, pruner in (("run-wise", RunWisePruner(3, 2)), ("optuna", optuna.pruners.MedianPruner(3, 2))):
        study = optuna.create_study(direction="maximize", pruner=pruner)
        for _ in range(3):
            trial = study.ask()
            for step, value in enumerate(curve + curve):
                trial.report(value, step)
            study.tell(trial, 1.0)
        trial = study.ask()
        pruned_at = None
        for step, value in enumerate(curve + [0.0] * 10):
            if step == 10:
                trial.set_user_attr(RUN_START_ATTR, 10)
            trial.report(value, step)
            if trial.should_prune():
                pruned_at = step
                break
        verdicts[name] = pruned_at
    assert verdicts == {"run-wise": 12, "optuna": None}


def test_two_tune_processes_joining_one_study_draw_different_points(tmp_path, isolated_home):
    """Two `tune` commands on one study with the same --sampler-seed, both opened before either claims (as two
    terminals started together): each claim is seeded by the number of claims so far, so they do not draw the same
    point; and the same claims on a fresh study draw the same points again (reproducible)."""
    from rl_selfdistill.cli import build_parser
    from rl_selfdistill.cli.tune import tune_settings
    from rl_selfdistill.tune import study as studies
    from rl_selfdistill.tune.space import load_space

    def draws(study_dir: Path) -> list[dict[str, object]]:
        settings = tune_settings(build_parser().parse_args(tune_args(study_dir, "--n-trials", "4")), load_space("sd_ppo"))
        first, second = studies.open_study(settings), studies.open_study(settings)
        return [studies.sample_params(studies.claim_trial(study, settings), settings.space) for study in (first, second)]

    points = draws(tmp_path / "joined")
    assert points[0] != points[1]
    assert draws(tmp_path / "again") == points


def test_conditional_keys_are_sampled_only_in_their_branch():
    from rl_selfdistill.tune.space import load_space
    from rl_selfdistill.tune.study import sample_params

    space = load_space("sd_ppo")
    study = optuna.create_study(direction="maximize")
    for mode in ("ema", "snapshot", "ensemble"):
        study.enqueue_trial({"teacher_mode": mode})
        params = sample_params(study.ask(), space)
        assert ("teacher_tau" in params) == (mode == "ema")
        assert ("teacher_ensemble_size" in params) == (mode == "ensemble")


BAD_SPACES = {
    "unknown key": ("distil_coef: {type: float, low: 0.1, high: 1.0}\n", "unknown key 'distil_coef'"),
    "low above high": ("distill_coef: {type: float, low: 1.0, high: 0.1}\n", "needs low < high"),
    "bound the presets refuse": ("distill_coef: {type: float, low: -1.0, high: 1.0}\n", "'distill_coef'"),
    "choice the presets refuse": ("teacher_mode: {type: categorical, choices: [snapshot, teleport]}\n", "'teleport'"),
    "log from zero": ("distill_coef: {type: float, low: 0.0, high: 1.0, log: true}\n", "low must be > 0"),
    "unknown type": ("distill_coef: {type: normal, low: 0.1, high: 1.0}\n", "needs type"),
    "field of another type": ("kl_direction: {type: categorical, choices: [forward], low: 1}\n", "does not take 'low'"),
    "condition on a later key": (
        "teacher_tau: {type: float, low: 0.01, high: 0.1, when: {teacher_mode: [ema]}}\n",
        "listed above",
    ),
    "bad YAML": ("distill_coef: {type: float, low: [\n", "not valid YAML"),
    "fixed keys that conflict": ("teacher_mode: lagged\ndistill_coef: {type: float, low: 0.1, high: 1.0}\n", "first point"),
    "nothing sampled": ("distill_coef: 0.5\n", "samples nothing"),
}


@pytest.mark.parametrize("name", list(BAD_SPACES))
def test_bad_search_space_is_one_line_before_any_trial(name, tmp_path, capsys):
    text, expected = BAD_SPACES[name]
    space = tmp_path / "space.yaml"
    space.write_text(text)
    study_dir = tmp_path / "study"
    assert main(tune_args(study_dir, "--space", str(space))) == 2
    line = one_error_line(capsys)
    assert expected in line and str(space) in line
    assert not study_dir.exists()


def test_bad_options_are_refused_before_the_study_exists(tmp_path, capsys):
    candidates = tmp_path / "candidates.yaml"
    candidates.write_text("- {distill_coef: 5.0}\n")  # outside the built-in range 0.001..2
    assert main(tune_args(tmp_path / "a", "--enqueue", str(candidates))) == 2
    assert "lies outside" in one_error_line(capsys)
    assert main(tune_args(tmp_path / "b", "--first-seed", "0")) == 2
    assert "tuning range" in one_error_line(capsys)
    assert main(tune_args(tmp_path / "c", "--eval-freq", "400")) == 2  # one evaluation, at step 400 of 512
    assert "final 10%" in one_error_line(capsys)
    assert main(["tune", "--algo", "sd_dqn", "--envs", "Pendulum-v1", "-n", "1000", "-o", str(tmp_path / "d")]) == 2
    assert "discrete action space" in one_error_line(capsys)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_benchmark_refuses_reporting_seeds_in_the_tuning_range(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(
            ["benchmark", "--envs", "CartPole-v1", "--first-seed", str(TUNING_SEED_START - 1), "--seeds", "2", "-o", str(out)]
        )
        == 2
    )
    assert "--allow-tuning-seeds" in one_error_line(capsys)
    assert not out.exists()
    check_reporting_seeds([TUNING_SEED_START], allow_tuning_seeds=True)  # the explicit flag lets it through
    check_reporting_seeds(range(0, 5))


def test_reporting_seeds_keep_clear_of_the_env_seeds_of_tuning_runs():
    """A run seeds its envs seed + i and its evaluation envs seed + EVAL_SEED_OFFSET + i: a reporting seed a few
    thousand below the tuning range would evaluate on a tuning run's env seeds, so the margin refuses it too."""
    from rl_selfdistill.run.build import EVAL_SEED_OFFSET
    from rl_selfdistill.tune.seeds import SEED_MARGIN, TUNING_SEED_STOP

    assert SEED_MARGIN >= EVAL_SEED_OFFSET + 1024  # room for the evaluation offset and up to 1024 parallel envs
    for seed in (TUNING_SEED_START - EVAL_SEED_OFFSET, TUNING_SEED_STOP + EVAL_SEED_OFFSET):
        with pytest.raises(UsageError, match="within 20000 of it"):
            check_reporting_seeds([seed])
    check_reporting_seeds([TUNING_SEED_START - SEED_MARGIN - 1, TUNING_SEED_STOP + SEED_MARGIN])


def test_summary_scores_a_reference_benchmark_like_a_trial(tmp_path, isolated_home, capsys):
    """PPO on the tuning seed, made by `benchmark`, read back by the summary with the trial's own scoring."""
    from rl_selfdistill.benchmark.aggregate import final_window_score, read_evals

    study_dir, bench, short = tmp_path / "study", tmp_path / "ppo-ref", tmp_path / "ppo-short"
    bench_args = ["benchmark", "--envs", "CartPole-v1", "--algos", "ppo", "--seeds", "1", "--first-seed"]
    bench_args += [str(TUNING_SEED_START), "--allow-tuning-seeds", "--eval-freq", "128", "--eval-episodes", "2"]
    bench_args += ["--save-freq", "0", "--wandb-mode", "disabled", "--device", "cpu", "--vec-env", "dummy"]
    assert main([*bench_args, "-n", "512", "-o", str(bench)]) == 0
    assert main([*bench_args, "-n", "256", "-o", str(short)]) == 0  # another budget: not comparable
    args = tune_args(study_dir, "--n-trials", "1", "--pruner", "none")
    assert main([*args, "--reference", str(bench), str(short)]) == 0

    run = bench / "runs/ppo/CartPole-v1" / f"seed{TUNING_SEED_START}"
    expected = final_window_score(read_evals(run), 512, 0.1)
    references = json.loads((study_dir / "summary.json").read_text())["references"]
    assert [(entry["algo"], entry["runs"]) for entry in references] == [("ppo", 1), ("ppo", 0)]
    assert references[0]["objective"] == pytest.approx(expected) and references[0]["missing"] == []
    # The 256-step run does not count against a 512-step study: listed as missing, no objective.
    assert references[1]["objective"] is None and references[1]["missing"] == [f"CartPole-v1 seed{TUNING_SEED_START}"]
    markdown = (study_dir / "summary.md").read_text()
    assert "## References" in markdown and f"| ppo | {bench} | {expected:.4g} | 1 / 1 |" in markdown
    assert f"| ppo | {short} | incomplete | 0 / 1 |" in markdown
    assert "--reference" in json.loads((study_dir / "study.json").read_text())["command"]
    # Each run's score, linked to its folder relative to summary.md: the trial's own run and the reference's.
    trial_run = f"trials/trial_0000/runs/sd_ppo/CartPole-v1/seed{TUNING_SEED_START}"
    trial_score = final_window_score(read_evals(study_dir / trial_run), 512, 0.1)
    assert f"| trial 0 | {trial_score:.4g} | [{trial_score:.4g}]({trial_run}) |" in markdown
    assert f"| ppo | {expected:.4g} | [{expected:.4g}](../ppo-ref/runs/ppo/CartPole-v1/seed{TUNING_SEED_START}) |" in markdown
    assert "| ppo | incomplete |  |" in markdown  # the other-budget run has no score to show

    journal, study_file = (study_dir / "study.journal").read_bytes(), (study_dir / "study.json").read_bytes()
    (study_dir / "summary.md").unlink()
    assert main([*args, "--summary", "--reference", str(bench)]) == 0
    assert f"| ppo | {bench} | {expected:.4g} | 1 / 1 |" in (study_dir / "summary.md").read_text()
    assert (study_dir / "study.journal").read_bytes() == journal  # a summary reads the study, it never writes to it
    # Asked for without --n-trials (default 20): the summary still counts against the study's own 1, and study.json
    # (the command that continues the study) is left as the study wrote it.
    assert main([*tune_args(study_dir, "--pruner", "none"), "--summary"]) == 0
    assert "Trials: 1 of 1 finished" in (study_dir / "summary.md").read_text()
    assert (study_dir / "study.json").read_bytes() == study_file

    # The reference benchmark's own report says that it is not a held-out result.
    assert main(["report", str(bench), "--reps", "100"]) == 0
    assert f"**Not a held-out result**: seeds {TUNING_SEED_START} are tuning seeds" in (bench / "report.md").read_text()

    capsys.readouterr()
    assert main([*args, "--summary", "--reference", str(tmp_path / "nothing")]) == 2
    assert "holds no runs/ folder" in one_error_line(capsys)


def test_print_space_round_trips(tmp_path, capsys):
    assert main(["tune", "--algo", "sd_dqn", "--tune-base", "--print-space"]) == 0
    printed = capsys.readouterr().out
    space = tmp_path / "space.yaml"
    space.write_text(printed)
    assert main(["tune", "--algo", "sd_dqn", "--space", str(space), "--print-space"]) == 0
    assert capsys.readouterr().out == printed
    assert "train_freq" in printed and "distill_temperature" in printed


def test_several_envs_are_normalised_like_the_report():
    from rl_selfdistill.cli.tune import env_targets
    from rl_selfdistill.envs import load_suite, normalize_score

    [alone] = env_targets(None, ["CartPole-v1"], 512)
    assert alone.suite_env is None and alone.normalise(200.0) == 200.0  # one env: its raw return
    cartpole, acrobot = env_targets(None, ["CartPole-v1", "Acrobot-v1"], None)
    classic = load_suite("classic")
    assert acrobot.n_timesteps == classic.get("Acrobot-v1").n_timesteps  # the suite's budget, as benchmark's
    assert cartpole.normalise(200.0) == normalize_score(classic.get("CartPole-v1"), 200.0)
    assert acrobot.normalise(-100.0) == normalize_score(classic.get("Acrobot-v1"), -100.0)
    with pytest.raises(UsageError, match="in no suite"):
        env_targets(None, ["CartPole-v1", "MountainCar-v0"], 512)


def test_the_objective_description_names_each_envs_scored_window():
    from types import SimpleNamespace

    from rl_selfdistill.tune.summary import objective_description

    def settings(env_id: str) -> SimpleNamespace:
        env = SimpleNamespace(env_id=env_id, n_timesteps=1000, suite_env=None)
        return SimpleNamespace(plan=SimpleNamespace(envs=[env], seeds=[1_000_000], eval_episodes=5, eval_freq=100))

    assert "final 10% of its budget" in objective_description(settings("CartPole-v1"))
    # A continual run is scored over its whole level sequence (benchmark.aggregate.score_fraction).
    assert "its whole run" in objective_description(settings("Continual-CartPole-v0"))
