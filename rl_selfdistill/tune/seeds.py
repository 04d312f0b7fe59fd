"""Tuning seeds and reporting seeds never overlap.

Every study draws its seeds from TUNING_SEEDS = [1_000_000, 2_000_000) and `tune` refuses any other
seed, so one range check is enough: `benchmark` refuses a reporting seed inside the range unless the
user says `--allow-tuning-seeds`. A setting chosen on seeds 1_000_000.. is then always reported on
seeds it was not chosen on. Imports nothing heavy: the check runs before any training starts.
"""

from __future__ import annotations

from collections.abc import Iterable

from rl_selfdistill.errors import UsageError

TUNING_SEED_START = 1_000_000
TUNING_SEED_STOP = 2_000_000
TUNING_SEEDS = range(TUNING_SEED_START, TUNING_SEED_STOP)
# A run with seed s also seeds its envs s + i (i < n_envs) and its evaluation envs s + 10_000 + i
# (run/build.py EVAL_SEED_OFFSET), so a reporting seed just below or above the range could step or evaluate on the
# env seeds of a tuning run: reporting seeds keep this margin away from the range.
SEED_MARGIN = 20_000
RESERVED_FOR_TUNING = range(TUNING_SEED_START - SEED_MARGIN, TUNING_SEED_STOP + SEED_MARGIN)


def tuning_seeds(first_seed: int, count: int) -> list[int]:
    """The `count` seeds of a study starting at `first_seed`; all must lie in TUNING_SEEDS."""
    if count < 1:
        raise UsageError(f"--seeds must be at least 1, got {count}")
    seeds = list(range(first_seed, first_seed + count))
    if seeds[0] not in TUNING_SEEDS or seeds[-1] not in TUNING_SEEDS:
        raise UsageError(
            f"tuning seeds {seeds[0]}..{seeds[-1]} leave the tuning range {TUNING_SEED_START}..{TUNING_SEED_STOP - 1}; "
            f"pass --first-seed inside it (reporting seeds live outside it)"
        )
    return seeds


def check_reporting_seeds(seeds: Iterable[int], *, allow_tuning_seeds: bool = False) -> None:
    """Refuse benchmark seeds that a tuning study may have used: a result on them would be optimistic."""
    if allow_tuning_seeds:
        return
    overlap = sorted(seed for seed in seeds if seed in RESERVED_FOR_TUNING)
    if overlap:
        raise UsageError(
            f"seed {overlap[0]} lies in the tuning range {TUNING_SEED_START}..{TUNING_SEED_STOP - 1} or within "
            f"{SEED_MARGIN} of it (its env seeds could be a tuning run's), so a study may have chosen its setting on "
            f"it; pick --first-seed below {RESERVED_FOR_TUNING.start}, or pass --allow-tuning-seeds to report on it anyway"
        )
