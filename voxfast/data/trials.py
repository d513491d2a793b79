"""Trial lists and score files as columns: integer id codes, int8 labels and line numbers instead of objects.

`voxfast eval` of ten million trials spent 45 s and 5.8 GB building one tuple per line, a dict of pairs and
another per score line; the metrics themselves take 0.04 s. Here a file is cut into fields by
:func:`voxfast.columns.read_fields` (the line readers' exact line rules), each chunk is checked with array
operations, ids are interned through a hash table of their two 64-bit hashes (each distinct id's bytes kept once,
in a :class:`~voxfast.columns.StringColumn`), and every trial is two int32 codes, an int8 label and its line number.

The tables keep the old list interface (``len``, iteration and indexing yield :class:`Trial` objects or
``(enroll, test)`` tuples, built lazily), so callers that loop over a small list are unchanged; the columns are
for the callers that must not loop. Error messages are those of the line-by-line readers: the offending line is
found with a vectorised test, and only that line's message is built in Python.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from voxfast.columns import ColumnSequence, Fields, StringColumn, hash_fields, read_fields
from voxfast.data.manifest import (
    _KALDI,
    _TRIAL_HINT,
    _UNLABELLED,
    _VOXCELEB,
    Trial,
    _detect_format,
    _line_error,
    _mismatch_problem,
)
from voxfast.errors import VoxfastError

__all__ = [
    "IdIndex",
    "PairTable",
    "TrialTable",
    "format_scores_6f",
    "pair_keys",
    "parse_floats",
    "parse_scores",
    "parse_trials",
    "score_bytes",
    "sorted_with_order",
    "suspect_tokens",
]

StrPath = str | os.PathLike[str]
_SCORE_HINT = "run scoring first or pass an existing score file"
UNLABELLED = -1  # TrialTable.labels of an unlabelled list


# ----------------------------------------------------------------------------------------------- the tables


class _Pairs(ColumnSequence[Any]):
    """(enroll, test) pairs as int32 codes into `ids` (the distinct ids, each once), with the 1-based physical
    line each pair was read from (0 for pairs not read from a file)."""

    __slots__ = ("_sorted", "enroll", "ids", "line_no", "path", "test")

    def __init__(self, ids: StringColumn, enroll: np.ndarray, test: np.ndarray, line_no: np.ndarray | None = None,
                 path: StrPath | None = None) -> None:
        self.ids, self.enroll, self.test = ids, enroll, test
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self.line_no = np.zeros(len(enroll), np.int32) if line_no is None else line_no
        self.path = path

    def __len__(self) -> int:
        return len(self.enroll)

    def _at(self, i: int) -> Any:
        return self._item(self.ids[self.enroll[i]], self.ids[self.test[i]], i)

    def __iter__(self) -> Iterator[Any]:
        ids = self.ids.tolist()  # decoded once, not once per use
        for k, (e, t) in enumerate(zip(self.enroll.tolist(), self.test.tolist(), strict=True)):
            yield self._item(ids[e], ids[t], k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} pairs, {len(self.ids)} ids, from {self.path})"

    def _item(self, enroll: str, test: str, k: int) -> Any:
        raise NotImplementedError

    def pair(self, i: int) -> tuple[str, str]:
        return self.ids[self.enroll[i]], self.ids[self.test[i]]

    def pair_keys(self) -> np.ndarray:
        """One int64 per pair, equal for equal pairs: enroll * len(ids) + test."""
        return pair_keys(self.enroll, self.test, len(self.ids))

    def sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`sorted_with_order` of the pair keys, kept from reading where the reader sorted them already."""
        if self._sorted is None:
            self._sorted = sorted_with_order(self.pair_keys())
        return self._sorted


class PairTable(_Pairs):
    """The (enroll, test) pairs of a score file; items are ``(enroll, test)`` tuples, as read_scores gave."""

    __slots__ = ()

    def _item(self, enroll: str, test: str, k: int) -> tuple[str, str]:
        return enroll, test

    @classmethod
    def from_pairs(cls, pairs: Sequence[Trial | tuple[str, str]]) -> PairTable:
        """A table of Trial objects or (enroll, test) tuples (a Python loop: for lists that are lists already)."""
        if isinstance(pairs, _Pairs):
            return cls(pairs.ids, pairs.enroll, pairs.test, pairs.line_no, pairs.path)
        ids, e, t = _intern_pairs((p.enroll, p.test) if isinstance(p, Trial) else (p[0], p[1]) for p in pairs)
        return cls(ids, e, t)


