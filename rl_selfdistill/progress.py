"""Progress bar for interactive terminals: env steps, fps and the recent mean episode return."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

# Refreshing the postfix more often costs more than the information is worth.
POSTFIX_PERIOD_S = 1.0


def progress_wanted(requested: bool) -> bool:
    """Show a bar only when asked for and stderr is a terminal (never in logs, pipes or batch jobs)."""
    return requested and sys.stderr.isatty()


class ProgressBarCallback(BaseCallback):
    """tqdm bar over the whole budget, starting at the resumed step count."""

    def __init__(self, total_timesteps: int) -> None:
        super().__init__()
        self.total_timesteps = total_timesteps
        self.bar: Any = None
        self._last_postfix = 0.0
        self._start_steps = 0
        self._start_time = 0.0

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        self._start_steps = self.model.num_timesteps
        self._start_time = time.time()
        self.bar = tqdm(total=self.total_timesteps, initial=self._start_steps, unit="step", dynamic_ncols=True)

    def _on_step(self) -> bool:
        self.bar.update(self.model.num_timesteps - self.bar.n)
        now = time.time()
        if now - self._last_postfix >= POSTFIX_PERIOD_S:
            self._last_postfix = now
            self.bar.set_postfix(self._postfix(now), refresh=False)
        return True

    def _postfix(self, now: float) -> dict[str, str]:
        fps = (self.model.num_timesteps - self._start_steps) / max(now - self._start_time, 1e-9)
        postfix = {"fps": f"{fps:.0f}"}
        episodes = self.model.ep_info_buffer
        if episodes:
            postfix["ep_rew_mean"] = f"{np.mean([info['r'] for info in episodes]):.2f}"
        return postfix

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.update(self.model.num_timesteps - self.bar.n)
            self.bar.close()
