"""Utterance lists as columns: ten million lines in seconds, a few tens of bytes per utterance, nothing to copy.

A VoxCeleb list or a Kaldi data directory is read by :func:`voxfast.columns.read_fields` into one byte buffer of
utterance ids, one of paths as written, and an int32 speaker code per utterance; the sorted speaker names are the only
per-speaker Python objects. DataLoader workers forked from the training process index these arrays without writing
to them, so their pages stay shared (a list of ``str`` is written on every read through reference counts, and each
worker ends up with its own copy). Every check of the line-by-line readers is kept, vectorised, with the same
``file:line:`` message for the first offending line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxfast.columns import ColumnSequence, Fields, StringColumn, id_codes, lookup_codes, read_fields
from voxfast.data.manifest import _FIX_LINE, _LIST_HINT, StrPath, Utterance, _line_error
from voxfast.data.trials import IdIndex
from voxfast.errors import ListFormatError, VoxfastError

_KALDI_HINT = "a Kaldi data directory needs wav.scp and utt2spk"


class PathColumn(ColumnSequence[str]):
    """Audio paths as the list wrote them and the folder relative ones are resolved against; item i is the
    absolute, normalised path (as :class:`Utterance.path`), computed when asked for."""

    def __init__(self, base: str, written: StringColumn) -> None:
        self.base, self.written = base, written

    def __len__(self) -> int:
        return len(self.written)

    def _at(self, i: int) -> str:
        return os.path.normpath(os.path.join(self.base, self.written[i]))

    def take(self, indices: np.ndarray) -> PathColumn:
        return PathColumn(self.base, self.written.take(indices))


class UtteranceTable(ColumnSequence[Utterance]):
    """The utterances of a list: ids, paths, and speakers as int32 codes into the sorted `speaker_names`.

    It is a sequence of :class:`Utterance` for code that wants objects (built on access), and hands the training
    code its columns (`speaker_codes`, `paths`) without any per-utterance object.
    """

    def __init__(self, ids: StringColumn, paths: PathColumn, speaker_codes: np.ndarray,
                 speaker_names: list[str]) -> None:
        self.ids, self.paths, self.speaker_codes, self.speaker_names = ids, paths, speaker_codes, speaker_names

    def __len__(self) -> int:
        return len(self.ids)

    def _at(self, i: int) -> Utterance:
        return Utterance(self.ids[i], self.speaker_names[int(self.speaker_codes[i])], self.paths[i])

    def take(self, indices: np.ndarray) -> UtteranceTable:
        """The utterances at `indices` (speaker codes keep meaning the same names)."""
        indices = np.asarray(indices, dtype=np.int64)
        return UtteranceTable(self.ids.take(indices), self.paths.take(indices), self.speaker_codes[indices],
                              self.speaker_names)


# ----------------------------------------------------------------------------------------------- columns of a file


@dataclass
class _Columns:
    """Two-column lines of a file: the 1-based line numbers, each column's bytes, and the second column's hashes."""

    lines: np.ndarray
    first: StringColumn | _Speakers
    second: StringColumn | _Speakers


@dataclass
class _Speakers:
    """A column of speaker names as read: first-seen codes per line and the table that interned them."""

    codes: np.ndarray
    index: IdIndex

    def sorted_codes(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """int32 codes into the sorted distinct names (of the given rows), and those names."""
        names = self.index.strings().tolist()
        codes = self.codes if rows is None else self.codes[rows]
        used = np.arange(len(names)) if rows is None else np.unique(codes)  # utt2spk may name more speakers
        order = np.argsort(np.array([names[u] for u in used], dtype=object), kind="stable")
        rank = np.full(len(names), -1, dtype=np.int32)
        rank[used[order]] = np.arange(len(used), dtype=np.int32)
        return rank[codes], [names[u] for u in used[order]]


def _two_columns(path: Path, kind: str, hint: str, problem: str, pipes: bool = False, speaker_column: int = 0
                 ) -> tuple[_Columns, ListFormatError | None]:
    """The kept lines of `path` up to the first that does not have exactly two fields (`problem` names them in
    the message), and that line's error, not raised: a duplicate id before it is reported first, as the
    line-by-line reader would."""
    lines, columns, error = [], ([], []), None
    speakers = IdIndex() if speaker_column else None
    for f in read_fields(path, kind, hint):
        good, error = _two_fields(path, f, problem, pipes)
        lines.append(f.line_no[:good])
        for c, out in enumerate(columns):
            field = f.field(c)[:good]
            # the speakers' column is interned as read (few distinct names): no 10 M-string copy to intern later
            out.append(speakers.add(f.buf, f.starts[field], f.ends[field]) if speaker_column == c + 1
                       else f.strings(field))
        if error is not None:
            break
    if not lines:
        return _Columns(np.zeros(0, np.int64), StringColumn.from_strings([]), StringColumn.from_strings([])), None
    first, second = (_Speakers(np.concatenate(parts), speakers) if speaker_column == c + 1
                     else StringColumn.concat(parts) for c, parts in enumerate(columns))
    return _Columns(np.concatenate(lines), first, second), error


def _two_fields(path: Path, f: Fields, problem: str, pipes: bool) -> tuple[int, ListFormatError | None]:
    """How many leading lines of the chunk have exactly two fields (and no command pipe, in wav.scp), and the error
    of the first line that does not, as the line-by-line reader worded it."""
    counts = f.counts
    last = f.first + counts - 1
    bad = counts != 2
    if pipes:
        end = f.ends[last]
        bad |= (f.buf[end - 1] == ord("|")) | ((end - f.starts[last] == 1) & (f.buf[end - 1] == ord("-")))
    wrong = np.flatnonzero(bad)
    if not len(wrong):
        return len(counts), None
    k, text = int(wrong[0]), f.text(int(wrong[0]))
    line, fields = int(f.line_no[k]), text.split(" ")
    if pipes and (fields[-1].endswith("|") or fields[-1] == "-"):
        return k, _line_error(path, line, "command pipes are not supported, voxfast reads audio files only", text,
                              "write the command's output to a .wav/.flac file and put that path here")
    fix = _FIX_LINE if len(fields) < 2 or pipes else _FIX_LINE + "; paths cannot contain spaces"
    return k, _line_error(path, line, f"expected 2 columns {problem}, found {len(fields)}", text, fix)


def _check_unique_ids(path: Path, column: StringColumn, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refuse a repeated id (it would double-weight or override an utterance), naming the first line that repeats
    an earlier one; returns the column's hashes. One sort of the first hashes finds that there are none."""
    h1, h2 = column.hashes()
    s1 = np.sort(h1)
    if not (s1[1:] == s1[:-1]).any():
        return h1, h2
    codes = id_codes(h1, h2)
    if len(codes.h1) == len(column):
        return h1, h2
    seen_first = np.full(len(codes.h1), len(column), dtype=np.int64)
    np.minimum.at(seen_first, codes.codes, np.arange(len(column)))
    k = int(np.flatnonzero(seen_first[codes.codes] != np.arange(len(column)))[0])
    first = int(seen_first[codes.codes[k]])
    raise _line_error(path, int(lines[k]), f"duplicate id {column[k]!r} (first on line {int(lines[first])})",
                      _line_text(path, int(lines[k])))


