"""`rl-selfdistill` command line: train | evaluate | benchmark | report | throughput.

Each subcommand lives in its own module, which exposes `register(subparsers)`; the
module sets `func` on its parser to a handler `(argparse.Namespace) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from rl_selfdistill.errors import UsageError

# Modules that register subcommands, in the order `--help` lists them.
_SUBCOMMAND_MODULES = (
    "rl_selfdistill.train_cli",
    "rl_selfdistill.evaluate",
    "rl_selfdistill.benchmark.cli",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments end with one line naming the problem and where help is, exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="rl-selfdistill",
        description="Self-distilling PPO and DQN: train, evaluate and benchmark.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # subcommand not built yet in this checkout
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        print(f"rl-selfdistill {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
