"""Command-line interface: `voxfast <command>`.

Only the CLI configures logging. User errors (VoxfastError) print one line naming the problem and
the fix and exit with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from voxfast.cli import bench, core, datasets, imports, recipes
from voxfast.errors import VoxfastError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except VoxfastError as exc:
        print(f"voxfast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voxfast: interrupted", file=sys.stderr)
        return 130


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse takes a command's `section.key=value` overrides in one run of positionals; the ones after a flag
    (`train --config c.yaml train.epochs=2 --no-eval train.lr=1e-3`) come back unparsed and join the rest here."""
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or not all(_OVERRIDE.match(token) for token in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


_OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_][\w.]*=")  # section.key=value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxfast", description="Fast speaker-verification training and scoring.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core.add_commands(sub)
    recipes.add_commands(sub)
    bench.add_commands(sub)
    datasets.add_commands(sub)
    imports.add_commands(sub)
    return parser
