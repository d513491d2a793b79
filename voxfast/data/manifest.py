"""Utterance lists, trial lists and score files: reading, writing and precise error messages.

Supported inputs are the two layouts speaker-verification data usually comes in:

* VoxCeleb lists (``train_list.txt``): one ``speaker relative/path.wav`` per line;
* Kaldi data directories: ``wav.scp`` (``utt path``) plus ``utt2spk`` (``utt speaker``).

Trial lists may be VoxCeleb (``1 enroll test``), Kaldi (``enroll test target|nontarget``) or
unlabelled (``enroll test``). Score files are ``enroll test score``.

Every reader skips blank lines and lines starting with ``#``. A malformed line raises
:class:`~voxfast.errors.ListFormatError` whose message starts with ``file:line:`` (1-based, counting
every physical line) and ends with how to fix it, because these files are usually hand-edited or made by
other toolkits and a traceback into the parser does not tell the user which line to look at.
Fields are separated by whitespace, so ids and paths cannot contain spaces.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxfast.errors import ListFormatError, VoxfastError
from voxfast.fileio import atomic_bytes, atomic_text

if TYPE_CHECKING:
    from voxfast.data.trials import PairTable, TrialTable

if TYPE_CHECKING:
    from voxfast.data.utterances import UtteranceTable

log = logging.getLogger(__name__)

__all__ = [
    "Trial",
    "Utterance",
    "read_kaldi_dir",
    "read_scores",
    "read_trials",
    "read_utterances",
    "read_voxceleb_list",
    "speaker_index",
    "write_scores",
    "write_trials",
    "write_voxceleb_list",
]

StrPath = str | os.PathLike[str]

_LIST_HINT = "run `voxfast make-demo-data` or pass an existing list"
_TRIAL_HINT = "pass an existing trial list"
_FIX_LINE = "fix the line or delete it"


@dataclass(frozen=True)
class Utterance:
    """One training/test utterance: its id, its speaker and the absolute path of its audio file."""

    utt: str
    spk: str
    path: str


@dataclass(frozen=True)
class Trial:
    """One verification trial; ``label`` is 1 (same speaker), 0 (different) or None (unlabelled)."""

    enroll: str
    test: str
    label: int | None


# --------------------------------------------------------------------------------------------------
# Line reading and error messages.


def _line_error(path: StrPath, lineno: int, problem: str, text: str, fix: str = _FIX_LINE) -> ListFormatError:
    """Build the ``file:line: problem: 'line' (fix)`` error every reader raises."""
    shown = text if len(text) <= 100 else text[:97] + "..."
    return ListFormatError(f"{path}:{lineno}: {problem}: {shown!r} ({fix})")


def _require_file(path: Path, kind: str, hint: str) -> None:
    """Fail early with the path and a hint instead of a bare FileNotFoundError."""
    if path.is_dir():
        raise VoxfastError(f"{kind} is a directory, not a file: {path}; {hint}")
    if not path.is_file():
        raise VoxfastError(f"{kind} not found: {path}; {hint}")


def _lines(path: Path, kind: str, hint: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(1-based line number, fields)`` of every line that is neither blank nor a ``#`` comment."""
    _require_file(path, kind, hint)
    try:
        with path.open(encoding="utf-8-sig") as f:  # -sig: tolerate a BOM from Windows editors
            for lineno, raw in enumerate(f, start=1):
                fields = raw.split()
                if fields and not fields[0].startswith("#"):
                    yield lineno, fields
    except UnicodeDecodeError as e:
        raise VoxfastError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); {kind}s must be plain text files"
        ) from None


# --------------------------------------------------------------------------------------------------
# Utterance lists.


def read_voxceleb_list(path: StrPath, root: StrPath | None = None) -> UtteranceTable:
    """Read a VoxCeleb ``speaker relpath`` list; paths are relative to ``root`` (default: the list's folder).

    The utterance id is the relative path as written, which is unique and stable across machines. The result is a
    columnar :class:`~voxfast.data.utterances.UtteranceTable` (a sequence of :class:`Utterance`).

    Raises:
        VoxfastError: the file is missing or empty.
        ListFormatError: a line does not have exactly two columns, or a path appears twice.
    """
    from voxfast.data.utterances import read_voxceleb_table

    return read_voxceleb_table(path, root)


