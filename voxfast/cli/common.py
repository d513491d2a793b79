"""What every sub-command module shares: the parser helpers and argument types."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voxfast.errors import VoxfastError


def command(sub: Any, name: str, func: Any, help: str, doc: Any = None, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command that runs `func`, described by the docstring of `doc` (the pipeline function), else func's."""
    p = sub.add_parser(name, help=help, description=inspect.cleandoc((doc or func).__doc__ or ""), **kwargs)
    p.set_defaults(func=func)
    return p


def add_bench_args(p: argparse.ArgumentParser, batch: int, device_help: str) -> None:
    """The options every `bench-*` command shares."""
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--frames", type=int, default=200, help="crop length in frames (200 = 2 s)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def add_config_args(p: argparse.ArgumentParser, default: str | None = None, default_help: str | None = None) -> None:
    p.add_argument("--config", default=default, help="a YAML file or a shipped config's name (demo, small, "
                   f"voxceleb_trainer, image_demo, eeg_demo); default: {default_help or default}")
    p.add_argument("--preset", action="append", default=[], metavar="NAME_OR_YAML",
                   help="settings laid over the config: a shipped preset (speed, reproducible) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=1e-3")


def step_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition(":")
    try:
        start, end = int(first), int(last)
    except ValueError:
        start = end = 0
    if not sep or not 1 <= start <= end:
        raise argparse.ArgumentTypeError(f"expected N:M with 1 <= N <= M (optimizer steps), got {text!r}")
    return start, end


def print_files(files: Sequence[tuple[str, str]], what: str) -> None:
    """List (path, reason) pairs under a count, as the pack and extract summaries do."""
    if files:
        print(f"{len(files)} {what}:")
        for path, reason in files:
            print(f"  {path}: {reason}")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts >= 0, e.g. 0,1,2,4, got {text!r}")
    return values


def add_out_file_args(p: argparse.ArgumentParser, help: str, required: bool = True, default: str | None = None) -> None:
    """`--out FILE` with `--overwrite`: a command that writes one file never replaces one silently."""
    p.add_argument("--out", required=required, default=default, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")


def check_out_file(path: str | None, overwrite: bool) -> None:
    """Refuse, before any work starts, an --out that names a folder, or a file that exists (without --overwrite):
    an hour of extraction should not end in IsADirectoryError, nor replace last week's table unasked."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise VoxfastError(f"--out {out} is a folder; name the file to write")
    if out.exists() and not overwrite:
        raise VoxfastError(f"--out {out} exists; choose another path, or add --overwrite to replace it")


def check_out_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse a run or data folder that names a file (the folder commands resume into an existing folder)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise VoxfastError(f"{flag} {path} is a file, not a folder; name a new folder (or the folder of the run to "
                           "resume)")


def check_new_run(out: str | Path, resume: str | None, flag: str) -> None:
    """A run folder that already holds checkpoints is continued with --resume, never trained over afresh (the new
    run would replace its last.pt and best.pt)."""
    check_out_folder(out, flag)
    if resume is None and any((Path(out) / "checkpoints").glob("*.pt")):
        raise VoxfastError(f"{flag} {out} already holds a run (checkpoints/); --resume auto continues it, another "
                           f"{flag} starts a new one")