def _line_text(path: Path, line: int) -> str:
    """The fields of physical line `line` joined by one space (for a message about it)."""
    with path.open(encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == line:
                return " ".join(raw.split())
    return ""


def speaker_codes(speakers: StringColumn) -> tuple[np.ndarray, list[str]]:
    """int32 code of each utterance's speaker in the sorted list of distinct names (ids independent of list order,
    as :func:`voxfast.data.manifest.speaker_index`); interned by hash in one pass, only the distinct names sorted."""
    index = IdIndex()
    return _Speakers(index.add(speakers.data, speakers.offsets[:-1], speakers.offsets[1:]), index).sorted_codes()


# ----------------------------------------------------------------------------------------------- readers


def read_voxceleb_table(path: StrPath, root: StrPath | None = None) -> UtteranceTable:
    """A VoxCeleb ``speaker relpath`` list; paths relative to `root` (default: the list's folder); the utterance id is
    the relative path as written. Errors as :func:`voxfast.data.manifest.read_voxceleb_list`."""
    path = Path(path)
    base = os.path.abspath(root if root is not None else path.parent)
    cols, error = _two_columns(path, "list file", _LIST_HINT, "'speaker path'", speaker_column=1)
    _check_unique_ids(path, cols.second, cols.lines)
    if error is not None:
        raise error
    if not len(cols.lines):
        raise VoxfastError(f"list file has no utterances: {path}; {_LIST_HINT}")
    codes, names = cols.first.sorted_codes()
    return UtteranceTable(cols.second, PathColumn(base, cols.second), codes, names)


def read_kaldi_table(directory: StrPath, root: StrPath | None = None) -> UtteranceTable:
    """A Kaldi data directory (wav.scp + utt2spk) in wav.scp order; relative wav.scp paths resolved against `root`
    (default: the current directory). Errors as :func:`voxfast.data.manifest.read_kaldi_dir`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VoxfastError(f"Kaldi data directory not found: {directory}; pass a folder holding wav.scp and utt2spk")
    base = os.path.abspath(root if root is not None else os.curdir)
    wav, wav_hashes = _unique_two_columns(directory / "wav.scp", "wav.scp", "'utterance path'", pipes=True)
    if not len(wav.lines):
        raise VoxfastError(f"wav.scp has no utterances: {directory / 'wav.scp'}; {_LIST_HINT}")
    spk, spk_hashes = _unique_two_columns(directory / "utt2spk", "utt2spk", "'utterance speaker'", speaker_column=2)
    found = _rows_of(spk_hashes, wav_hashes)
    missing = np.flatnonzero(found < 0)
    if len(missing):
        first = ", ".join(repr(wav.first[int(i)]) for i in missing[:5])
        raise ListFormatError(
            f"{directory / 'utt2spk'}: {len(missing)} utterance(s) from wav.scp have no speaker, first: {first} "
            "(add them to utt2spk or remove them from wav.scp, e.g. with Kaldi's utils/fix_data_dir.sh)")
    same_order = len(found) == len(spk.lines) and bool((found == np.arange(len(found))).all())
    codes, names = spk.second.sorted_codes(None if same_order else found)
    return UtteranceTable(wav.first, PathColumn(base, wav.second), codes, names)


def _unique_two_columns(path: Path, kind: str, problem: str, pipes: bool = False, speaker_column: int = 0
                        ) -> tuple[_Columns, tuple[np.ndarray, np.ndarray]]:
    """A Kaldi file's two columns, refusing the first malformed line or repeated utterance id; with the ids'
    hashes."""
    cols, error = _two_columns(path, kind, _KALDI_HINT, problem, pipes, speaker_column)
    hashes = _check_unique_ids(path, cols.first, cols.lines)
    if error is not None:
        raise error
    return cols, hashes


def _rows_of(table: tuple[np.ndarray, np.ndarray], ids: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Row in `table` (unique ids' hashes) of each id, -1 where missing. Kaldi's utt2spk usually lists wav.scp's
    utterances in the same order (utils/fix_data_dir.sh sorts both): then no lookup is needed."""
    if len(table[0]) == len(ids[0]) and (table[0] == ids[0]).all() and (table[1] == ids[1]).all():
        return np.arange(len(ids[0]), dtype=np.int64)
    if not len(table[0]):
        return np.full(len(ids[0]), -1, dtype=np.int64)
    codes = id_codes(*table)
    row_of_code = np.empty(len(codes.h1), dtype=np.int64)
    row_of_code[codes.codes] = np.arange(len(table[0]))
    found = lookup_codes(codes, *ids)
    return np.where(found >= 0, row_of_code[np.maximum(found, 0)], -1)


def table_of(utts: Sequence[Any]) -> UtteranceTable:
    """`utts` as an UtteranceTable: itself if it is one, else built from Utterance-like objects (absolute paths)."""
    if isinstance(utts, UtteranceTable):
        return utts
    ids = StringColumn.from_strings(u.utt for u in utts)
    codes, names = speaker_codes(StringColumn.from_strings(u.spk for u in utts))
    return UtteranceTable(ids, PathColumn("/", StringColumn.from_strings(u.path for u in utts)), codes, names)


def positions_in(table: UtteranceTable, ids: StringColumn) -> np.ndarray:
    """Row of each of `ids` in `table`, -1 where the table lacks it (hash lookup, no per-id Python work)."""
    return _rows_of(table.ids.hashes(), ids.hashes())


__all__ = ["PathColumn", "UtteranceTable", "positions_in", "read_kaldi_table", "read_voxceleb_table", "speaker_codes",
           "table_of"]
