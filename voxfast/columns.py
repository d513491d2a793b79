"""Columnar text: whitespace-separated files read into numpy arrays, and strings held as one byte buffer.

Lists of ten million utterances or trials cannot be one Python object per line: a `str` costs ~60 B plus its list
slot, every forked DataLoader worker copies the pages it touches (reference counts are writes), and parsing line by
line in Python takes seconds per million lines. Here a file is read in large chunks and cut into fields by one numba
pass per chunk, with exactly the rules of ``for lineno, raw in enumerate(open(path, encoding="utf-8-sig")):
raw.split()``: lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (text mode's universal newlines), fields are
separated by every character ``str.split()`` treats as whitespace (ASCII and the multi-byte UTF-8 ones), line
numbers count every physical line, and a line is kept unless it is blank or its first field starts with ``#``.
So readers built on it report ``file:line:`` errors with the same numbers as the line-by-line readers.

Strings (ids, paths) become a :class:`StringColumn`: one uint8 buffer of UTF-8 bytes and int64 offsets, which forked
processes share without copying and which can be saved and memory-mapped. Matching strings (a score line to its
trial, an utterance id to its embedding) goes through :func:`hash_fields`: two independent 64-bit hashes per string,
so two different strings are taken for one only if both collide (about 1e-25 for ten million ids).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, overload

import numba
import numpy as np

from voxfast.errors import VoxfastError

__all__ = ["ColumnSequence", "Fields", "StringColumn", "hash_fields", "id_codes", "lookup_codes", "read_fields"]

CHUNK_BYTES = 1 << 23  # 8 MiB of text per tokenising pass: big enough to amortise, small enough to bound memory
_BOM = b"\xef\xbb\xbf"


# ----------------------------------------------------------------------------------------------- tokenising


_TEXT, _SPACE, _NEWLINE, _RETURN, _LEAD = 0, 1, 2, 3, 4  # byte classes of the tokeniser
# Byte classes: ASCII whitespace str.split() separates on, the two line ends, and the lead bytes of the multi-byte
# UTF-8 whitespace characters (U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[[0x09, 0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = _SPACE
_BYTE_CLASS[0x0A], _BYTE_CLASS[0x0D] = _NEWLINE, _RETURN
_BYTE_CLASS[[0xC2, 0xE1, 0xE2, 0xE3]] = _LEAD


@numba.njit(cache=True, inline="always")
def _wide_space(buf: np.ndarray, i: int) -> int:
    """Bytes of the multi-byte UTF-8 whitespace character at buf[i] (0: another character)."""
    b, n = buf[i], len(buf)
    if b == 0xC2:
        return 2 if i + 1 < n and (buf[i + 1] == 0x85 or buf[i + 1] == 0xA0) else 0
    if i + 2 >= n:
        return 0
    c, d = buf[i + 1], buf[i + 2]
    if (b == 0xE1 and c == 0x9A and d == 0x80) or (b == 0xE3 and c == 0x80 and d == 0x80):
        return 3
    if b == 0xE2 and ((c == 0x80 and (0x80 <= d <= 0x8A or d == 0xA8 or d == 0xA9 or d == 0xAF))
                      or (c == 0x81 and d == 0x9F)):
        return 3
    return 0


@numba.njit(cache=True)
def _tokenise(buf: np.ndarray, first_line: int, byte_class: np.ndarray, line_no: np.ndarray, line_first: np.ndarray,
              starts: np.ndarray, ends: np.ndarray) -> tuple[int, int, int]:
    """One pass over whole lines of text, writing each kept line's number and first field index and every kept
    field's [start, end) byte range; returns (kept lines, their fields, physical lines)."""
    n, i, line, kept, nf = len(buf), 0, first_line, 0, 0
    line_start, in_field, first_byte = 0, False, 0
    while i < n:
        b = buf[i]
        k = byte_class[b]
        width = 1 if k == _SPACE else (_wide_space(buf, i) if k == _LEAD else 0)
        if k == _TEXT or (k == _LEAD and width == 0):
            if not in_field:
                starts[nf] = i
                if nf == line_start:
                    first_byte = b
                nf += 1
                in_field = True
            i += 1
            continue
        if in_field:
            ends[nf - 1] = i
            in_field = False
        if width > 0:
            i += width
            continue
        i += 2 if (k == _RETURN and i + 1 < n and buf[i + 1] == 0x0A) else 1  # a line end
        kept, nf = _end_line(line, kept, nf, line_start, first_byte, line_no, line_first)
        line += 1
        line_start, first_byte = nf, 0
    if in_field:
        ends[nf - 1] = n
    if i > 0 and byte_class[buf[n - 1]] != _NEWLINE and byte_class[buf[n - 1]] != _RETURN:  # unterminated last line
        kept, nf = _end_line(line, kept, nf, line_start, first_byte, line_no, line_first)
        line += 1
    return kept, nf, line - first_line


