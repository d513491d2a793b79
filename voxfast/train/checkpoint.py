"""Checkpoint files: atomic writes, retention, best-model tracking and weight averaging.

Writes are atomic so a run killed mid-write never leaves a truncated checkpoint behind; retention only ever deletes
epoch_*.pt files, so last.pt (resume) and best.pt survive whatever keep_last is.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxfast.errors import VoxfastError

log = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    The state must be tensors and plain Python values (checked), so every checkpoint loads with
    ``torch.load(weights_only=True)``: loading one never runs code.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_plain(state, "state")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one temp name per writer process
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def record_validation(path: str | Path, figures: dict[str, Any]) -> None:
    """Store an evaluation's figures (EER threshold included) in a checkpoint, for `voxfast.load(...).verify`."""
    state = load_checkpoint(path)
    state["validation"] = dict(figures)
    save_checkpoint(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VoxfastError(f"checkpoint not found: {path} (pass a .pt file from a run's checkpoints/ folder)")
    try:
        with torch.serialization.safe_globals(_NUMPY_DATA):  # arrays in checkpoints written before 2026-11-26
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # the object the file would import and call
        if found is None:
            raise VoxfastError(f"cannot load checkpoint {path}: not a checkpoint, or damaged (use another copy)"
                               ) from None
        raise VoxfastError(f"refusing to load checkpoint {path}: it needs {found.group(1)}, and voxfast loads only "
                           "tensors and plain values (torch.load weights_only=True) so that a checkpoint can never "
                           "run code; use a checkpoint written by voxfast, from a source you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise VoxfastError(f"cannot load checkpoint {path}: {exc} (the file is damaged; use an older one)") from exc


# Data-only numpy globals (array and scalar reconstruction, dtypes): what older voxfast checkpoints pickled in
# their RNG states. None of them calls anything but numpy's own constructors.
_NUMPY_DATA = [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray, np.dtype,
               *(type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFD")]


def _check_plain(value: Any, where: str) -> None:
    """Refuse (as a bug) anything but tensors, numbers, strings, bytes, None and lists / tuples / dicts of them."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, torch.Tensor | bool | int | float | str | bytes | type(None)) or isinstance(
            value, np.generic):
        raise TypeError(f"checkpoint {where} is a {type(value).__name__}: checkpoints hold only tensors and plain "
                        "values (convert it before saving)")


# --- retention -------------------------------------------------------------------------------------------------------

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")
_EPOCH_TMP = re.compile(r"^\.epoch_(\d+)\.pt\.(\d+\.)?tmp$")  # .epoch_N.pt.<writer pid>.tmp


def _epoch_files(folder: Path) -> list[Path]:
    """The epoch_*.pt files of a folder, oldest first by the epoch number in the name.

    The number, not mtime, orders them: copying a run folder (rsync without -t, cloud sync) rewrites mtimes, and
    epoch_010 must sort after epoch_009 whatever the zero padding.
    """
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p.name, p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name)) and p.is_file()]
    return [p for _, _, p in sorted(found)]


def prune_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` epoch_*.pt files of ``folder``; return the deleted paths.

    Only epoch checkpoints are retention candidates: last.pt (what a resume needs), best.pt and any file the user put
    there are never touched. ``keep_last`` 0 keeps every epoch file. Leftover ``.epoch_*.pt.tmp`` files, which only an
    atomic write killed mid-way leaves behind, are removed whatever ``keep_last`` is: they are never valid checkpoints
    and each is as large as one. Call it from the one process that writes checkpoints, after its save has returned,
    so that no temporary file of a write in progress is mistaken for a leftover.
    """
    if keep_last < 0:
        raise VoxfastError(f"keep_last must be >= 0 (0 keeps all epoch checkpoints), got {keep_last}")
    folder = Path(folder)
    if not folder.is_dir():
        return []
    doomed = [p for p in folder.iterdir() if _EPOCH_TMP.match(p.name) and p.is_file()]
    if keep_last > 0:
        doomed += _epoch_files(folder)[:-keep_last]
    deleted = []
    for path in doomed:
        try:
            path.unlink()
        except FileNotFoundError:  # removed by someone else meanwhile: the goal is reached all the same
            continue
        deleted.append(path)
    return deleted


# --- best checkpoint -------------------------------------------------------------------------------------------------


class BestTracker:
    """Whether a validation metric is the best seen so far, across interruptions of the run.

    The best value lives in :meth:`state_dict`, which the trainer stores in its checkpoints; after a resume
    :meth:`load_state_dict` restores it, so best.pt is only replaced by a model that beats every evaluation of the
    run, not merely those since the restart. Non-finite values (a diverged run's NaN loss or EER) never count as best.
    """

    def __init__(self, mode: str = "min", metric: str = "") -> None:
        if mode not in ("min", "max"):
            raise VoxfastError(f"best-checkpoint mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.metric = metric
        self.best: float | None = None

    def is_better(self, value: float | torch.Tensor) -> bool:
        """True when ``value`` strictly beats the best so far; it then becomes the new best.

        Recording on success is deliberate: the caller saves best.pt exactly when this returns True, and the state
        saved alongside must already hold the new best. Ties keep the earlier model (fewer steps, same score).
        """
        value = float(value)
        if not math.isfinite(value):
            return False
        if self.best is not None and not (value < self.best if self.mode == "min" else value > self.best):
            return False
        self.best = value
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values, so the checkpoint stays loadable with ``torch.load(weights_only=True)``."""
        return {"mode": self.mode, "metric": self.metric, "best": self.best}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the best of an earlier run; ``None`` (a checkpoint from before tracking existed) starts afresh.

        A state recorded for another metric or direction is dropped rather than refused: its value cannot be compared
        with the new metric, and the first evaluation after the resume then writes a best.pt for the new setting.
        """
        if state is None:
            self.best = None
            return
        if state.get("mode") != self.mode or state.get("metric", "") != self.metric:
            log.warning(
                "best checkpoint was tracked for %s (%s) and is now for %s (%s); the best value starts afresh",
                state.get("metric") or "the metric",
                state.get("mode"),
                self.metric or "the metric",
                self.mode,
            )
            self.best = None
            return
        best = state.get("best")
        self.best = None if best is None else float(best)


# --- averaging -------------------------------------------------------------------------------------------------------

#: Checkpoint keys only a resume needs; an averaged model has no optimizer trajectory to resume.
RESUME_ONLY_KEYS = frozenset({"optimizer", "scaler", "scheduler", "lr_scheduler", "sampler", "best"})


def _is_resume_only(key: str) -> bool:
    return key in RESUME_ONLY_KEYS or key.endswith("_rng")


def _model_of(state: dict[str, Any], path: Path) -> dict[str, Any]:
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict):
        raise VoxfastError(f"{path}: no model weights inside (no 'model' entry); pass checkpoints written by a run")
    return model


def _layout(model: dict[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """Key -> shape (None for non-tensors): all the comparison needs, without keeping the weights in memory."""
    return {key: tuple(v.shape) if isinstance(v, torch.Tensor) else None for key, v in model.items()}


def _check_same_layout(
    ref: dict[str, tuple[int, ...] | None], ref_path: Path, other: dict[str, Any], other_path: Path
) -> None:
    """Name the first key where two state_dicts differ, since averaging them would be meaningless."""
    hint = "(average checkpoints of one run, with the same model config)"
    for key in ref:
        if key not in other:
            raise VoxfastError(
                f"cannot average {ref_path} and {other_path}: weight {key!r} is in {ref_path.name} but not in "
                f"{other_path.name} {hint}"
            )
    for key in other:
        if key not in ref:
            raise VoxfastError(
                f"cannot average {ref_path} and {other_path}: weight {key!r} is in {other_path.name} but not in "
                f"{ref_path.name} {hint}"
            )
    for key, value in other.items():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        if ref[key] is not None and shape is not None and ref[key] != shape:
            raise VoxfastError(
                f"cannot average {ref_path} and {other_path}: weight {key!r} has shape {ref[key]} in "
                f"{ref_path.name} but {shape} in {other_path.name} {hint}"
            )


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The element-wise mean of the checkpoints' model weights, as WeSpeaker's average_model.py.

    Averaging the last few epochs smooths out the noise of the final SGD steps and usually lowers EER a little.
    Float tensors are summed in float64 (no rounding drift however many are averaged) and cast back to their dtype;
    integer and bool tensors (BatchNorm's num_batches_tracked) are counters, not estimates, and come from the last
    checkpoint, as do all other entries (config, speakers, epoch, step). Optimizer, scaler and RNG states are dropped:
    they belong to the last checkpoint's trajectory, not to the averaged weights, so resuming from the result would
    be wrong. ``averaged_from`` lists the file names. Checkpoints are loaded one at a time to bound memory.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise VoxfastError("no checkpoints to average; pass at least one .pt file or a run folder")
    ref_path = paths[0]
    ref_layout: dict[str, tuple[int, ...] | None] | None = None
    sums: dict[str, torch.Tensor] = {}
    last: dict[str, Any] = {}
    for path in paths:
        last = load_checkpoint(path, "cpu")
        model = _model_of(last, path)
        if ref_layout is None:
            ref_layout = _layout(model)
        else:
            _check_same_layout(ref_layout, ref_path, model, path)
        for key, value in model.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                if key in sums:
                    sums[key].add_(value.detach().to(torch.float64))
                else:  # a copy: the in-place sums must not write into a loaded checkpoint's tensors
                    sums[key] = value.detach().to(torch.float64, copy=True)
    last_model = _model_of(last, paths[-1])
    averaged = {}
    for key, value in last_model.items():
        if key in sums and isinstance(value, torch.Tensor) and value.is_floating_point():
            averaged[key] = sums[key].div_(len(paths)).to(value.dtype)
        else:
            averaged[key] = value
    out = {key: value for key, value in last.items() if not _is_resume_only(key)}
    out["model"] = averaged
    out["averaged_from"] = [p.name for p in paths]
    return out


def select_last_epochs(folder: str | Path, n: int) -> list[Path]:
    """The ``n`` newest epoch_*.pt files of ``folder`` (by epoch number), oldest first."""
    if n < 1:
        raise VoxfastError(f"the number of checkpoints to average must be >= 1, got {n}")
    folder = Path(folder)
    files = _epoch_files(folder)
    if len(files) < n:
        raise VoxfastError(
            f"{folder}: cannot average the last {n} epochs, found {len(files)} epoch_*.pt checkpoint(s); a run keeps "
            f"only train.keep_last of them, so keep_last must be >= {n} (or 0) to average {n}; ask for fewer, or pass "
            "the .pt files explicitly"
        )
    return files[-n:]


def run_average(folder_or_paths: str | Path | Sequence[str | Path], n: int | None, out: str | Path) -> Path:
    """Average a run's last ``n`` epoch checkpoints, or the given .pt files, and write the result to ``out``.

    One folder means a run folder (its checkpoints/ subfolder is used when present) or a checkpoint folder, and
    needs ``n``; .pt files are averaged as given, so ``n`` must then be None rather than silently ignored.
    ``out`` may not be one of the inputs: overwriting a training checkpoint with weights that cannot be resumed
    would lose it.
    """
    if isinstance(folder_or_paths, (str, Path)):
        folder_or_paths = [folder_or_paths]
    given = [Path(p) for p in folder_or_paths]
    if len(given) == 1 and given[0].is_dir():
        if n is None:
            raise VoxfastError(f"{given[0]} is a folder: say how many of its last epochs to average (--last N)")
        folder = given[0] / "checkpoints" if (given[0] / "checkpoints").is_dir() else given[0]
        paths = select_last_epochs(folder, n)
    else:
        folders = [str(p) for p in given if p.is_dir()]
        if folders:
            raise VoxfastError(f"pass one run folder or .pt files, not folders among files: {', '.join(folders)}")
        if n is not None:
            raise VoxfastError(
                f"--last {n} selects epochs of a run folder; with .pt files given, all {len(given)} are averaged "
                "(drop --last, or pass the run folder)"
            )
        paths = given
    out = Path(out)
    if any(out.resolve() == p.resolve() for p in paths):
        raise VoxfastError(f"--out {out} is one of the checkpoints being averaged; write the average to a new file")
    save_checkpoint(average_checkpoints(paths), out)
    return out
