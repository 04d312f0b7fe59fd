"""What every subcommand shares: the parser class, the help formatter and option helpers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from rl_selfdistill.errors import UsageError


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments end with one line naming the problem and where help is, exit status 2 (no usage block).

    Subcommand parsers inherit this class from the top-level parser, so every command fails the same way.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where there is a meaningful default; options without one explain it in their help.

    Descriptions and epilogs (examples) keep their line breaks. A help text that states its default itself
    ("(default: the preset's)") is left as written, so no option shows two.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # None, [] and on/off flags have no default worth printing.
        if action.default in (None, [], argparse.SUPPRESS) or isinstance(action.default, bool):
            return action.help
        if action.help and "(default" in action.help:
            return action.help
        if isinstance(action.default, list | tuple):  # "(default: ppo sd_ppo)", as typed, not a Python list
            return f"{action.help} (default: {' '.join(map(str, action.default))})"
        return super()._get_help_string(action)


def add_command(
    subparsers: Any, name: str, *, help: str, description: str | None = None, epilog: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand parser in the one style: HelpFormatter, description defaulting to the one-line help."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )


def add_gym_packages(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gym-packages",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="import these modules first: they may register custom envs (gymnasium.register) or algorithms "
        "(rl_selfdistill.algos.registry.register)",
    )


def add_hyperparams(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    """The RL Zoo's `-params KEY:VALUE ...` (also `--params`, `--hyperparams`), read with `config.parse_params`."""
    parser.add_argument(
        "-params", "--params", "--hyperparams", dest="hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help=help
    )


def key_values(items: Sequence[str], option: str) -> dict[str, Any]:
    """KEY:VALUE items of `option`, values read as YAML data (never evaluated as code)."""
    from rl_selfdistill.config import parse_params

    for item in items:
        key, sep, _ = item.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects KEY:VALUE items, got {item!r}; e.g. {option} n_steps:128")
    return parse_params(items)