@numba.njit(cache=True, inline="always")
def _end_line(line: int, kept: int, nf: int, line_start: int, first_byte: int, line_no: np.ndarray,
              line_first: np.ndarray) -> tuple[int, int]:
    """Keep the line that just ended, or drop its fields when it is blank or a # comment."""
    if nf == line_start or first_byte == 0x23:
        return kept, line_start
    line_no[kept] = line
    line_first[kept] = line_start
    return kept + 1, nf


@dataclass
class Fields:
    """The kept lines of one chunk of text: `line_no` (1-based physical line of each kept line), `first` (index of
    its first field; the line's fields are first[k] .. first[k+1]-1, the last line's up to len(starts)), and the
    [starts, ends) byte ranges of every field in `buf`."""

    buf: np.ndarray
    line_no: np.ndarray
    first: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """Fields per kept line."""
        return np.diff(np.append(self.first, len(self.starts)))

    def field(self, k: int) -> np.ndarray:
        """Field k of every line (lines must all have more than k fields): its global field index."""
        return self.first + k

    def text(self, line: int) -> str:
        """Kept line `line` as the readers quote it in messages: its fields joined by one space."""
        lo = self.first[line]
        hi = self.first[line + 1] if line + 1 < len(self.first) else len(self.starts)
        return " ".join(bytes(self.buf[self.starts[j]:self.ends[j]]).decode("utf-8") for j in range(lo, hi))

    def strings(self, field_index: np.ndarray) -> StringColumn:
        """The given fields as a StringColumn (one copy of their bytes)."""
        return StringColumn.gather(self.buf, self.starts[field_index], self.ends[field_index])


def tokenise(buf: np.ndarray, first_line: int = 1) -> tuple[Fields, int]:
    """Fields of whole lines of UTF-8 text in `buf` (uint8) whose first line is `first_line`; also the number of
    physical lines it held. One pass into arrays sized for the worst case (a field every other byte): pages that
    are never written are never allocated, and the used parts are copied out."""
    lines_max, fields_max = len(buf) + 1, len(buf) // 2 + 1
    line_no, first = np.empty(lines_max, np.int64), np.empty(lines_max, np.int64)
    starts, ends = np.empty(fields_max, np.int64), np.empty(fields_max, np.int64)
    kept, nf, lines = _tokenise(buf, first_line, _BYTE_CLASS, line_no, first, starts, ends)
    return Fields(buf, line_no[:kept].copy(), first[:kept].copy(), starts[:nf].copy(), ends[:nf].copy()), lines


def read_fields(path: str | os.PathLike[str], kind: str, hint: str, chunk_bytes: int = CHUNK_BYTES
                ) -> Iterator[Fields]:
    """The kept lines of a text file, a chunk of whole lines at a time (see the module docstring for the rules).

    Raises VoxfastError when the file is missing, a directory, or not UTF-8 (naming the byte offset).
    """
    path = Path(path)
    if path.is_dir():
        raise VoxfastError(f"{kind} is a directory, not a file: {path}; {hint}")
    if not path.is_file():
        raise VoxfastError(f"{kind} not found: {path}; {hint}")
    line, offset = 1, 0
    for buf in _line_chunks(path, chunk_bytes):
        _check_utf8(path, buf, offset, kind)
        fields, lines = tokenise(buf, line)
        line, offset = line + lines, offset + len(buf)
        yield fields