class TrialTable(_Pairs):
    """A trial list: `enroll`, `test` (int32 codes into the StringColumn `ids`), `labels` (int8: 1 target, 0
    non-target, -1 for every trial of an unlabelled list) and `line_no` (1-based line of each trial, int32 where it
    fits). Items are :class:`Trial` objects, made when asked for."""

    __slots__ = ("labels",)

    def __init__(self, ids: StringColumn, enroll: np.ndarray, test: np.ndarray, labels: np.ndarray,
                 line_no: np.ndarray | None = None, path: StrPath | None = None) -> None:
        super().__init__(ids, enroll, test, line_no, path)
        self.labels = labels

    def _item(self, enroll: str, test: str, k: int) -> Trial:
        label = int(self.labels[k])
        return Trial(enroll, test, None if label == UNLABELLED else label)

    @property
    def labelled(self) -> bool:
        """Whether the trials have labels (a list has one format: all of them or none)."""
        return bool(len(self.labels)) and bool(self.labels[0] != UNLABELLED)

    @classmethod
    def from_trials(cls, trials: Sequence[Trial]) -> TrialTable:
        """A table of Trial objects (a Python loop: for lists that are lists already)."""
        if isinstance(trials, TrialTable):
            return trials
        ids, e, t = _intern_pairs((tr.enroll, tr.test) for tr in trials)
        labels = np.fromiter((UNLABELLED if tr.label is None else tr.label for tr in trials), np.int8, len(trials))
        return cls(ids, e, t, labels)


def _intern_pairs(pairs: Iterator[tuple[str, str]] | Any) -> tuple[StringColumn, np.ndarray, np.ndarray]:
    """Distinct ids (first-seen order) and the int32 codes of each pair's two ids."""
    index: dict[str, int] = {}
    codes = [index.setdefault(u, len(index)) for pair in pairs for u in pair]
    flat = np.asarray(codes, dtype=np.int32)
    return StringColumn.from_strings(index), flat[0::2].copy(), flat[1::2].copy()


# ----------------------------------------------------------------------------------------------- interning ids


