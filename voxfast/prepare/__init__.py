"""`voxfast prepare KIND SRC OUT`: downloaded datasets into the lists and folders voxfast trains on.

Every kind ends the same way: the lists it wrote, the counts, the problems it found and the config overrides
to use next go into ``OUT/prepare.json``. That file is what a recipe runner reads to know the stage is
complete, so it is deleted when a stage starts and written last, atomically, only when the stage succeeded:
a killed or failed run never leaves a ``prepare.json`` that describes lists it did not finish.

This module holds what the kinds share (the result, atomic writes, problem lists); it imports none of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxfast.data.manifest import write_lines
from voxfast.errors import VoxfastError

__all__ = ["AUDIO_PROBLEMS", "CHECKSUM_PROBLEMS", "MISSING_RIRS", "MISSING_TRIALS", "PREPARE_FORMAT", "PREPARE_JSON",
           "PROBLEM_FILES", "CommonOptions", "PrepareResult", "absolute", "problem_list",
           "read_result", "write_lines", "write_result"]

PREPARE_JSON = "prepare.json"
PREPARE_FORMAT = 1
# Where each kind lists every problem it found (the message shows the first); a new run removes them all first.
CHECKSUM_PROBLEMS, MISSING_TRIALS = "checksum_problems.txt", "missing_trial_files.txt"
AUDIO_PROBLEMS, MISSING_RIRS = "audio_problems.txt", "missing_rirs.txt"
PROBLEM_FILES = (CHECKSUM_PROBLEMS, MISSING_TRIALS, AUDIO_PROBLEMS, MISSING_RIRS)


@dataclass(frozen=True)
class CommonOptions:
    """What every kind accepts: the datasets' own md5 lists and whether missing files may be dropped."""

    checksums: Sequence[str] = ()  # md5 list files (see voxfast.prepare.checksums for the formats)
    checksum_root: str | None = None  # folder the lists' paths are relative to (default: SRC)
    allow_missing: bool = False  # drop missing trial files / checksum files / unreadable audio instead of failing


@dataclass
class PrepareResult:
    """What a stage did; ``prepare.json`` is this object as JSON (``format`` first)."""

    kind: str
    sources: dict[str, Any] = field(default_factory=dict)  # input folders and files, absolute
    options: dict[str, Any] = field(default_factory=dict)  # the options that shaped the output
    outputs: dict[str, Any] = field(default_factory=dict)  # files and folders written or chosen, absolute
    counts: dict[str, Any] = field(default_factory=dict)  # speakers, utterances, trials, files per category
    problems: list[str] = field(default_factory=list)  # what was dropped or looks wrong (allowed by options)
    overrides: list[str] = field(default_factory=list)  # `section.key=value` for `voxfast train` / `eval`
    summary: list[str] = field(default_factory=list)  # lines the CLI prints

    def to_json(self) -> dict[str, Any]:
        return {"format": PREPARE_FORMAT, **asdict(self)}


def absolute(path: str | os.PathLike[str]) -> Path:
    """The resolved absolute path: lists name files this way so they work from any working directory."""
    return Path(path).expanduser().resolve()


def write_result(out: Path, result: PrepareResult) -> Path:
    """Write ``OUT/prepare.json`` (sorted keys: a re-run with the same inputs writes the same bytes)."""
    path = out / PREPARE_JSON
    write_lines(path, [json.dumps(result.to_json(), indent=2, sort_keys=True)])
    return path


def read_result(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``prepare.json`` of a finished stage, for a recipe runner; an error names the command to run."""
    path = Path(out) / PREPARE_JSON
    if not path.is_file():
        raise VoxfastError(f"{path} not found: the prepare stage for {out} has not finished; run `voxfast prepare`")
    return json.loads(path.read_text(encoding="utf-8"))


def problem_list(out: Path, name: str, lines: Sequence[str]) -> Path:
    """Write every problem of one kind to ``OUT/<name>`` (the CLI shows a few; the file holds all)."""
    path = out / name
    write_lines(path, lines)
    return path
