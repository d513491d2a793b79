"""The frame every kind runs in: forget the old result, check md5s, do the kind's work, write prepare.json last."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from voxfast.errors import VoxfastError
from voxfast.prepare import PREPARE_JSON, PROBLEM_FILES, CommonOptions, PrepareResult, absolute, write_result
from voxfast.prepare.checksums import apply_checksums

__all__ = ["run_stage"]


def run_stage(kind: str, src: str | Path, out: str | Path, common: CommonOptions | None,
              body: Callable[[PrepareResult, Path, Path], None]) -> PrepareResult:
    """Run `body(result, src, out)` between the shared steps and return the result written to prepare.json.

    The old prepare.json goes first, so a run that fails or is killed part-way leaves the stage incomplete
    for a recipe runner instead of describing lists this run may have half rewritten.
    """
    common = common or CommonOptions()
    src_path, out_path = absolute(src), absolute(out)
    if not src_path.exists():
        raise VoxfastError(f"{kind}: source folder not found: {src_path}; pass the folder the dataset was "
                           "extracted into")
    if out_path.exists() and not out_path.is_dir():
        raise VoxfastError(f"output {out_path} is a file; pass a folder (it is created when missing)")
    out_path.mkdir(parents=True, exist_ok=True)
    for stale in (PREPARE_JSON, *PROBLEM_FILES):
        (out_path / stale).unlink(missing_ok=True)
    result = PrepareResult(kind=kind, sources={"src": str(src_path)})
    result.options["allow_missing"] = common.allow_missing
    apply_checksums(result, common, src_path, out_path)
    body(result, src_path, out_path)
    result.outputs["prepare_json"] = str(out_path / PREPARE_JSON)
    write_result(out_path, result)
    return result
