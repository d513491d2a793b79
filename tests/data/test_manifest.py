"""List, trial and score file formats: parsing, round trips and the wording of every error."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from voxfast.data.manifest import (
    Trial,
    Utterance,
    read_kaldi_dir,
    read_scores,
    read_trials,
    read_utterances,
    read_voxceleb_list,
    speaker_index,
    write_scores,
    write_trials,
    write_voxceleb_list,
)
from voxfast.errors import ListFormatError, VoxfastError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def assert_line_error(exc: pytest.ExceptionInfo, path: Path, lineno: int, *fragments: str) -> None:
    """The message names the file and the 1-based line, and says how to fix it."""
    msg = str(exc.value)
    assert f"{path.name}:{lineno}:" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


# --------------------------------------------------------------------------------------------------
# VoxCeleb lists.


def test_voxceleb_list_resolves_paths_relative_to_list_folder(tmp_path):
    lst = write(
        tmp_path / "lists" / "train.txt",
        "# speaker path\nid001 id001/a/00001.wav\n\n  id002   id002/b/00002.wav  \n",
    )
    utts = read_voxceleb_list(lst)
    assert utts == [
        Utterance("id001/a/00001.wav", "id001", str(tmp_path / "lists" / "id001" / "a" / "00001.wav")),
        Utterance("id002/b/00002.wav", "id002", str(tmp_path / "lists" / "id002" / "b" / "00002.wav")),
    ]


def test_voxceleb_list_with_explicit_root_and_absolute_paths(tmp_path):
    audio = tmp_path / "audio"
    lst = write(tmp_path / "train.txt", f"s1 x/1.wav\ns2 ../other/2.wav\ns3 {audio / 'abs.wav'}\n")
    utts = read_voxceleb_list(str(lst), root=audio)
    assert [u.path for u in utts] == [
        str(audio / "x" / "1.wav"),
        str(tmp_path / "other" / "2.wav"),
        str(audio / "abs.wav"),
    ]
    assert [u.utt for u in utts] == ["x/1.wav", "../other/2.wav", str(audio / "abs.wav")]
    assert all(os.path.isabs(u.path) for u in utts)


def test_voxceleb_list_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lst = write(tmp_path / "train.txt", "s1 a.wav\n")
    assert read_voxceleb_list("train.txt", root="data")[0].path == str(tmp_path / "data" / "a.wav")
    assert read_voxceleb_list("train.txt")[0].path == str(tmp_path / "a.wav")
    assert lst.exists()


def test_voxceleb_list_one_column(tmp_path):
    lst = write(tmp_path / "train.txt", "s1 a.wav\n\n# comment\ns2 b.wav\ns3 c.wav\ns4 d.wav\nabc\n")
    with pytest.raises(ListFormatError) as exc:
        read_voxceleb_list(lst)
    assert_line_error(exc, lst, 7, "expected 2 columns 'speaker path', found 1: 'abc'", "fix the line or delete it")


def test_voxceleb_list_three_columns(tmp_path):
    lst = write(tmp_path / "train.txt", "s1 a.wav\ns2 my file.wav\n")
    with pytest.raises(ListFormatError) as exc:
        read_voxceleb_list(lst)
    assert_line_error(exc, lst, 2, "found 3", "'s2 my file.wav'", "fix the line or delete it", "spaces")


def test_voxceleb_list_duplicate_path(tmp_path):
    lst = write(tmp_path / "train.txt", "s1 a.wav\ns2 b.wav\ns3 a.wav\n")
    with pytest.raises(ListFormatError) as exc:
        read_voxceleb_list(lst)
    assert_line_error(exc, lst, 3, "duplicate id 'a.wav' (first on line 1)", "fix the line or delete it")


def test_missing_list_file(tmp_path):
    missing = tmp_path / "nope" / "train.txt"
    with pytest.raises(VoxfastError) as exc:
        read_voxceleb_list(missing)
    assert "list file not found" in str(exc.value)
    assert str(missing) in str(exc.value)
    assert "voxfast make-demo-data" in str(exc.value)


def test_empty_list_file(tmp_path):
    lst = write(tmp_path / "train.txt", "# only a comment\n\n")
    with pytest.raises(VoxfastError, match="no utterances"):
        read_voxceleb_list(lst)


def test_non_utf8_list(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_bytes(b"s1 \xff\xfe.wav\n")
    with pytest.raises(VoxfastError, match="not UTF-8"):
        read_voxceleb_list(lst)


def test_bom_is_tolerated(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_bytes("s1 a.wav\n".encode("utf-8-sig"))
    assert read_voxceleb_list(lst)[0].spk == "s1"


# --------------------------------------------------------------------------------------------------
# Kaldi data directories.


def make_kaldi_dir(d: Path, wav_scp: str, utt2spk: str) -> Path:
    write(d / "wav.scp", wav_scp)
    write(d / "utt2spk", utt2spk)
    return d


def test_kaldi_dir_reads_in_wav_scp_order(tmp_path):
    d = make_kaldi_dir(
        tmp_path / "data" / "train",
        f"u2 {tmp_path}/w/2.wav\nu1 {tmp_path}/w/1.wav\n",
        "u1 spkA\nu2 spkB\nu3 spkC\n",  # u3 has no audio: ignored, as after fix_data_dir.sh
    )
    assert read_kaldi_dir(d) == [
        Utterance("u2", "spkB", str(tmp_path / "w" / "2.wav")),
        Utterance("u1", "spkA", str(tmp_path / "w" / "1.wav")),
    ]


def test_kaldi_relative_paths_follow_kaldi_cwd_convention(tmp_path, monkeypatch):
    d = make_kaldi_dir(tmp_path / "data" / "train", "u1 wav/1.wav\n", "u1 s\n")
    monkeypatch.chdir(tmp_path)
    assert read_kaldi_dir(d)[0].path == str(tmp_path / "wav" / "1.wav")
    assert read_kaldi_dir(d, root=tmp_path / "corpus")[0].path == str(tmp_path / "corpus" / "wav" / "1.wav")


@pytest.mark.parametrize(
    "line",
    ["u2 sox /x/2.flac -t wav - |", "u2 flac -dc /x/2.flac|", "u2 -"],
)
def test_kaldi_pipe_rejected(tmp_path, line):
    d = make_kaldi_dir(tmp_path / "k", f"u1 /x/1.wav\n{line}\n", "u1 s\nu2 s\n")
    with pytest.raises(ListFormatError) as exc:
        read_kaldi_dir(d)
    assert_line_error(exc, d / "wav.scp", 2, "voxfast reads audio files only", "write the command's output to a")


def test_kaldi_missing_speakers_reports_count_and_first_ids(tmp_path):
    wavs = "".join(f"u{i} /x/{i}.wav\n" for i in range(10))
    d = make_kaldi_dir(tmp_path / "k", wavs, "u0 s\nu1 s\nu5 s\n")
    with pytest.raises(ListFormatError) as exc:
        read_kaldi_dir(d)
    msg = str(exc.value)
    assert "utt2spk" in msg
    assert "7 utterance(s)" in msg
    assert "'u2', 'u3', 'u4', 'u6', 'u7'" in msg
    assert "'u8'" not in msg
    assert "fix_data_dir.sh" in msg


def test_kaldi_malformed_utt2spk(tmp_path):
    d = make_kaldi_dir(tmp_path / "k", "u1 /x/1.wav\n", "u1 s extra\n")
    with pytest.raises(ListFormatError) as exc:
        read_kaldi_dir(d)
    assert_line_error(exc, d / "utt2spk", 1, "expected 2 columns 'utterance speaker', found 3", "fix the line")


def test_kaldi_missing_files(tmp_path):
    with pytest.raises(VoxfastError, match="Kaldi data directory not found"):
        read_kaldi_dir(tmp_path / "absent")
    write(tmp_path / "k" / "wav.scp", "u1 /x/1.wav\n")
    with pytest.raises(VoxfastError, match="utt2spk not found"):
        read_kaldi_dir(tmp_path / "k")


def test_read_utterances_dispatches_on_layout(tmp_path):
    kaldi = make_kaldi_dir(tmp_path / "k", "u1 /x/1.wav\n", "u1 s\n")
    lst = write(tmp_path / "train.txt", "s a.wav\n")
    assert read_utterances(kaldi) == read_kaldi_dir(kaldi)
    assert read_utterances(lst) == read_voxceleb_list(lst)
    assert read_utterances(lst, root=tmp_path / "r") == read_voxceleb_list(lst, root=tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VoxfastError, match=r"directory without wav\.scp"):
        read_utterances(tmp_path / "empty")


def test_speaker_index_is_sorted_contiguous_and_order_free():
    utts = [Utterance(f"u{i}", spk, f"/x/{i}.wav") for i, spk in enumerate(["zed", "amy", "bob", "amy", "zed"])]
    index = speaker_index(utts)
    assert index == {name: i for i, name in enumerate(sorted({u.spk for u in utts}))}
    assert sorted(index.values()) == list(range(len(index)))
    assert speaker_index(reversed(utts)) == index


# --------------------------------------------------------------------------------------------------
# Trial lists.


def test_voxceleb_trials(tmp_path):
    f = write(tmp_path / "veri_test.txt", "1 id1/a.wav id1/b.wav\n0 id1/a.wav id2/c.wav\n")
    assert read_trials(f) == [Trial("id1/a.wav", "id1/b.wav", 1), Trial("id1/a.wav", "id2/c.wav", 0)]


def test_kaldi_trials(tmp_path):
    f = write(tmp_path / "trials", "# kaldi\n\na b target\na c nontarget\n")
    assert read_trials(f) == [Trial("a", "b", 1), Trial("a", "c", 0)]


def test_kaldi_trials_with_utterance_named_like_a_label(tmp_path):
    # "0 b target" would also fit VoxCeleb, but the file's format (from line 1) decides.
    f = write(tmp_path / "trials", "a b target\n0 b nontarget\n")
    assert read_trials(f) == [Trial("a", "b", 1), Trial("0", "b", 0)]


def test_unlabelled_trials(tmp_path):
    f = write(tmp_path / "trials", "a b\nc d\n")
    assert read_trials(f) == [Trial("a", "b", None), Trial("c", "d", None)]


@pytest.mark.parametrize(
    ("text", "lineno", "fragments"),
    [
        ("1 a b\n0 a c\n2 a d\n", 3, ["label must be 0 or 1, found '2'", "VoxCeleb format, detected from line 1"]),
        ("a b target\na c yes\n", 2, ["label must be 'target' or 'nontarget', found 'yes'", "Kaldi format"]),
        ("1 a b\na c target\n", 2, ["line is in Kaldi format but the file is in VoxCeleb format", "one format"]),
        (
            "\n1 a b\na c\n",
            3,
            ["line is in unlabelled format but the file is in VoxCeleb format, detected from line 2"],
        ),
        ("a b\nc d e\n", 2, ["expected 2 columns 'enroll test' (unlabelled format", "found 3"]),
        ("1 a b\n1 a b c\n", 2, ["expected 3 columns 'label enroll test' with label 0/1", "found 4"]),
        ("a b c d\n", 1, ["cannot tell the trial format from 4 columns", "(Kaldi)", "(unlabelled)"]),
        ("x a b\n", 1, ["cannot tell the trial format from 3 columns", "(VoxCeleb)"]),
    ],
)
def test_trial_format_errors(tmp_path, text, lineno, fragments):
    f = write(tmp_path / "trials.txt", text)
    with pytest.raises(ListFormatError) as exc:
        read_trials(f)
    assert_line_error(exc, f, lineno, *fragments)
    assert "(fix the line" in str(exc.value) or "(use one format" in str(exc.value)


def test_missing_and_empty_trial_files(tmp_path):
    with pytest.raises(VoxfastError, match="trial file not found"):
        read_trials(tmp_path / "nope.txt")
    with pytest.raises(VoxfastError, match="no trials"):
        read_trials(write(tmp_path / "empty.txt", "\n# nothing\n"))


@pytest.mark.parametrize("labels", [[1, 0, 1], [None, None, None]])
def test_trials_round_trip(tmp_path, labels):
    trials = [Trial(f"e{i}.wav", f"t{i}.wav", lab) for i, lab in enumerate(labels)]
    f = tmp_path / "out" / "trials.txt"
    write_trials(f, trials)
    assert read_trials(f) == trials
    assert os.listdir(f.parent) == ["trials.txt"]  # no temp file left behind


def test_kaldi_trials_convert_to_voxceleb(tmp_path):
    kaldi = write(tmp_path / "trials", "a b target\na c nontarget\n")
    out = tmp_path / "vox.txt"
    write_trials(out, read_trials(kaldi))
    assert out.read_text().splitlines() == ["1 a b", "0 a c"]
    assert read_trials(out) == read_trials(kaldi)


def test_write_trials_rejects_bad_input(tmp_path):
    with pytest.raises(VoxfastError, match="mix of labelled and unlabelled"):
        write_trials(tmp_path / "t.txt", [Trial("a", "b", 1), Trial("a", "c", None)])
    with pytest.raises(VoxfastError, match="label must be 0 or 1"):
        write_trials(tmp_path / "t.txt", [Trial("a", "b", 2)])
    with pytest.raises(VoxfastError, match="without spaces"):
        write_trials(tmp_path / "t.txt", [Trial("a b", "c", 1)])
    assert not (tmp_path / "t.txt").exists()
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# Writing lists and scores.


def test_voxceleb_list_round_trip(tmp_path):
    root = tmp_path / "wav"
    utts = [
        Utterance("a", "s1", str(root / "s1" / "a.wav")),
        Utterance("b", "s2", str(root / "s2" / "b.wav")),
        Utterance("c", "s2", str(tmp_path / "elsewhere" / "c.wav")),
    ]
    f = tmp_path / "lists" / "train.txt"
    write_voxceleb_list(f, utts, root)
    assert f.read_text().splitlines()[:2] == ["s1 s1/a.wav", "s2 s2/b.wav"]
    back = read_voxceleb_list(f, root)
    assert [(u.spk, u.path) for u in back] == [(u.spk, u.path) for u in utts]
    assert [u.utt for u in back] == [os.path.relpath(u.path, root) for u in utts]


def test_voxceleb_list_round_trip_default_root(tmp_path):
    utts = read_voxceleb_list(write(tmp_path / "d" / "train.txt", "s1 x/a.wav\ns2 y/b.wav\n"))
    out = tmp_path / "d" / "copy.txt"
    write_voxceleb_list(out, utts)
    assert read_voxceleb_list(out) == utts


def test_scores_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    trials = [Trial(f"e{i}", f"t{i}", i % 2) for i in range(50)]
    scores = rng.normal(size=50).astype(np.float32)
    f = tmp_path / "scores.txt"
    write_scores(f, trials, scores)
    lines = f.read_text().splitlines()
    assert lines[3] == f"e3 t3 {float(scores[3]):.6f}"
    pairs, back = read_scores(f)
    assert pairs == [(t.enroll, t.test) for t in trials]
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, scores, atol=5e-7)
    # Tuples from read_scores are accepted too, and the file reproduces byte for byte.
    f2 = tmp_path / "scores2.txt"
    write_scores(f2, pairs, back)
    assert f2.read_text() == f.read_text()


def test_write_scores_length_mismatch(tmp_path):
    with pytest.raises(VoxfastError, match="2 trials but 3 scores"):
        write_scores(tmp_path / "s.txt", [Trial("a", "b", 1), Trial("a", "c", 0)], np.zeros(3))


@pytest.mark.parametrize(
    ("text", "lineno", "fragment"),
    [
        ("a b 0.5\na c\n", 2, "expected 3 columns 'enroll test score', found 2"),
        ("a b 0.5\na c 0.1 1\n", 2, "found 4"),
        ("a b 0.5\n\na c high\n", 3, "score is not a number: 'high'"),
    ],
)
def test_score_file_errors(tmp_path, text, lineno, fragment):
    f = write(tmp_path / "scores.txt", text)
    with pytest.raises(ListFormatError) as exc:
        read_scores(f)
    assert_line_error(exc, f, lineno, fragment, "fix the line or delete it")


def test_missing_score_file(tmp_path):
    with pytest.raises(VoxfastError, match="score file not found"):
        read_scores(tmp_path / "scores.txt")


def test_exact_duplicate_trials_are_counted_once_and_reported_with_their_lines(tmp_path, caplog):
    path = tmp_path / "t.txt"
    path.write_text("1 a.wav b.wav\n0 a.wav c.wav\n1 a.wav b.wav\n0 c.wav a.wav\n0 a.wav c.wav\n")
    trials = read_trials(path)
    assert [(t.enroll, t.test, t.label) for t in trials] == [("a.wav", "b.wav", 1), ("a.wav", "c.wav", 0),
                                                             ("c.wav", "a.wav", 0)]  # the reversed pair is another
    assert "2 exact duplicate trial(s) ignored, at lines 3 (= 1), 5 (= 2)" in caplog.text


def test_a_pair_with_two_labels_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 a.wav b.wav\n0 a.wav c.wav\n0 a.wav b.wav\n")
    with pytest.raises(ListFormatError, match=r"t.txt:3: this pair has label 0 here and 1 on line 1"):
        read_trials(path)


def test_lists_and_store_metadata_get_normal_permissions(tmp_path):
    import os
    import stat

    from voxfast.fileio import atomic_text

    old = os.umask(0o022)
    try:
        write_trials(tmp_path / "t.txt", [Trial("a.wav", "b.wav", 1)])
        with atomic_text(tmp_path / "meta.json") as f:
            f.write("{}")
    finally:
        os.umask(old)
    for name in ("t.txt", "meta.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "t.txt"]  # no temp file left


@pytest.mark.parametrize("value", ["nan", "inf", "-1e400"])
def test_a_non_finite_score_names_its_line(tmp_path, value):
    path = tmp_path / "scores.txt"
    path.write_text(f"a b 0.5\na c {value}\n")
    with pytest.raises(ListFormatError, match=rf"scores.txt:2: score is not finite: '{re.escape(value)}'"):
        read_scores(path)
