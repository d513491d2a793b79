"""Command-line interface: `voxfast <command>`.

Only the CLI configures logging. User errors (VoxfastError) print one line naming the problem and
the fix and exit with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from voxfast.cli import bench, core, datasets, recipes
from voxfast.errors import VoxfastError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except VoxfastError as exc:
        print(f"voxfast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voxfast: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxfast", description="Fast speaker-verification training and scoring.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core.add_commands(sub)
    recipes.add_commands(sub)
    bench.add_commands(sub)
    datasets.add_commands(sub)
    return parser
