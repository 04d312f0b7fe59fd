#!/usr/bin/env python
"""Evaluate a trained agent: the same as `rl-selfdistill evaluate ...` (see `python scripts/evaluate.py --help`)."""

import sys

from rl_selfdistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
