"""Copy a benchmark's results, without its models, into a folder meant to be committed.

A benchmark folder holds models, checkpoints and TensorBoard logs (hundreds of MB for a grid);
the report needs only the manifest and each run's small text files. The copy is a benchmark
folder in its own right: `rl-selfdistill report DEST` regenerates the report from it alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rl_selfdistill.benchmark.aggregate import specs_with_runs_on_disk
from rl_selfdistill.benchmark.grid import MANIFEST_NAME, load_manifest
from rl_selfdistill.errors import UsageError
from rl_selfdistill.run.rundir import DESCRIPTION_FILES

# What the report reads (run.json, eval.csv), and what a reader needs to see how a run was made
# and how it trained (config.yaml, command.txt, and progress.csv with every SB3 and distill/ key).
PUBLISHED_RUN_FILES = DESCRIPTION_FILES


def publish_results(out: Path, dest: Path) -> list[Path]:
    """Copy `out`'s benchmark.json and each run's PUBLISHED_RUN_FILES to `dest`; return the copied files."""
    out, dest = Path(out), Path(dest)
    manifest = load_manifest(out)
    if manifest is None:
        raise UsageError(f"{out} has no {MANIFEST_NAME}; --publish copies a folder written by `rl-selfdistill benchmark`")
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"--publish folder {dest} is not empty; choose a new folder (nothing there is overwritten)")
    if dest.resolve().is_relative_to(out.resolve()):
        raise UsageError(f"--publish folder {dest} is inside the benchmark folder {out}; choose one outside it")
    copied = [_copy(out / MANIFEST_NAME, dest / MANIFEST_NAME)]
    # The runs the report reads: the grid's cells and any other run found on disk.
    for run_dir in (spec.run_dir(out) for spec in specs_with_runs_on_disk(out, manifest.specs())):
        if not run_dir.is_dir():
            continue
        # Made even when empty: a run killed before writing anything stays "interrupted", not "never started".
        (dest / run_dir.relative_to(out)).mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED_RUN_FILES:
            if (run_dir / name).is_file():
                copied.append(_copy(run_dir / name, dest / run_dir.relative_to(out) / name))
    return copied


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    return target