def read_kaldi_dir(directory: StrPath, root: StrPath | None = None) -> UtteranceTable:
    """Read a Kaldi data directory (``wav.scp`` + ``utt2spk``) in wav.scp order.

    Relative wav.scp paths are resolved against ``root``, by default the current directory: Kaldi
    recipes write them relative to the recipe folder they run from, not to the data directory.
    Utterances listed only in utt2spk are ignored (as after ``utils/fix_data_dir.sh``).

    Raises:
        VoxfastError: the directory, wav.scp or utt2spk is missing, or wav.scp is empty.
        ListFormatError: a malformed or duplicate line, a command pipe, or utterances without a speaker.
    """
    from voxfast.data.utterances import read_kaldi_table

    return read_kaldi_table(directory, root)


def read_utterances(path: StrPath, root: StrPath | None = None) -> UtteranceTable:
    """Read a Kaldi data directory (a folder with wav.scp) or else a VoxCeleb list file.

    ``root`` is passed on: the folder relative paths are resolved against (see the two readers).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "wav.scp").is_file():
            raise VoxfastError(
                f"{path} is a directory without wav.scp; pass a VoxCeleb list file or a Kaldi data directory"
            )
        return read_kaldi_dir(path, root)
    return read_voxceleb_list(path, root)


def speaker_index(utts: Iterable[Utterance]) -> dict[str, int]:
    """Map speaker names to contiguous class ids 0..N-1 in sorted order, so ids do not depend on list order."""
    if hasattr(utts, "speaker_names"):  # an UtteranceTable: its names are sorted already
        return {spk: i for i, spk in enumerate(utts.speaker_names)}
    return {spk: i for i, spk in enumerate(sorted({u.spk for u in utts}))}


# --------------------------------------------------------------------------------------------------
# Trial lists.

_VOXCELEB, _KALDI, _UNLABELLED = "VoxCeleb", "Kaldi", "unlabelled"
_SHAPES = {
    _VOXCELEB: "'label enroll test' with label 0/1",
    _KALDI: "'enroll test target|nontarget'",
    _UNLABELLED: "'enroll test'",
}


def _matches(fields: list[str], fmt: str) -> bool:
    """Whether a line's fields fit a trial format."""
    if fmt == _UNLABELLED:
        return len(fields) == 2
    if fmt == _VOXCELEB:
        return len(fields) == 3 and fields[0] in ("0", "1")
    return len(fields) == 3 and fields[2] in ("target", "nontarget")


def _detect_format(path: Path, lineno: int, fields: list[str]) -> str:
    """Format of the first line (VoxCeleb wins if a line fits both 3-column formats)."""
    for fmt in (_VOXCELEB, _KALDI, _UNLABELLED):
        if _matches(fields, fmt):
            return fmt
    expected = ", ".join(f"{shape} ({fmt})" for fmt, shape in _SHAPES.items())
    raise _line_error(
        path,
        lineno,
        f"cannot tell the trial format from {len(fields)} columns; expected one of {expected}",
        " ".join(fields),
        "fix the line so it uses one of these formats",
    )


def _mismatch_problem(fields: list[str], fmt: str, first_line: int) -> tuple[str, str]:
    """Say why a line does not fit the file's format: wrong label, wrong column count, or another format."""
    detected = f"{fmt} format, detected from line {first_line}"
    other = next((f for f in (_VOXCELEB, _KALDI, _UNLABELLED) if f != fmt and _matches(fields, f)), None)
    if other is not None:
        return f"line is in {other} format but the file is in {detected}", "use one format for the whole file"
    want = 2 if fmt == _UNLABELLED else 3
    if len(fields) != want:
        return f"expected {want} columns {_SHAPES[fmt]} ({detected}), found {len(fields)}", _FIX_LINE
    if fmt == _VOXCELEB:
        return f"label must be 0 or 1, found {fields[0]!r} ({detected})", _FIX_LINE
    return f"label must be 'target' or 'nontarget', found {fields[2]!r} ({detected})", _FIX_LINE


def read_trials(path: StrPath) -> TrialTable:
    """Read a VoxCeleb, Kaldi or unlabelled trial list; the first line fixes the format for the whole file.

    Returns a columnar :class:`~voxfast.data.trials.TrialTable` (int32 id codes, int8 labels, line numbers) that
    still indexes and iterates as a list of :class:`Trial`. Exact repeats of a pair are counted once (a repeated
    trial would weigh twice in the EER) and logged with their lines.

    Raises:
        VoxfastError: the file is missing, not UTF-8 or has no trials.
        ListFormatError: a line does not fit the detected format, or a pair has two labels (message names the
            line and why).
    """
    from voxfast.data.trials import parse_trials  # it builds on this module's messages

    table, repeats, n_repeats = parse_trials(path)
    if n_repeats:
        log.warning("%s: %d exact duplicate trial(s) ignored, at lines %s", path, n_repeats, ", ".join(repeats))
    return table


# --------------------------------------------------------------------------------------------------
# Writing.


