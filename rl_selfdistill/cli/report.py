"""`rl-selfdistill report`: aggregate benchmark folders with rliable into summary.json, report.md and figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rl_selfdistill.cli.common import add_command, add_gym_packages
from rl_selfdistill.errors import UsageError
from rl_selfdistill.paths import check_writable_folder

HELP = "aggregate a benchmark folder with rliable: summary.json, report.md, PNG figures"
DEFAULT_REPS = 2000


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "report", help=HELP)
    parser.add_argument(
        "outputs", type=Path, nargs="+", metavar="OUT", help="benchmark folder(s) (the -o of `benchmark`); several are pooled"
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, metavar="DIR", help="report folder (default: OUT; needed with several)"
    )
    parser.add_argument("--suite", default=None, help="suite whose reference scores normalise (default: the benchmark's)")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="bootstrap replications")
    parser.add_argument(
        "--exclude",
        type=Path,
        nargs="+",
        default=[],
        metavar="PATH",
        help="leave out the runs under PATH (OUT/runs/ALGO[/ENV[/seedN]]), e.g. superseded ones; the report lists them",
    )
    parser.add_argument(
        "--publish",
        type=Path,
        default=None,
        metavar="DEST",
        help="copy OUT's benchmark.json and each run's run.json, eval.csv, progress.csv, config.yaml and command.txt "
        "(no models) to the new folder DEST and report there: DEST can be committed and regenerates its own report",
    )
    add_gym_packages(parser)
    parser.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    from rl_selfdistill.benchmark.report import write_report
    from rl_selfdistill.run.request import import_gym_packages
    from rl_selfdistill.run.rundir import PROGRAM, format_command

    import_gym_packages(args.gym_packages)  # algorithms a plugin registers: their base and colour come from it
    for out in args.outputs:
        if not out.is_dir():
            raise UsageError(f"benchmark folder {out} does not exist; pass the -o folder of `rl-selfdistill benchmark`")
    if len(set(map(Path.resolve, args.outputs))) < len(args.outputs):
        raise UsageError("a benchmark folder is named twice; name each once")
    if args.reps < 100:
        raise UsageError(f"--reps {args.reps} is too few for a 95% interval; use at least 100")
    for flag, folder in (("-o", args.output), ("--publish", args.publish)):
        if folder is not None:
            check_writable_folder(folder, flag)  # before the bootstrap, not after it
    if args.publish is not None:
        args.outputs = [_published(args)]
    options = {
        "-o": args.output,
        "--suite": args.suite,
        "--reps": args.reps if args.reps != DEFAULT_REPS else None,
        "--exclude": args.exclude,
        "--gym-packages": args.gym_packages,
    }
    files = write_report(
        args.outputs,
        suite=args.suite,
        reps=args.reps,
        command=format_command([PROGRAM, "report", *args.outputs], options),
        report_dir=args.output,
        exclude=args.exclude,
    )
    print(f"wrote {files.markdown}, {files.summary} and {len(files.figures)} figures")
    summary = json.loads(files.summary.read_text())
    if summary["excluded"]:
        print(f"{len(summary['excluded'])} runs/envs left out of the aggregate: see 'Left out of the aggregate' in report.md")
    return 0


def _published(args: argparse.Namespace) -> Path:
    """Copy the one benchmark folder to --publish DEST, which the report then reads (and so records as its input)."""
    from rl_selfdistill.benchmark.publish import publish_results

    if len(args.outputs) > 1 or args.output is not None or args.exclude:
        raise UsageError("--publish DEST copies one benchmark folder and reports in DEST; drop -o, --exclude and other OUTs")
    copied = publish_results(args.outputs[0], args.publish)
    print(f"copied {len(copied)} files to {args.publish}")
    return args.publish
