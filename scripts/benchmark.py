"""Run an algo x env x seed benchmark grid: same as `rl-selfdistill benchmark ...`."""

import sys

from rl_selfdistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
