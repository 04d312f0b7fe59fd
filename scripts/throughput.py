"""Paired A B A B throughput comparison: same as `rl-selfdistill throughput ...`."""

import sys

from rl_selfdistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["throughput", *sys.argv[1:]]))
