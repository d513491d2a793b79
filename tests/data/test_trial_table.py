"""Columnar trial and score files (voxfast.data.trials) against the line-by-line readers they replace.

The reference readers below are the old voxfast.data.manifest code (one Python object per line); the columnar ones
must give the same trials, scores, messages and line numbers, also when a file spans many read chunks.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

import voxfast.data.trials as trials_module
from voxfast.columns import StringColumn, read_fields
from voxfast.data.manifest import Trial, read_scores, read_trials, write_scores, write_trials
from voxfast.data.trials import IdIndex, PairTable, TrialTable, format_scores_6f, parse_floats, score_bytes
from voxfast.errors import ListFormatError, VoxfastError
from voxfast.eval.scoring import labels_in_score_order, score_order, score_trials_from_table, trial_indices

# --------------------------------------------------------------------------------------------------
# The reference: the line-by-line readers, verbatim from before the columnar rewrite.

_VOX, _KALDI, _UNL = "VoxCeleb", "Kaldi", "unlabelled"
_SHAPES = {_VOX: "'label enroll test' with label 0/1", _KALDI: "'enroll test target|nontarget'", _UNL: "'enroll test'"}
_FIX = "fix the line or delete it"


def _err(path, lineno, problem, text, fix=_FIX):
    shown = text if len(text) <= 100 else text[:97] + "..."
    return ListFormatError(f"{path}:{lineno}: {problem}: {shown!r} ({fix})")


def _lines(path: Path):
    with path.open(encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            fields = raw.split()
            if fields and not fields[0].startswith("#"):
                yield lineno, fields


def _matches(fields, fmt):
    if fmt == _UNL:
        return len(fields) == 2
    if fmt == _VOX:
        return len(fields) == 3 and fields[0] in ("0", "1")
    return len(fields) == 3 and fields[2] in ("target", "nontarget")


def _mismatch(fields, fmt, first_line):
    detected = f"{fmt} format, detected from line {first_line}"
    other = next((f for f in (_VOX, _KALDI, _UNL) if f != fmt and _matches(fields, f)), None)
    if other is not None:
        return f"line is in {other} format but the file is in {detected}", "use one format for the whole file"
    want = 2 if fmt == _UNL else 3
    if len(fields) != want:
        return f"expected {want} columns {_SHAPES[fmt]} ({detected}), found {len(fields)}", _FIX
    if fmt == _VOX:
        return f"label must be 0 or 1, found {fields[0]!r} ({detected})", _FIX
    return f"label must be 'target' or 'nontarget', found {fields[2]!r} ({detected})", _FIX


def reference_trials(path: Path) -> tuple[list[Trial], list[str]]:
    """(trials, the lines of the duplicate warning) as the old read_trials gave them."""
    fmt, first_line, trials, repeats = "", 0, {}, []
    for lineno, fields in _lines(path):
        if not fmt:
            fmt = next((f for f in (_VOX, _KALDI, _UNL) if _matches(fields, f)), "")
            if not fmt:
                expected = ", ".join(f"{shape} ({f})" for f, shape in _SHAPES.items())
                raise _err(path, lineno, f"cannot tell the trial format from {len(fields)} columns; expected one "
                           f"of {expected}", " ".join(fields), "fix the line so it uses one of these formats")
            first_line = lineno
        elif not _matches(fields, fmt):
            problem, fix = _mismatch(fields, fmt, first_line)
            raise _err(path, lineno, problem, " ".join(fields), fix)
        if fmt == _VOX:
            trial = Trial(fields[1], fields[2], int(fields[0]))
        elif fmt == _KALDI:
            trial = Trial(fields[0], fields[1], int(fields[2] == "target"))
        else:
            trial = Trial(fields[0], fields[1], None)
        earlier = trials.setdefault((trial.enroll, trial.test), (trial, lineno))
        if earlier[1] != lineno:
            if earlier[0].label != trial.label:
                raise _err(path, lineno, f"this pair has label {trial.label} here and {earlier[0].label} on line "
                           f"{earlier[1]}", " ".join(fields), "keep the right one and delete the other")
            repeats.append(f"{lineno} (= {earlier[1]})")
    if not trials:
        raise VoxfastError(f"trial file has no trials: {path}; pass an existing trial list")
    return [t for t, _ in trials.values()], repeats


def reference_scores(path: Path) -> tuple[list[tuple[str, str]], list[float], list[int]]:
    pairs, values, lines = [], [], []
    for lineno, fields in _lines(path):
        text = " ".join(fields)
        if len(fields) != 3:
            raise _err(path, lineno, f"expected 3 columns 'enroll test score', found {len(fields)}", text)
        try:
            value = float(fields[2])
        except ValueError:
            raise _err(path, lineno, f"score is not a number: {fields[2]!r}", text) from None
        if not math.isfinite(value):
            raise _err(path, lineno, f"score is not finite: {fields[2]!r}", text,
                       "rescore: the model or the embeddings produced a non-finite value")
        pairs.append((fields[0], fields[1]))
        values.append(value)
        lines.append(lineno)
    if not pairs:
        raise VoxfastError(f"score file has no scores: {path}; run scoring first or pass an existing score file")
    return pairs, values, lines


def outcome(read, *args):
    try:
        return read(*args)
    except VoxfastError as e:
        return type(e), str(e)


@pytest.fixture(params=[1 << 23, 40], ids=["one-chunk", "40-byte-chunks"])
def chunked(request, monkeypatch):
    """Run the columnar readers with the usual chunk size and with chunks of a line or two."""
    monkeypatch.setattr(trials_module, "read_fields", functools.partial(read_fields, chunk_bytes=request.param))


# --------------------------------------------------------------------------------------------------
# Random files: columnar == line by line, results and errors.

IDS = ["a", "b", "id1/x.wav", "é", "0", "1", "target", "#c"]
SEPS = [" ", "\t", "  ", "\u3000", "\x0c"]
ENDS = ["\n", "\r\n", "\r"]


def random_trial_text(rng: random.Random, fmt: str, n: int) -> str:
    lines = []
    for _ in range(n):
        kind = rng.random()
        e, t = rng.choice(IDS[:6]), rng.choice(IDS)
        if kind < 0.05:
            line = rng.choice(["", "  ", "# comment", " #x y z"])
        elif kind < 0.08:  # another format or a broken line
            line = rng.choice([f"{e} {t}", f"2 {e} {t}", f"{e} {t} yes", f"1 {e} {t} x", f"{e} {t} target", e])
        elif fmt == _VOX:
            line = f"{rng.choice('01') if rng.random() < 0.99 else '1'} {e} {t}"
        elif fmt == _KALDI:
            line = f"{e} {t} {rng.choice(['target', 'nontarget'])}"
        else:
            line = f"{e} {t}"
        lines.append(rng.choice(SEPS).join(line.split(" ")) + rng.choice(ENDS))
    return "".join(lines)


@pytest.mark.parametrize("fmt", [_VOX, _KALDI, _UNL])
def test_trials_match_the_line_by_line_reader_on_random_files(tmp_path, chunked, caplog, fmt):
    rng = random.Random(len(fmt))  # not hash(): str hashes change from run to run
    results = set()
    for i in range(150):
        path = tmp_path / f"t{i}.txt"
        path.write_bytes(random_trial_text(rng, fmt, rng.randint(0, 40)).encode())
        want = outcome(reference_trials, path)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = outcome(read_trials, path)
        if isinstance(want[0], type):
            assert got == want, path.read_text()
            results.add(want[0].__name__)
            continue
        assert isinstance(got, TrialTable) and got == want[0] and list(got) == want[0]
        assert got.labelled == (want[0][0].label is not None) and got.labels.dtype == np.int8
        if want[1]:
            assert f"{len(want[1])} exact duplicate trial(s) ignored, at lines {', '.join(want[1][:20])}" \
                in caplog.text
        results.add("ok")
    assert results >= {"ok", "ListFormatError"}  # both outcomes were drawn


def test_line_numbers_of_the_trials_are_their_physical_lines(tmp_path, chunked):
    path = tmp_path / "t.txt"
    path.write_text("# head\n\n1 a b\r\n0 a c\r1 a b\n  \n0 c a\n")
    table = read_trials(path)
    assert table.line_no.tolist() == [3, 4, 7] and table.line_no.dtype == np.int32
    assert table.ids.tolist() == ["a", "b", "c"] and table.enroll.tolist() == [0, 0, 2]
    assert table.test.tolist() == [1, 2, 0] and table.labels.tolist() == [1, 0, 0]


SCORE_TOKENS = ["0.5", "-0.25", "1e-3", "1_0", ".5", "5.", "-0", "+1.5", "١٢", "nan", "inf", "-inf", "1e400", "x",
                "--1", ".", "-", "0x10", "123456789012345678", "0.1234567890123456789", "1" * 30, "0." + "0" * 30 + "1"]


def random_score_text(rng: random.Random, n: int) -> str:
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.05:
            line = rng.choice(["", "# c", "a b", "a b 1 2"])
        elif kind < 0.15:
            line = f"{rng.choice(IDS)} {rng.choice(IDS)} {rng.choice(SCORE_TOKENS)}"
        else:
            line = f"{rng.choice(IDS)} {rng.choice(IDS)} {rng.uniform(-2, 2):.{rng.randint(0, 9)}f}"
        lines.append(rng.choice(SEPS).join(line.split(" ")) + rng.choice(ENDS))
    return "".join(lines)


def test_scores_match_the_line_by_line_reader_on_random_files(tmp_path, chunked):
    rng = random.Random(3)
    results = set()
    for i in range(200):
        path = tmp_path / f"s{i}.txt"
        path.write_bytes(random_score_text(rng, rng.randint(0, 30)).encode())
        want = outcome(reference_scores, path)
        got = outcome(read_scores, path)
        if isinstance(want[0], type):
            assert got == want, path.read_text()
            results.add(want[0].__name__)
            continue
        pairs, values = got
        assert isinstance(pairs, PairTable) and pairs == want[0] and pairs.line_no.tolist() == want[2]
        assert values.dtype == np.float64
        np.testing.assert_array_equal(values, np.asarray(want[1]))  # exactly float()'s values
        results.add("ok")
    assert results >= {"ok", "ListFormatError", "VoxfastError"}


def test_score_fields_parse_exactly_as_float_does():
    rng = np.random.default_rng(0)
    tokens = [*SCORE_TOKENS, "0", "00.000", "-0.000000", "+.5", "999999999999999", "9999999999999999", "1e5", "1E5",
              "0.000001", "123.4560000000000000000", "1.2.3", "+", "4_2.0", "\x00", "é", "0.1" + "0" * 22]
    tokens += [f"{v:.{d}f}" for v, d in zip(rng.normal(0, 10.0 ** rng.integers(-3, 9, 3000)).tolist(),
                                            rng.integers(0, 17, 3000).tolist(), strict=True)]
    tokens += [repr(v) for v in rng.normal(size=500).tolist()]
    col = StringColumn.from_strings(tokens)
    values, parsed = parse_floats(col.data, col.offsets[:-1], col.offsets[1:])
    for token, value, ok in zip(tokens, values.tolist(), parsed.tolist(), strict=True):
        try:
            want = float(token)
        except ValueError:
            assert not ok, token
            continue
        assert ok and (value == want or (math.isnan(value) and math.isnan(want))), token
        assert math.copysign(1, value) == math.copysign(1, want), token


# --------------------------------------------------------------------------------------------------
# Errors that need more than one chunk or line to show.


def test_a_two_label_pair_before_a_bad_line_is_reported_first(tmp_path, chunked):
    path = tmp_path / "t.txt"
    path.write_text("1 a b\n" + "0 x y\n" * 10 + "0 a b\n" + "1 z w\n" * 10 + "2 a b\n")
    with pytest.raises(ListFormatError, match=r"t.txt:12: this pair has label 0 here and 1 on line 1: '0 a b'"):
        read_trials(path)
    path.write_text("a b target\n" + "x y nontarget\n" * 10 + "a b yes\n" + "a b nontarget\n")
    with pytest.raises(ListFormatError, match=r"t.txt:12: label must be 'target' or 'nontarget', found 'yes'"):
        read_trials(path)


def test_kaldi_clash_quotes_the_line_as_written(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b target\na  b\tnontarget\n")
    with pytest.raises(ListFormatError, match=r"t.txt:2: this pair has label 0 here and 1 on line 1: "
                                              r"'a b nontarget' \(keep the right one"):
        read_trials(path)


def test_duplicates_warning_lists_twenty_lines_and_counts_all(tmp_path, caplog, chunked):
    path = tmp_path / "t.txt"
    path.write_text("1 a b\n" * 30)
    with caplog.at_level(logging.WARNING):
        table = read_trials(path)
    assert list(table) == [Trial("a", "b", 1)]
    shown = ", ".join(f"{n} (= 1)" for n in range(2, 22))
    assert f"29 exact duplicate trial(s) ignored, at lines {shown}" in caplog.text
    assert "22 (= 1)" not in caplog.text


def test_empty_and_not_utf8_files(tmp_path):
    (tmp_path / "e.txt").write_text("# only\n\n")
    with pytest.raises(VoxfastError, match="trial file has no trials"):
        read_trials(tmp_path / "e.txt")
    with pytest.raises(VoxfastError, match="score file has no scores"):
        read_scores(tmp_path / "e.txt")
    (tmp_path / "b.txt").write_bytes(b"1 a b\n0 a \xff\n")
    for reader in (read_trials, read_scores):
        with pytest.raises(VoxfastError, match=r"b.txt: not UTF-8 text"):
            reader(tmp_path / "b.txt")


# --------------------------------------------------------------------------------------------------
# Matching scores to trials.


def reference_labels(pairs, trials):
    by_pair = {(t.enroll, t.test): t.label for t in trials}
    return np.array([by_pair[p] for p in pairs], dtype=bool)


def test_shuffled_scores_get_their_trials_labels(tmp_path, chunked):
    rng = np.random.default_rng(1)
    ids = [f"spk{i % 7}/u{i}.wav" for i in range(40)]
    keys = rng.choice(40 * 40, 500, replace=False)
    trials = [Trial(ids[k // 40], ids[k % 40], int(rng.integers(0, 2))) for k in keys]
    write_trials(tmp_path / "trials.txt", trials)
    order = rng.permutation(len(trials))
    shuffled = [(trials[i].enroll, trials[i].test) for i in order]
    write_scores(tmp_path / "scores.txt", shuffled, rng.normal(size=len(trials)))
    table = read_trials(tmp_path / "trials.txt")
    pairs, _ = read_scores(tmp_path / "scores.txt")
    labels = labels_in_score_order(tmp_path / "scores.txt", pairs, tmp_path / "trials.txt", table)
    np.testing.assert_array_equal(labels, reference_labels(shuffled, trials))
    np.testing.assert_array_equal(score_order("s", pairs, "t", table), order)
    # plain lists, as the old signature took, give the same
    np.testing.assert_array_equal(labels_in_score_order("s", list(pairs), "t", trials), labels)


def match_error(tmp_path, trials_text: str, scores_text: str) -> str:
    (tmp_path / "t.txt").write_text(trials_text)
    (tmp_path / "s.txt").write_text(scores_text)
    with pytest.raises(VoxfastError) as info:
        labels_in_score_order(tmp_path / "s.txt", read_scores(tmp_path / "s.txt")[0], tmp_path / "t.txt",
                              read_trials(tmp_path / "t.txt"))
    return str(info.value)


def test_matching_errors_name_the_first_bad_line(tmp_path):
    trials = "# t\n1 a b\n0 a c\n1 a b\n0 c a\n"
    msg = match_error(tmp_path, trials, "c a 0.1\n\na b 0.2\nz a 0.3\na c 0.4\n")
    assert msg == f"{tmp_path / 's.txt'}:4: pair 'z a' is not in the trial list {tmp_path / 't.txt'} (score and " \
                  "evaluate with the same trial list)"
    msg = match_error(tmp_path, trials, "c a 0.1\na b 0.2\nb a 0.3\na b 0.4\n")
    assert msg.startswith(f"{tmp_path / 's.txt'}:3: pair 'b a' is not in the trial list")
    msg = match_error(tmp_path, trials, "c a 0.1\na b 0.2\n# x\na b 0.4\na c 0.3\n")
    assert msg == f"{tmp_path / 's.txt'}:4: pair 'a b' is scored twice (first on line 2); keep one score per trial"
    msg = match_error(tmp_path, trials, "a b 0.2\na c 0.3\n")
    assert msg == f"{tmp_path / 't.txt'}:5: trial 'c a' has no score in {tmp_path / 's.txt'} (score and evaluate " \
                  "with the same trial list)"  # line 5, though line 4 (a repeat) was dropped before it


def test_unlabelled_lists(tmp_path, chunked):
    (tmp_path / "t.txt").write_text("a b\nc d\na b\n")
    table = read_trials(tmp_path / "t.txt")
    assert not table.labelled and table.labels.tolist() == [-1, -1]
    assert list(table) == [Trial("a", "b", None), Trial("c", "d", None)]
    (tmp_path / "s.txt").write_text("c d 1\na b 2\n")
    assert labels_in_score_order("s", read_scores(tmp_path / "s.txt")[0], "t", table) is None
    (tmp_path / "s.txt").write_text("c d 1\n")
    with pytest.raises(VoxfastError, match="t:1: trial 'a b' has no score in s"):
        labels_in_score_order("s", read_scores(tmp_path / "s.txt")[0], "t", table)


# --------------------------------------------------------------------------------------------------
# Writing scores.


def test_scores_are_formatted_as_python_formats_them():
    rng = np.random.default_rng(2)
    k = rng.integers(0, 10**12, 20_000)
    halfway = (k + 0.5) / 1e6  # the nearest doubles to ties, and their neighbours on both sides
    values = [halfway, np.nextafter(halfway, 0), np.nextafter(halfway, 2e12), -halfway,
              np.arange(1, 4096) / 128.0, np.arange(1, 4096) / 2.0**20, -np.arange(1, 512) / 2.0**27,  # exact ties
              rng.normal(size=20_000), rng.normal(size=5_000).astype(np.float32).astype(np.float64),
              rng.normal(size=5_000) * 10.0 ** rng.integers(-12, 10, 5_000),
              np.array([0.0, -0.0, 5e-7, -5e-7, 4.9999999999999996e-07, 1e-300, -1e-300, 999999999.9999995,
                        1e9, -1e9, 1.5e15, 1e300, np.inf, -np.inf, np.nan, 0.0000005, 2.5e-6, 0.0078125])]
    scores = np.concatenate(values)
    got = format_scores_6f(scores).tolist()
    assert got == [f"{x:.6f}" for x in scores.tolist()]


def test_written_lines_equal_the_line_by_line_writer(tmp_path):
    rng = np.random.default_rng(3)
    trials = [Trial(f"e{i % 13}/é{i}.wav", f"t{i % 7}", i % 2) for i in range(3000)]
    scores = rng.normal(size=3000).astype(np.float32)
    write_scores(tmp_path / "list.txt", trials, scores)
    want = "".join(f"{t.enroll} {t.test} {s:.6f}\n" for t, s in zip(trials, scores.tolist(), strict=True))
    assert (tmp_path / "list.txt").read_text() == want
    write_trials(tmp_path / "t.txt", trials)
    table = read_trials(tmp_path / "t.txt")
    write_scores(tmp_path / "table.txt", table, scores)
    assert (tmp_path / "table.txt").read_text() == want
    assert b"".join(score_bytes(PairTable.from_pairs(trials), scores, rows_per_block=7)).decode() == want
    pairs, back = read_scores(tmp_path / "table.txt")
    assert pairs == [(t.enroll, t.test) for t in trials]
    np.testing.assert_allclose(back, scores, atol=5e-7)


def test_writing_refuses_ids_that_would_not_read_back(tmp_path):
    (tmp_path / "t.txt").write_text("1 a #b\n")
    table = read_trials(tmp_path / "t.txt")
    assert list(table) == [Trial("a", "#b", 1)]
    with pytest.raises(VoxfastError, match="cannot write test id '#b'"):
        write_scores(tmp_path / "s.txt", table, np.zeros(1))
    with pytest.raises(VoxfastError, match="cannot write enroll id 'a b'"):
        write_scores(tmp_path / "s.txt", [("x", "y"), ("a b", "c")], np.zeros(2))
    assert not (tmp_path / "s.txt").exists()


# --------------------------------------------------------------------------------------------------
# The table's list interface, interning and scoring from an embedding table.


def test_table_behaves_as_the_list_it_replaces(tmp_path):
    (tmp_path / "t.txt").write_text("a b target\nc a nontarget\n")
    table = read_trials(tmp_path / "t.txt")
    assert len(table) == 2 and table[0] == Trial("a", "b", 1) and table[-1] == Trial("c", "a", 0)
    assert table[0:1] == [Trial("a", "b", 1)] and Trial("c", "a", 0) in table
    assert table == TrialTable.from_trials(list(table)) and table != [Trial("a", "b", 1)]
    with pytest.raises(IndexError):
        table[2]
    pairs = PairTable.from_pairs(table)
    assert list(pairs) == [("a", "b"), ("c", "a")] and pairs.pair(1) == ("c", "a")
    assert dict(zip(pairs, [1, 2], strict=True)) == {("a", "b"): 1, ("c", "a"): 2}


def test_id_index_gives_first_seen_codes_as_a_dict_would():
    rng = random.Random(4)
    index, reference = IdIndex(capacity=4), {}
    for _ in range(30):  # many chunks: the table grows and rehashes
        words = [f"u{rng.randint(0, 3000)}" * rng.choice([1, 3, 7]) for _ in range(rng.randint(0, 300))]
        words += rng.choice([[], ["", "é" * 9, "a" * 8, "a" * 16, "b" * 8 + "a" * 8]])
        col = StringColumn.from_strings(words)
        codes = index.add(col.data, col.offsets[:-1], col.offsets[1:])
        assert codes.tolist() == [reference.setdefault(w, len(reference)) for w in words]
    assert index.strings().tolist() == list(reference)
    query = StringColumn.from_strings(["u5", "nope", *list(reference)[:3]])
    found = index.find(query.data, query.offsets[:-1], query.offsets[1:])
    assert found.tolist() == [reference.get("u5", -1), -1, 0, 1, 2]


def test_table_scoring_equals_list_scoring(tmp_path):
    rng = np.random.default_rng(5)
    ids = [f"u{i}" for i in range(30)]
    emb, cohort = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    trials = [Trial(ids[e], ids[t], int(e % 2)) for e, t in rng.integers(0, 30, (200, 2)) if e != t]
    write_trials(tmp_path / "t.txt", trials)
    table = read_trials(tmp_path / "t.txt")
    listed = list(table)
    for kwargs in ({}, {"mean": emb.mean(axis=0)}, {"cohort": cohort, "top_n": 10}):
        np.testing.assert_allclose(score_trials_from_table(table, ids, emb, **kwargs),
                                   score_trials_from_table(listed, ids, emb, **kwargs), atol=1e-6)
    index = {u: i for i, u in enumerate(ids)}
    for got, want in zip(trial_indices(table, index), trial_indices(listed, index), strict=True):
        np.testing.assert_array_equal(got, want)
    missing = "1 utterance(s) in the trial list have no embedding, first 1: u3"
    with pytest.raises(VoxfastError, match=re.escape(missing)):
        score_trials_from_table(table, [u for u in ids if u != "u3"], emb[:29])