def _line_chunks(path: Path, chunk_bytes: int) -> Iterator[np.ndarray]:
    """The file's bytes in pieces that end at a line end (the last piece at the end of the file), BOM dropped."""
    carry = b""
    with path.open("rb") as f:
        first = True
        while True:
            data = f.read(chunk_bytes)
            if first:
                data, first = (data[3:] if data.startswith(_BOM) else data), False
            if not data:
                break
            data = carry + data
            cut = _last_line_end(data)
            if cut == 0:
                carry = data
                continue
            carry = data[cut:]
            yield np.frombuffer(data[:cut], dtype=np.uint8)
    if carry:
        yield np.frombuffer(carry, dtype=np.uint8)


def _last_line_end(data: bytes) -> int:
    """Length of the longest prefix ending at a line end; a final \\r may be half of \\r\\n, so it waits."""
    nl = data.rfind(b"\n")
    cr = data.rfind(b"\r", 0, len(data) - 1)
    return max(nl, cr) + 1


def _check_utf8(path: Path, buf: np.ndarray, offset: int, kind: str) -> None:
    if len(buf) and buf.max() >= 0x80:
        try:
            buf.tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise VoxfastError(f"{path}: not UTF-8 text ({e.reason} at byte {offset + e.start}); {kind}s must be "
                               "plain text files") from None


# ----------------------------------------------------------------------------------------------- strings


class StringColumn:
    """n strings as one contiguous UTF-8 byte buffer `data` and n + 1 int64 `offsets`.

    ~9 B of overhead per string instead of ~60, no reference counts for forked workers to write, and savable as two
    arrays that another process can memory-map.
    """

    __slots__ = ("data", "offsets")

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data, self.offsets = data, offsets

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringColumn:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    @classmethod
    def gather(cls, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> StringColumn:
        """The byte ranges [starts, ends) of `buf` as a column."""
        offsets = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        _gather(buf, starts, ends, offsets, data)
        return cls(data, offsets)

    @classmethod
    def concat(cls, columns: list[StringColumn]) -> StringColumn:
        """The columns one after the other."""
        if not columns:
            return cls.from_strings([])
        offsets = np.empty(sum(len(c) for c in columns) + 1, dtype=np.int64)  # filled in place: no temporaries
        offsets[0], row, shift = 0, 1, 0
        for c in columns:
            np.add(c.offsets[1:], shift - c.offsets[0], out=offsets[row:row + len(c)])
            row, shift = row + len(c), shift + int(c.offsets[-1] - c.offsets[0])
        return cls(np.concatenate([c.data for c in columns]), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"string {i} of a column of {len(self)}")
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def tolist(self) -> list[str]:
        return list(self)

    def take(self, indices: np.ndarray) -> StringColumn:
        """The strings at `indices` (in that order) as a new column."""
        indices = np.asarray(indices, dtype=np.int64)
        return StringColumn.gather(self.data, self.offsets[indices], self.offsets[indices + 1])

    def hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """The two 64-bit hashes of every string (see :func:`hash_fields`)."""
        return hash_fields(self.data, self.offsets[:-1], self.offsets[1:])

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes


@numba.njit(cache=True)
def _gather(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    for k in range(len(starts)):
        out[offsets[k]:offsets[k + 1]] = buf[starts[k]:ends[k]]


T = TypeVar("T")


class ColumnSequence(Sequence[T]):
    """A read-only sequence over columns that stands in for a list: items are built only when asked for (`_at`,
    given an index already checked and made non-negative), slices give lists, and it equals any sequence of the same
    items in order, as the list it replaces did. Subclasses add `__len__`, `_at` and, where a pass can be batched,
    a faster `__iter__`."""

    __slots__ = ()

    def _at(self, i: int) -> T:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self._at(k) for k in range(*i.indices(len(self)))]
        k = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= k < len(self):
            raise IndexError(f"item {int(i)} of a sequence of {len(self)}")
        return self._at(k)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # equal to a list, so not hashable


# ----------------------------------------------------------------------------------------------- hashing

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_POLY_MULT, _GOLDEN = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD6E8FEB86659FD93)


