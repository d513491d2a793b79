"""`voxfast recipe`: a shipped recipe (or a YAML file) from downloaded data to a results table, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from voxfast.cli.common import check_out_folder, command


def add_commands(sub: Any) -> None:
    from voxfast import recipe

    p = command(sub, "recipe", _cmd_recipe, doc=recipe, help="run a recipe: prepare, pack, train, ..., results table",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="a shipped recipe (voxceleb/resnet34, voxceleb/ecapa_tdnn, small, ...) or a YAML file")
    p.add_argument("--data", required=True, type=Path,
                   help="voxceleb/* recipes: a folder holding voxceleb1/, voxceleb2/, the official trial lists, "
                        "musan/ and RIRS_NOISES/; other recipes: your recordings, one folder per speaker")
    p.add_argument("--out", required=True, type=Path, help="run folder (a recipe run again into it resumes)")
    p.add_argument("--stages", type=lambda s: [x for x in s.split(",") if x], metavar="A,B",
                   help=f"run only these stages again ({', '.join(recipe.STAGES)})")
    p.add_argument("--from", dest="start", metavar="STAGE", help="run this stage and every later one again")
    p.add_argument("--workers", type=int, default=2, help="pack and extraction processes (default 2)")
    p.add_argument("--device", default="auto", help="extraction device: auto, cpu, cuda or cuda:N")
    p.add_argument("--preset", action="append", default=[], metavar="NAME_OR_YAML",
                   help="settings laid over every training stage (speed, reproducible, or a YAML file)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides for every stage")


def _cmd_recipe(args: argparse.Namespace) -> int:
    from voxfast.recipe import Recipe, format_results, run_recipe

    check_out_folder(args.out)
    spec = Recipe(args.name, args.data, args.out, args.overrides, args.preset, args.workers, args.device)
    result = run_recipe(spec, args.stages, args.start)
    if result:
        print(format_results(result), end="")
    return 0
