"""`python checkpoint_pause_driver.py PAUSE_S ARGS...`: `rl-selfdistill ARGS...` with every checkpoint held for
PAUSE_S seconds after its temp folder is complete and before it is renamed into place.

A test runs this in a subprocess and SIGKILLs it inside that window, to show that a checkpoint
killed half-way is never mistaken for a complete one. The pause lives here, not in the package.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rl_selfdistill.cli import main
from rl_selfdistill.run import checkpoints


def pause_checkpoint_renames(pause_s: float) -> None:
    real_rename = os.rename

    def rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(source).name.startswith(checkpoints.TEMP_PREFIX):
            time.sleep(pause_s)
        real_rename(source, target)

    os.rename = rename  # checkpoints.write_checkpoint calls os.rename; nothing else renames a checkpoint temp folder


if __name__ == "__main__":
    pause_checkpoint_renames(float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