def _check_token(value: str, what: str) -> str:
    """Refuse ids/paths that would not read back as one whitespace-separated field."""
    if not value or any(c.isspace() for c in value) or value.startswith("#"):
        raise VoxfastError(f"cannot write {what} {value!r}: it must be non-empty, without spaces and not start with #")
    return value


def write_lines(path: StrPath, lines: Iterable[str]) -> None:
    """Write lines atomically, so an interrupted run never leaves a truncated list and readers never see half."""
    with atomic_text(path) as f:
        for line in lines:
            f.write(line + "\n")


def write_voxceleb_list(path: StrPath, utts: Iterable[Utterance], root: StrPath | None = None) -> None:
    """Write ``speaker relpath`` lines, paths relative to ``root`` (default: the list's folder).

    Reading the file back with the same ``root`` gives the same speakers and audio paths.
    """
    base = os.path.abspath(root if root is not None else Path(path).parent)

    def lines() -> Iterator[str]:
        for u in utts:
            rel = os.path.relpath(u.path, base)
            yield f"{_check_token(u.spk, 'speaker')} {_check_token(rel, 'path')}"

    write_lines(path, lines())


def write_trials(path: StrPath, trials: Sequence[Trial]) -> None:
    """Write trials in VoxCeleb format (``label enroll test``); all-unlabelled trials as ``enroll test``."""
    unlabelled = {t.label is None for t in trials}
    if len(unlabelled) > 1:
        raise VoxfastError("cannot write a mix of labelled and unlabelled trials; label all of them or none")

    def line(t: Trial) -> str:
        pair = f"{_check_token(t.enroll, 'enroll id')} {_check_token(t.test, 'test id')}"
        if t.label is None:
            return pair
        if t.label not in (0, 1):
            raise VoxfastError(f"trial label must be 0 or 1, found {t.label!r} for {pair!r}")
        return f"{int(t.label)} {pair}"

    write_lines(path, (line(t) for t in trials))


def write_scores(path: StrPath, trials: Sequence[Trial | tuple[str, str]] | PairTable | TrialTable,
                 scores: np.ndarray) -> None:
    """Write ``enroll test score`` lines, score with 6 decimals (enough for EER to 1e-4 %), as f"{score:.6f}".

    The lines are built as bytes in blocks of a million (numba, see voxfast.data.trials.score_bytes) and written
    through the atomic writer: a few seconds for ten million trials, where one f-string per line took tens.
    """
    from voxfast.data.trials import PairTable, score_bytes

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size != len(trials):
        raise VoxfastError(f"{len(trials)} trials but {scores.size} scores; every trial needs exactly one score")
    pairs = PairTable.from_pairs(trials)
    _check_ids(pairs)
    with atomic_bytes(path) as f:
        for block in score_bytes(pairs, scores):
            f.write(block)


def _check_ids(pairs: PairTable) -> None:
    """:func:`_check_token` for the ids of a table: each distinct id is tested once, and the first pair (enroll
    before test) holding a bad one is named as the line-by-line writer named it."""
    from voxfast.data.trials import suspect_tokens

    suspects = np.flatnonzero(suspect_tokens(pairs.ids))  # a superset, tested exactly below
    bad = np.zeros(len(pairs.ids), dtype=bool)
    bad[suspects] = [not u or u.startswith("#") or any(c.isspace() for c in u) for u in map(pairs.ids.__getitem__,
                                                                                         suspects)]
    if not bad.any():
        return
    rows = bad[pairs.enroll] | bad[pairs.test]
    enroll, test = pairs.pair(int(np.argmax(rows)))
    _check_token(enroll, "enroll id")
    _check_token(test, "test id")


def read_scores(path: StrPath) -> tuple[PairTable, np.ndarray]:
    """Read ``enroll test score`` lines into (pairs, float64 scores).

    `pairs` is a columnar :class:`~voxfast.data.trials.PairTable` (id codes and line numbers) that still indexes,
    iterates and compares as a list of ``(enroll, test)`` tuples. A score is what Python's float() reads;
    float64 keeps the 6 written decimals exact enough that tied scores stay tied and distinct ones distinct.

    Raises:
        VoxfastError: the file is missing, not UTF-8 or empty.
        ListFormatError: a line without 3 columns or with a score that is not a finite number.
    """
    from voxfast.data.trials import parse_scores

    return parse_scores(path)


def data_line(path: StrPath, index: int) -> int:
    """1-based physical line number of the index-th line that is neither blank nor a # comment (for messages
    about the index-th record of a list whose parser skipped those lines)."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.strip()
            if text and not text.startswith("#"):
                if index == 0:
                    return lineno
                index -= 1
    raise ValueError(f"{path} has fewer data lines than expected")
