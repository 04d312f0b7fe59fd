"""`rl-selfdistill` command line: train | evaluate | benchmark | report | throughput | tune.

Each subcommand is a module of this package exposing `register(subparsers)`, which adds its
parser (through `common.add_command`) and sets `func` to a handler `(argparse.Namespace) -> int`.
A handler raises `UsageError` for bad input; `main` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from rl_selfdistill.cli.common import HelpFormatter, OneLineErrorParser
from rl_selfdistill.errors import UsageError

# Subcommand modules of this package, in the order `--help` lists them.
SUBCOMMANDS = ("train", "evaluate", "benchmark", "report", "throughput", "tune")


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="rl-selfdistill",
        description="Self-distilling PPO and DQN: train, evaluate and benchmark.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rl-selfdistill {installed_version()}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of these; `rl-selfdistill COMMAND --help` for its options"
    )
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def installed_version() -> str:
    """The version pip installed (the distribution's metadata, so it never disagrees with `pip show`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rl-selfdistill")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The words themselves, for handlers that must tell an option given at its default from one not given.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        print(f"rl-selfdistill {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        from rl_selfdistill.run.interrupts import RunInterrupted

        print("interrupted", file=sys.stderr)
        # A run stopped by SIGTERM inside another command (benchmark, tune) reports it like a shell: 143.
        return stop.exit_status if isinstance(stop, RunInterrupted) else 130
