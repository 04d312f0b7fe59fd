#!/usr/bin/env bash
# GPU check: train SelfDistillPPO on Pong (EnvPool, 8 envs, RL Zoo Atari hyperparameters) for a fixed budget on
# CUDA and on the CPU, and print training fps for each. Takes a few minutes; without CUDA it says so and runs the
# CPU part only.
#
#   bash scripts/gpu_check.sh            # default budget: 8192 steps per device (8 rollouts of 8 x 128)
#   TIMESTEPS=16384 bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TIMESTEPS="${TIMESTEPS:-8192}" python - <<'EOF'
import os
import time

import torch

from rl_selfdistill import SelfDistillPPO
from rl_selfdistill.envs import configure_torch_threads, make_vec_env
from rl_selfdistill.benchmark.throughput import ATARI_PPO_KWARGS

timesteps = int(os.environ["TIMESTEPS"])
n_envs = 8


def fps(device: str) -> float:
    venv = make_vec_env("ALE/Pong-v5", n_envs=n_envs, backend="envpool", seed=0)
    try:
        # short teacher interval so the timed run includes teacher refreshes and the KL term
        model = SelfDistillPPO("CnnPolicy", venv, distill_coef=0.5, teacher_update_interval=2048, seed=0,
                               device=device, verbose=0, **ATARI_PPO_KWARGS)
        model.learn(n_envs * ATARI_PPO_KWARGS["n_steps"])  # warm-up rollout: CUDA context, cuDNN autotune
        if device == "cuda":
            torch.cuda.synchronize()
        start, before = time.perf_counter(), model.num_timesteps
        model.learn(timesteps, reset_num_timesteps=False)
        if device == "cuda":
            torch.cuda.synchronize()
        return (model.num_timesteps - before) / (time.perf_counter() - start)
    finally:
        venv.close()


threads = configure_torch_threads(n_envs, "envpool")
print(f"torch {torch.__version__}, {threads} torch threads, budget {timesteps} steps per device, Pong x{n_envs} on EnvPool")
results = {}
if torch.cuda.is_available():
    print(f"CUDA device: {torch.cuda.get_device_name(0)}")
    results["cuda"] = fps("cuda")
    print(f"cuda: {results['cuda']:.0f} steps/s", flush=True)
else:
    print("CUDA not available on this machine: skipping the GPU run (CPU only)")
results["cpu"] = fps("cpu")
print(f"cpu: {results['cpu']:.0f} steps/s", flush=True)
if "cuda" in results:
    print(f"cuda/cpu speed-up: {results['cuda'] / results['cpu']:.2f}x")
EOF
