"""One training run: request -> config, envs and model, run directory, checkpoints, callbacks.

    from rl_selfdistill.run import TrainRequest, run_training, resume_training

    run_dir = run_training(TrainRequest(algo="sd_ppo", env_id="CartPole-v1"), callbacks=[...])
    resume_training(run_dir)

Modules: `request` (TrainRequest, checks, resolved config), `build` (envs, torch threads, model),
`rundir` (the run directory's layout, run.json, config.yaml, provenance, command lines),
`checkpoints` (atomic write, list, load, RNG state), `callbacks` (SB3 callbacks of a run),
`training` (TrainingRun, run_training, resume_training).
"""

from rl_selfdistill.run.request import TrainRequest
from rl_selfdistill.run.training import TrainingRun, prepare_resume, prepare_run, resume_training, run_training

__all__ = ["TrainRequest", "TrainingRun", "prepare_resume", "prepare_run", "resume_training", "run_training"]
