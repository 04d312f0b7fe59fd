#!/usr/bin/env python
"""Train one agent: the same as `rl-selfdistill train ...` (see `python scripts/train.py --help`)."""

import sys

from rl_selfdistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
