"""Writing the lists every kind produces: `speaker path` training lists and `label enroll test` trial lists.

Paths are absolute and resolved, so a list works from any working directory and with any ``data.train_root``
/ ``eval.root`` left at its default. Fields are whitespace-separated (see voxfast.data.manifest), so a path
with a space cannot be listed; all such paths are reported at once, not the first one a writer trips over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from voxfast.audio.io import AUDIO_SUFFIXES
from voxfast.data.manifest import Trial
from voxfast.errors import VoxfastError
from voxfast.prepare import write_lines

__all__ = ["TRAIN_LIST", "check_tokens", "no_audio_error", "write_train_list", "write_trial_list"]

TRAIN_LIST = "train_list.txt"


def check_tokens(values: Iterable[str], what: str) -> None:
    """Fail, naming the count and the first few, when any value holds whitespace (a list field cannot)."""
    bad = [v for v in values if not v or any(c.isspace() for c in v) or v.startswith("#")]
    if bad:
        shown = ", ".join(repr(v) for v in bad[:3])
        raise VoxfastError(f"{len(bad)} {what}(s) are empty, hold whitespace or start with #, which list files "
                           f"cannot hold, first: {shown} (rename them)")


def write_train_list(path: Path, rows: Sequence[tuple[str, Path]]) -> None:
    """``speaker /absolute/path`` lines, in the order given."""
    check_tokens({spk for spk, _ in rows}, "speaker name")
    check_tokens([str(p) for _, p in rows], "audio path")
    write_lines(path, (f"{spk} {p}" for spk, p in rows))


def write_trial_list(path: Path, trials: Sequence[Trial]) -> None:
    """``label enroll test`` lines (``enroll test`` when unlabelled), what read_trials reads back."""
    check_tokens({t.enroll for t in trials} | {t.test for t in trials}, "trial path")
    write_lines(path, (f"{t.enroll} {t.test}" if t.label is None else f"{t.label} {t.enroll} {t.test}"
                       for t in trials))


def no_audio_error(folder: Path, what: str) -> VoxfastError:
    """The error for a folder without any audio file voxfast reads."""
    return VoxfastError(f"no {', '.join(AUDIO_SUFFIXES)} files under {folder} ({what}); pass the folder the "
                        "dataset was extracted into")