class IdIndex:
    """Distinct strings in first-seen order (codes 0, 1, ...), interned through an open-addressing hash table in
    numba, keyed by the two 64-bit hashes of :func:`~voxfast.columns.hash_fields` (distinct strings collide in both
    with probability ~2^-128 per pair, the matching rule of voxfast.columns); each distinct string's bytes are kept
    once.

    Interning per chunk by sorting (:func:`voxfast.columns.id_codes`) costs ~75 ms per 8 MiB chunk of trials, 5 s
    for ten million. A probe here is one cache miss: a slot's h1, h2 and code + 1 (0: empty) lie in one 32-byte
    row of a table kept 1/4 to 1/2 full. Confirming a hit by comparing bytes was tried: two more dependent misses
    (the offsets, then the bytes) made a probe ~8x slower.
    """

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.table = np.zeros((capacity, 4), np.uint64)
        self.data = np.empty(1 << 16, np.uint8)  # the distinct strings' bytes, data[:size] used
        self.offsets = np.zeros(capacity // 2 + 1, np.int64)  # string c is data[offsets[c]:offsets[c + 1]]
        self.count = self.size = 0

    def add(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Codes (int32) of the strings buf[starts:ends], giving new ones the next codes."""
        if int((ends - starts).sum()) + self.size > len(self.data):
            self.data = _grown(self.data, self.size + int((ends - starts).sum()))
        codes = np.empty(len(starts), np.int32)
        h1, h2 = hash_fields(buf, starts, ends)
        done = 0
        while done < len(h1):  # in pieces that cannot fill the table past half
            room = len(self.table) // 2 - self.count
            if room < max(1, min(len(h1) - done, len(self.table) // 8)):
                self._grow()
                continue
            piece = slice(done, done + room)
            self.count, self.size = _intern(h1[piece], h2[piece], buf, starts[piece], ends[piece], self.table,
                                            self.data, self.offsets, self.count, self.size, codes[piece])
            done += len(h1[piece])
        return codes

    def find(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Codes (int32) of the strings buf[starts:ends], -1 for those never added."""
        codes = np.empty(len(starts), np.int32)
        _find(*hash_fields(buf, starts, ends), self.table, codes)
        return codes

    def strings(self) -> StringColumn:
        """Every distinct string, in code order."""
        return StringColumn(self.data[:self.size].copy(), self.offsets[:self.count + 1].copy())

    def _grow(self) -> None:
        grown = np.zeros((2 * len(self.table), 4), np.uint64)
        _rehash(self.table, grown)
        self.table = grown
        self.offsets = _grown(self.offsets, len(grown) // 2 + 1)


def _grown(array: np.ndarray, need: int) -> np.ndarray:
    out = np.empty(max(need, 2 * len(array)), array.dtype)
    out[:len(array)] = array
    return out


@numba.njit(cache=True)
def _intern(h1: np.ndarray, h2: np.ndarray, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
            table: np.ndarray, data: np.ndarray, offsets: np.ndarray, count: int, size: int, codes: np.ndarray
            ) -> tuple[int, int]:
    """Linear probing from h1's low bits (h1 is a mixed hash: its low bits are uniform); a new string's bytes are
    appended to data (room reserved by the caller)."""
    mask = len(table) - 1
    for i in range(len(h1)):
        a, b = h1[i], h2[i]
        s = np.int64(a & np.uint64(mask))
        while True:
            c = np.int64(table[s, 2]) - 1
            if c < 0:
                table[s, 0], table[s, 1], table[s, 2] = a, b, np.uint64(count + 1)
                lo, hi = starts[i], ends[i]
                data[size:size + hi - lo] = buf[lo:hi]
                size += hi - lo
                offsets[count + 1] = size
                codes[i] = count
                count += 1
                break
            if table[s, 0] == a and table[s, 1] == b:
                codes[i] = c
                break
            s = (s + 1) & mask
    return count, size


@numba.njit(cache=True)
def _find(h1: np.ndarray, h2: np.ndarray, table: np.ndarray, codes: np.ndarray) -> None:
    mask = len(table) - 1
    for i in range(len(h1)):
        a, b = h1[i], h2[i]
        s = np.int64(a & np.uint64(mask))
        codes[i] = -1
        while table[s, 2] != 0:
            if table[s, 0] == a and table[s, 1] == b:
                codes[i] = np.int64(table[s, 2]) - 1
                break
            s = (s + 1) & mask


@numba.njit(cache=True)
def _rehash(table: np.ndarray, grown: np.ndarray) -> None:
    mask = len(grown) - 1
    for j in range(len(table)):
        if table[j, 2] == 0:
            continue
        s = np.int64(table[j, 0] & np.uint64(mask))
        while grown[s, 2] != 0:
            s = (s + 1) & mask
        grown[s] = table[j]


def _compact_lines(parts: list[np.ndarray]) -> np.ndarray:
    """Line numbers as int32 where they fit (below two billion lines: each chunk's part was cut to int32 by
    :func:`_line_part` then), else int64."""
    if parts and any(p.dtype == np.int64 for p in parts):
        return np.concatenate([p.astype(np.int64) for p in parts])
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _line_part(line_no: np.ndarray) -> np.ndarray:
    return line_no.astype(np.int32) if not len(line_no) or line_no[-1] < 2**31 else line_no


@numba.njit(cache=True)
def pair_keys(enroll: np.ndarray, test: np.ndarray, n_ids: int) -> np.ndarray:
    """enroll * n_ids + test as int64, -1 where either code is -1 (an id the other table lacks)."""
    out = np.empty(len(enroll), np.int64)
    for k in range(len(enroll)):
        e, t = enroll[k], test[k]
        out[k] = -1 if e < 0 or t < 0 else np.int64(e) * n_ids + t
    return out


# ----------------------------------------------------------------------------------------------- field tests


def _field_is(fields: Fields, index: np.ndarray, words: Sequence[bytes]) -> np.ndarray:
    """Whether field `index[k]` (global field indices) is one of `words`, compared byte for byte."""
    out = np.zeros(len(index), dtype=bool)
    for word in words:
        _or_equal(fields.buf, fields.starts, fields.ends, index, np.frombuffer(word, np.uint8), out)
    return out


@numba.njit(cache=True)
def _or_equal(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, index: np.ndarray, word: np.ndarray,
              out: np.ndarray) -> None:
    """out[k] |= (field index[k] == word)."""
    n = len(word)
    for k in range(len(index)):
        lo = starts[index[k]]
        if out[k] or ends[index[k]] - lo != n:
            continue
        same = True
        for j in range(n):
            if buf[lo + j] != word[j]:
                same = False
                break
        out[k] = same


def _fits(fields: Fields, fmt: str) -> np.ndarray:
    """Per kept line: whether it fits the trial format (the vectorised form of manifest._matches)."""
    counts = fields.counts
    if fmt == _UNLABELLED:
        return counts == 2
    three = counts == 3
    if fmt == _VOXCELEB:
        return three & _field_is(fields, np.where(three, fields.first, 0), (b"0", b"1"))
    return three & _field_is(fields, np.where(three, fields.first + 2, 0), (b"target", b"nontarget"))


def _labels(fields: Fields, fmt: str, n: int) -> np.ndarray:
    """int8 label of the first n kept lines, which fit `fmt`."""
    if fmt == _VOXCELEB:
        return (fields.buf[fields.starts[fields.first[:n]]] - ord("0")).astype(np.int8)
    if fmt == _KALDI:
        f = fields.first[:n] + 2
        return (fields.ends[f] - fields.starts[f] == len("target")).astype(np.int8)
    return np.full(n, UNLABELLED, np.int8)


def _line_text(fields: Fields, k: int) -> tuple[str, list[str]]:
    text = fields.text(k)
    return text, text.split()


# ----------------------------------------------------------------------------------------------- trial lists


@dataclass
class _TrialParts:
    """What the chunks of a trial list have given so far."""

    enroll: list[np.ndarray]
    test: list[np.ndarray]
    labels: list[np.ndarray]
    lines: list[np.ndarray]


def parse_trials(path: StrPath) -> tuple[TrialTable, list[str], int]:
    """The distinct trials of a trial list in file order, the ``line (= first line)`` of each exact repeat
    (in file order, the first 20) and the number of repeats. See :func:`voxfast.data.manifest.read_trials`.

    The first line that breaks the format fails as in the line-by-line reader, unless a pair with two labels comes
    before it: both are found from what precedes the bad line, so the message names the first bad line either way.
    """
    path = Path(path)
    fmt, first_line, pending = "", 0, None
    index, parts = IdIndex(), _TrialParts([], [], [], [])
    for fields in read_fields(path, "trial file", _TRIAL_HINT):
        if not len(fields.line_no):
            continue
        if not fmt:
            fmt, first_line = _detect_format(path, int(fields.line_no[0]), _line_text(fields, 0)[1]), \
                int(fields.line_no[0])
        bad = np.flatnonzero(~_fits(fields, fmt))
        n = int(bad[0]) if bad.size else len(fields.line_no)
        _add_trials(fields, fmt, n, index, parts)
        if bad.size:
            text, words = _line_text(fields, n)
            problem, fix = _mismatch_problem(words, fmt, first_line)
            pending = _line_error(path, int(fields.line_no[n]), problem, text, fix)
            break
    table = TrialTable(index.strings(), _cat(parts.enroll, np.int32), _cat(parts.test, np.int32),
                       _cat(parts.labels, np.int8), _compact_lines(parts.lines), path)
    table, repeats, n_repeats = _drop_repeats(table, fmt)
    if pending is not None:
        raise pending
    if not len(table):
        raise VoxfastError(f"trial file has no trials: {path}; {_TRIAL_HINT}")
    return table, repeats, n_repeats


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _add_trials(fields: Fields, fmt: str, n: int, index: IdIndex, parts: _TrialParts) -> None:
    """Intern the ids of the first n kept lines of a chunk (which fit `fmt`) and keep their columns."""
    if n == 0:
        return
    enroll = fields.first[:n] + (1 if fmt == _VOXCELEB else 0)
    both = np.empty(2 * n, np.int64)
    both[0::2], both[1::2] = enroll, enroll + 1  # interleaved: codes follow the ids' first appearance in the file
    codes = index.add(fields.buf, fields.starts[both], fields.ends[both])
    parts.enroll.append(codes[0::2].copy())
    parts.test.append(codes[1::2].copy())
    parts.labels.append(_labels(fields, fmt, n))
    parts.lines.append(_line_part(fields.line_no[:n]))


def sorted_with_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`keys` sorted and the stable order that sorts them (equal keys keep their input order).

    When key and position fit in 63 bits together, they are packed into one int64 and sorted in place with
    np.sort (several times faster than np.argsort: 1.2 s for ten million) and unpacked in place (numba), stable by
    construction and without the temporaries of the numpy expressions.
    """
    n = len(keys)
    if n == 0:
        return keys.astype(np.int64), np.zeros(0, np.int64)
    top = int(keys.max())
    bits = max(1, (n - 1).bit_length())
    if int(keys.min()) >= 0 and top.bit_length() + bits <= 63:
        packed = _pack(keys, bits)
        packed.sort()
        return packed, _unpack(packed, bits)
    order = np.argsort(keys, kind="stable")
    return keys[order], order


@numba.njit(cache=True)
def _pack(keys: np.ndarray, bits: int) -> np.ndarray:
    out = np.empty(len(keys), np.int64)
    for k in range(len(keys)):
        out[k] = (np.int64(keys[k]) << bits) | k
    return out


@numba.njit(cache=True)
def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """The positions in the low bits, returned; the keys left in `packed` (in place)."""
    order = np.empty(len(packed), np.int64)
    mask = (np.int64(1) << bits) - 1
    for k in range(len(packed)):
        order[k] = packed[k] & mask
        packed[k] >>= bits
    return order


def _drop_repeats(table: TrialTable, fmt: str) -> tuple[TrialTable, list[str], int]:
    """Exact repeats of a pair dropped (a trial must not weigh twice in the EER); a pair with two labels raises,
    at the first line in the file that contradicts the pair's first line."""
    keys, order = table.sorted_keys()
    later = np.flatnonzero(keys[1:] == keys[:-1]) + 1  # sorted positions of second, third... occurrences
    if not later.size:
        return table, [], 0
    run_start = np.maximum.accumulate(np.where(np.r_[True, keys[1:] != keys[:-1]], np.arange(len(keys)), 0))
    repeat, first = order[later], order[run_start[later]]
    by_line = np.argsort(repeat)
    repeat, first = repeat[by_line], first[by_line]
    clash = np.flatnonzero(table.labels[repeat] != table.labels[first])
    if clash.size:
        r, f = int(repeat[clash[0]]), int(first[clash[0]])
        problem = (f"this pair has label {int(table.labels[r])} here and {int(table.labels[f])} on line "
                   f"{int(table.line_no[f])}")
        raise _line_error(table.path or "", int(table.line_no[r]), problem, _trial_text(table, r, fmt),
                          "keep the right one and delete the other")
    shown = [f"{table.line_no[r]} (= {table.line_no[f]})" for r, f in zip(repeat[:20], first[:20], strict=True)]
    keep = np.ones(len(table), dtype=bool)
    keep[repeat] = False
    kept = TrialTable(table.ids, table.enroll[keep], table.test[keep], table.labels[keep], table.line_no[keep],
                      table.path)
    first_of_key = np.ones(len(keys), dtype=bool)
    first_of_key[later] = False  # the sorted keys of the kept trials, and their new positions
    kept._sorted = keys[first_of_key], (np.cumsum(keep) - 1)[order[first_of_key]]
    return kept, shown, len(repeat)


def _trial_text(table: TrialTable, k: int, fmt: str) -> str:
    """Trial k's line as the readers quote it: a line that fits its format is determined by the trial."""
    enroll, test = table.pair(k)
    label = int(table.labels[k])
    if fmt == _VOXCELEB:
        return f"{label} {enroll} {test}"
    if fmt == _KALDI:
        return f"{enroll} {test} {'target' if label else 'nontarget'}"
    return f"{enroll} {test}"


# ----------------------------------------------------------------------------------------------- score files


def parse_scores(path: StrPath) -> tuple[PairTable, np.ndarray]:
    """The pairs of a score file and their float64 scores; see :func:`voxfast.data.manifest.read_scores`."""
    path = Path(path)
    index = IdIndex()
    enroll, test, values, lines = [], [], [], []
    for fields in read_fields(path, "score file", _SCORE_HINT):
        if not len(fields.line_no):
            continue
        n, chunk_values, error = _chunk_scores(path, fields)
        if n:
            both = np.empty(2 * n, np.int64)
            both[0::2], both[1::2] = fields.first[:n], fields.first[:n] + 1
            codes = index.add(fields.buf, fields.starts[both], fields.ends[both])
            enroll.append(codes[0::2].copy())
            test.append(codes[1::2].copy())
            values.append(chunk_values)
            lines.append(_line_part(fields.line_no[:n]))
        if error is not None:
            raise error
    if not values:
        raise VoxfastError(f"score file has no scores: {path}; {_SCORE_HINT}")
    pairs = PairTable(index.strings(), _cat(enroll, np.int32), _cat(test, np.int32), _compact_lines(lines), path)
    return pairs, np.concatenate(values)


def _chunk_scores(path: Path, fields: Fields) -> tuple[int, np.ndarray, Exception | None]:
    """(lines before the first bad one, their scores, that line's error or None) of one chunk."""
    counts = fields.counts
    score_field = np.where(counts == 3, fields.first + 2, 0)
    values, parsed = parse_floats(fields.buf, fields.starts[score_field], fields.ends[score_field])
    bad = (counts != 3) | ~parsed | ~np.isfinite(values)
    if not bad.any():
        return len(counts), values, None
    k = int(np.argmax(bad))
    text, words = _line_text(fields, k)
    if len(words) != 3:
        error = _line_error(path, int(fields.line_no[k]), f"expected 3 columns 'enroll test score', found "
                            f"{len(words)}", text)
    elif not parsed[k]:
        error = _line_error(path, int(fields.line_no[k]), f"score is not a number: {words[2]!r}", text)
    else:  # a NaN sorts anywhere: the EER would depend on where it landed
        error = _line_error(path, int(fields.line_no[k]), f"score is not finite: {words[2]!r}", text,
                            "rescore: the model or the embeddings produced a non-finite value")
    return k, values[:k], error


def parse_floats(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each field as Python's float() reads it, and whether it read.

    Plain decimals (``-0.123456``, ``12``, ``.5``) of at most 15 significant digits and no exponent are read in
    numba as digits / 10**k: both are exact doubles, so the one IEEE division is correctly rounded, which is what
    float() returns (Clinger's fast path). Every other field (exponents, long mantissas, ``1_000``, ``inf``,
    non-ASCII digits) goes to float() itself, so what is accepted and its value are float()'s in every case.
    """
    values = np.empty(len(starts), np.float64)
    fast = np.empty(len(starts), dtype=bool)
    _parse_plain_decimals(buf, starts, ends, _POW10, values, fast)
    parsed = fast.copy()
    for k in np.flatnonzero(~fast).tolist():
        try:
            values[k] = float(bytes(buf[starts[k]:ends[k]]).decode("utf-8"))
            parsed[k] = True
        except ValueError:
            values[k] = math.nan
    return values, parsed


_POW10 = np.array([10.0**k for k in range(23)])  # exact doubles up to 1e22


@numba.njit(cache=True)
def _parse_plain_decimals(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, pow10: np.ndarray,
                          values: np.ndarray, ok: np.ndarray) -> None:
    """``[+-]digits[.digits]`` with 1 to 15 significant digits and at most 22 decimals: value and ok; else not ok."""
    for k in range(len(starts)):
        i, end = starts[k], ends[k]
        negative = i < end and buf[i] == 0x2D
        if i < end and (buf[i] == 0x2D or buf[i] == 0x2B):
            i += 1
        mantissa, significant, n_digits, decimals, seen_dot, good = 0, 0, 0, 0, False, True
        while i < end and good:
            b = buf[i]
            if 0x30 <= b <= 0x39:
                n_digits += 1
                if mantissa > 0 or b != 0x30:
                    significant += 1
                mantissa = mantissa * 10 + (b - 0x30)
                decimals += 1 if seen_dot else 0
                good = significant <= 15
            elif b == 0x2E and not seen_dot:
                seen_dot = True
            else:
                good = False
            i += 1
        ok[k] = good and n_digits > 0 and decimals <= 22
        value = mantissa / pow10[decimals] if ok[k] else 0.0
        values[k] = -value if negative else value


# ----------------------------------------------------------------------------------------------- writing scores

_WRITE_ROWS = 1 << 20  # lines formatted per block: ~70 MB of text at most in memory
_FAST_LIMIT = 1e9  # |score| below this: integer part and 6 decimals fit an int64 with room to spare


def score_bytes(pairs: _Pairs, scores: np.ndarray, rows_per_block: int = _WRITE_ROWS) -> Iterator[memoryview]:
    """The ``enroll test score`` lines of a score file, in blocks of bytes; the score as f"{score:.6f}" formats it.

    Scores at or above 1e9 in magnitude, NaN and inf (none of which cosine scoring gives) are formatted by Python
    and spliced in; the rest by :func:`format_scores_6f`'s exact rounding in numba.
    """
    scores = np.asarray(scores, dtype=np.float64)
    for lo in range(0, len(scores), rows_per_block):
        block = scores[lo:lo + rows_per_block]
        text = format_scores_6f(block)
        lines = _join_lines(pairs.ids.data, pairs.ids.offsets, pairs.enroll[lo:lo + rows_per_block],
                            pairs.test[lo:lo + rows_per_block], text.data, text.offsets)
        yield memoryview(lines)  # written as it is: no copy into a bytes object


def format_scores_6f(scores: np.ndarray) -> StringColumn:
    """f"{x:.6f}" of every score, as a StringColumn (numba, exact; Python for the few it does not cover)."""
    scores = np.asarray(scores, dtype=np.float64)
    special = np.flatnonzero(~(np.abs(scores) < _FAST_LIMIT))  # NaN fails the comparison too
    lengths = np.empty(len(scores), np.int64)
    digits = np.empty(len(scores), np.int64)
    _fixed6_digits(scores, digits, lengths)
    python = [f"{float(scores[k]):.6f}".encode() for k in special.tolist()]
    lengths[special] = [len(p) for p in python]
    offsets = np.zeros(len(scores) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.empty(int(offsets[-1]), np.uint8)
    _write_fixed6(scores, digits, offsets, data)
    for k, text in zip(special.tolist(), python, strict=True):
        data[offsets[k]:offsets[k + 1]] = np.frombuffer(text, np.uint8)
    return StringColumn(data, offsets)


@numba.njit(cache=True)
def _round_millionths(a: float) -> int:
    """round(a * 1e6) for 0 <= a < 1e9, rounding the exact product half to even, as Python's formatting does.

    p = fl(a * 1e6) may be off by half an ulp; Dekker's two-product gives the exact error e (a * 1e6 = p + e
    exactly, no FMA needed), and p - floor(p) is exact and a multiple of ulp(p), so it differs from 0.5 by at least
    ulp(p) > |e| unless it equals 0.5: only then does e (its sign, or zero for a true tie) decide.
    """
    p = a * 1e6
    c = 134217729.0 * a  # Dekker's split: a = hi + lo, each with at most 26 significant bits
    hi = c - (c - a)
    lo = a - hi
    err = (hi * 1e6 - p) + lo * 1e6  # 1e6 has 14 significant bits: both products are exact
    q = math.floor(p)
    d = p - q
    r = int(q)
    if d > 0.5 or (d == 0.5 and (err > 0 or (err == 0 and r % 2 == 1))):
        r += 1
    return r


@numba.njit(cache=True)
def _fixed6_digits(scores: np.ndarray, digits: np.ndarray, lengths: np.ndarray) -> None:
    """Rounded millionths of |score| and the length of its text (sign, integer digits, '.', 6 decimals)."""
    for k in range(len(scores)):
        x = scores[k]
        if not abs(x) < 1e9:
            digits[k], lengths[k] = 0, 0
            continue
        r = _round_millionths(abs(x))
        whole, n = r // 1000000, 1
        while whole >= 10:
            whole //= 10
            n += 1
        digits[k] = r
        lengths[k] = n + 7 + (1 if math.copysign(1.0, x) < 0 else 0)  # Python keeps the sign of -0.0 and -1e-9


@numba.njit(cache=True)
def _write_fixed6(scores: np.ndarray, digits: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    for k in range(len(scores)):
        if not abs(scores[k]) < 1e9:
            continue
        lo, hi = offsets[k], offsets[k + 1]
        if math.copysign(1.0, scores[k]) < 0:
            out[lo] = 0x2D
        r = digits[k]
        for j in range(6):  # decimals, from the right
            out[hi - 1 - j] = 0x30 + r % 10
            r //= 10
        out[hi - 7] = 0x2E
        i = hi - 8
        while True:  # integer part, at least one digit
            out[i] = 0x30 + r % 10
            r //= 10
            i -= 1
            if r == 0:
                break


@numba.njit(cache=True, parallel=True)
def _join_lines(id_data: np.ndarray, id_off: np.ndarray, enroll: np.ndarray, test: np.ndarray,
                score_data: np.ndarray, score_off: np.ndarray) -> np.ndarray:
    """``enroll test score\\n`` for every row, as one byte array: each line's offset first (a prefix sum), then
    the lines written independently (prange).

    The ids of a line lie at random places of the id bytes (5.8 MB for 200 k ids), so each line waits on cache
    misses. Written at precomputed offsets, lines do not depend on each other and their misses overlap, even on one
    core (a serial loop carrying the output position took 0.5 s per million lines here, 0.12 s with the ids in file
    order).
    """
    n_rows = len(enroll)
    starts = np.empty(n_rows + 1, np.int64)
    starts[0] = 0
    for k in range(n_rows):
        e, t = enroll[k], test[k]
        starts[k + 1] = starts[k] + (id_off[e + 1] - id_off[e] + id_off[t + 1] - id_off[t] + score_off[k + 1]
                                     - score_off[k] + 3)
    out = np.empty(starts[n_rows], np.uint8)
    for k in numba.prange(n_rows):
        i = starts[k]
        for j in range(id_off[enroll[k]], id_off[enroll[k] + 1]):
            out[i] = id_data[j]
            i += 1
        out[i] = 0x20
        i += 1
        for j in range(id_off[test[k]], id_off[test[k] + 1]):
            out[i] = id_data[j]
            i += 1
        out[i] = 0x20
        i += 1
        for j in range(score_off[k], score_off[k + 1]):
            out[i] = score_data[j]
            i += 1
        out[i] = 0x0A
    return out


_SUSPECT = np.zeros(256, dtype=bool)  # bytes of the characters str.isspace() accepts: ASCII, and UTF-8 lead bytes
_SUSPECT[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0xC2, 0xE1, 0xE2, 0xE3]] = True


def suspect_tokens(column: StringColumn) -> np.ndarray:
    """Per string: whether it may be empty, start with # or hold whitespace (a superset of the strings that do:
    those need the exact Python test, the others none)."""
    out = np.empty(len(column), dtype=bool)
    _suspect(column.data, column.offsets, _SUSPECT, out)
    return out


@numba.njit(cache=True)
def _suspect(data: np.ndarray, offsets: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    for k in range(len(out)):
        lo, hi = offsets[k], offsets[k + 1]
        flag = hi == lo or data[lo] == 0x23
        j = lo
        while not flag and j < hi:
            flag = table[data[j]]
            j += 1
        out[k] = flag
