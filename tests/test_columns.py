"""voxfast.columns against Python's own line iteration and str.split(), and the hashes against their numpy reference."""

import io
import random

import numpy as np
import pytest

from voxfast.columns import (
    StringColumn,
    hash_fields,
    hash_fields_numpy,
    id_codes,
    lookup_codes,
    read_fields,
    tokenise,
)
from voxfast.errors import VoxfastError

# Every kind of character the rules distinguish: text, ASCII and multi-byte whitespace, the three line ends, '#'.
PIECES = ["a", "b", "é", "漢", "#", " ", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2003",
          "\u2028", "\u202f", "\u205f", "\u3000", "\u200b", "\n", "\r", "\r\n", "’"]


def python_lines(text: str) -> list[tuple[int, list[str]]]:
    """What the line-by-line readers keep: text-mode lines numbered from 1, split(), blanks and # comments dropped."""
    kept = []
    for lineno, raw in enumerate(io.StringIO(text, newline=None), start=1):
        fields = raw.split()
        if fields and not fields[0].startswith("#"):
            kept.append((lineno, fields))
    return kept


def columnar_lines(fields_chunks) -> list[tuple[int, list[str]]]:
    out = []
    for f in fields_chunks:
        counts = f.counts
        for k in range(len(f.line_no)):
            words = [bytes(f.buf[f.starts[j]:f.ends[j]]).decode() for j in range(f.first[k], f.first[k] + counts[k])]
            out.append((int(f.line_no[k]), words))
    return out


def test_tokenise_matches_python_on_random_text():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        fields, _ = tokenise(np.frombuffer(text.encode(), dtype=np.uint8))
        assert columnar_lines([fields]) == python_lines(text), repr(text)


def test_chunked_reading_keeps_line_numbers_and_drops_the_bom(tmp_path):
    rng = random.Random(1)
    text = "".join(rng.choice(PIECES) for _ in range(50_000))
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    for chunk in (7, 100, 4096, 1 << 23):  # tiny chunks cut everywhere, \r\n split across reads included
        assert columnar_lines(read_fields(path, "list file", "hint", chunk_bytes=chunk)) == python_lines(text)


def test_fields_text_joins_a_line_as_the_error_messages_quote_it():
    fields, lines = tokenise(np.frombuffer(b"# c\n  a\tb  c \n\n", dtype=np.uint8), first_line=5)
    assert lines == 3 and fields.line_no.tolist() == [6] and fields.text(0) == "a b c"
    assert fields.strings(fields.field(2)).tolist() == ["c"]


def test_missing_directory_and_non_utf8_files_are_named(tmp_path):
    with pytest.raises(VoxfastError, match=r"trial file not found: .*nope\.txt; pass one"):
        list(read_fields(tmp_path / "nope.txt", "trial file", "pass one"))
    with pytest.raises(VoxfastError, match="trial file is a directory"):
        list(read_fields(tmp_path, "trial file", "pass one"))
    (tmp_path / "bad.txt").write_bytes(b"a b\nc \xff d\n")
    with pytest.raises(VoxfastError, match=r"bad.txt: not UTF-8 text \(invalid start byte at byte 6\)"):
        list(read_fields(tmp_path / "bad.txt", "trial file", "pass one"))


def test_hashes_match_the_numpy_reference_and_depend_on_every_byte():
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, 20_000).astype(np.uint8)
    starts = np.sort(rng.integers(0, len(buf), 2000))
    ends = np.minimum(starts + rng.integers(0, 40, 2000), len(buf))
    for got, want in zip(hash_fields(buf, starts, ends), hash_fields_numpy(buf, starts, ends), strict=True):
        np.testing.assert_array_equal(got, want)
    col = StringColumn.from_strings(["ab", "ba", "a", "a\x00", "", "ab"])
    h1, h2 = col.hashes()
    assert len(set(h1.tolist())) == 5 and len(set(h2.tolist())) == 5 and h1[0] == h1[5] and h2[0] == h2[5]


def test_codes_give_equal_strings_one_code_and_lookup_finds_them():
    strings = ["x", "y", "x", "zz", "", "é", "y"]
    col = StringColumn.from_strings(strings)
    codes = id_codes(*col.hashes())
    assert len(codes.h1) == 5
    for i, s in enumerate(strings):
        assert strings[codes.first[codes.codes[i]]] == s
        assert [strings[j] for j in np.flatnonzero(codes.codes == codes.codes[i])] == [s] * strings.count(s)
    query = StringColumn.from_strings(["zz", "nope", "x", "", "é"])
    found = lookup_codes(codes, *query.hashes())
    assert found[1] == -1
    assert [strings[codes.first[c]] for c in found[[0, 2, 3, 4]]] == ["zz", "x", "", "é"]


def test_lookup_steps_through_equal_first_hashes():
    codes = id_codes(np.array([7, 7, 7, 3], np.uint64), np.array([1, 2, 3, 9], np.uint64))
    found = lookup_codes(codes, np.array([7, 7, 7, 3, 7], np.uint64), np.array([3, 1, 2, 9, 4], np.uint64))
    assert [int(codes.h2[c]) if c >= 0 else -1 for c in found] == [3, 1, 2, 9, -1]


def test_string_column_round_trips_and_takes():
    strings = ["spk1/a.wav", "", "漢字", "x" * 300]
    col = StringColumn.from_strings(strings)
    assert len(col) == 4 and col.tolist() == strings and col[-1] == strings[-1]
    assert col.take(np.array([2, 0])).tolist() == ["漢字", "spk1/a.wav"]
    with pytest.raises(IndexError):
        col[4]
