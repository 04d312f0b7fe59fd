"""`python -m rl_selfdistill ...`: the same as `rl-selfdistill ...`."""

import sys

from rl_selfdistill.cli import main

sys.exit(main())