@numba.njit(cache=True)
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def _hash_ranges(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, h1: np.ndarray, h2: np.ndarray) -> None:
    for k in range(len(starts)):
        a, b = _FNV_OFFSET, _GOLDEN
        for j in range(starts[k], ends[k]):
            c = np.uint64(buf[j])
            a = (a ^ c) * _FNV_PRIME
            b = b * _POLY_MULT + c + np.uint64(1)
        length = np.uint64(ends[k] - starts[k])
        h1[k] = _mix(a ^ length)
        h2[k] = _mix(b + length * _FNV_PRIME)


def hash_fields(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes (FNV-1a and a multiplicative polynomial, each finalised by splitmix64's mixer)
    of the byte ranges [starts, ends) of `buf`; equal strings hash equal, distinct ones collide in both with
    probability ~2^-128 per pair."""
    h1, h2 = np.empty(len(starts), np.uint64), np.empty(len(starts), np.uint64)
    _hash_ranges(buf, np.asarray(starts, np.int64), np.asarray(ends, np.int64), h1, h2)
    return h1, h2


def hash_fields_numpy(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference of :func:`hash_fields` in plain numpy (one vectorised step per byte position), for the tests."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    a = np.full(len(starts), _FNV_OFFSET, np.uint64)
    b = np.full(len(starts), _GOLDEN, np.uint64)
    lengths = ends - starts
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            on = lengths > j
            c = buf[starts[on] + j].astype(np.uint64)
            a[on] = (a[on] ^ c) * _FNV_PRIME
            b[on] = b[on] * _POLY_MULT + c + np.uint64(1)
        length = lengths.astype(np.uint64)
        return _mix_numpy(a ^ length), _mix_numpy(b + length * _FNV_PRIME)


def _mix_numpy(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# ----------------------------------------------------------------------------------------------- ids


@dataclass
class Codes:
    """Distinct strings, by hash: `h1`, `h2` of each distinct string, sorted by (h1, h2); `codes` maps every input
    to its position there and `first` gives one input index holding each distinct string."""

    h1: np.ndarray
    h2: np.ndarray
    codes: np.ndarray
    first: np.ndarray


def id_codes(h1: np.ndarray, h2: np.ndarray) -> Codes:
    """Integer codes of strings given by their hashes: equal (h1, h2) pairs get one code, in hash order.

    Sorts by h1 alone (one argsort, several times faster than a two-key lexsort) and falls back to the lexsort only
    when two different strings share an h1, which the 64-bit hash makes a once-in-a-lifetime event.
    """
    order = np.argsort(h1)
    s1, s2 = h1[order], h2[order]
    same1 = s1[1:] == s1[:-1]
    if (same1 & (s2[1:] != s2[:-1])).any():
        order = np.lexsort((h2, h1))
        s1, s2 = h1[order], h2[order]
        same1 = (s1[1:] == s1[:-1]) & (s2[1:] == s2[:-1])
    new = np.ones(len(order), dtype=bool)
    new[1:] = ~same1
    code_sorted = np.cumsum(new) - 1
    codes = np.empty(len(order), dtype=np.int64)
    codes[order] = code_sorted
    return Codes(s1[new], s2[new], codes, order[new])


def lookup_codes(table: Codes, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """The code in `table` of each string given by (h1, h2), -1 where the table lacks it."""
    out = np.full(len(h1), -1, dtype=np.int64)
    if len(table.h1) == 0:
        return out
    # Binary searches for sorted queries walk the table in order (numpy narrows each search by the last one):
    # ten million random ones miss the cache at every step and take 10x longer than the sort.
    order = np.argsort(h1)
    pos = np.empty(len(h1), dtype=np.int64)
    pos[order] = np.searchsorted(table.h1, h1[order])
    # h1 alone collides for distinct strings about once in 2^64 pairs; step through equal-h1 runs for those.
    for _ in range(_MAX_H1_RUN):
        inside = pos < len(table.h1)
        p = np.where(inside, pos, 0)
        same1 = inside & (table.h1[p] == h1)
        hit = same1 & (table.h2[p] == h2) & (out < 0)
        out[hit] = p[hit]
        pending = same1 & (out < 0)
        if not pending.any():
            break
        pos = np.where(pending, pos + 1, len(table.h1))
    return out


_MAX_H1_RUN = 8
