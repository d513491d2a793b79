"""Columnar utterance lists: the table's columns agree with its Utterance view, and lookups by id."""

import os
import pickle

import numpy as np
import pytest

from voxfast.columns import StringColumn
from voxfast.data.manifest import Utterance, read_kaldi_dir, read_voxceleb_list, speaker_index
from voxfast.data.speaker import FileSource
from voxfast.data.utterances import PathColumn, positions_in, table_of
from voxfast.errors import ListFormatError


def test_speaker_codes_index_the_sorted_names_whatever_the_list_order(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("zed z/1.wav\nann a/1.wav\nzed z/2.wav\nbob b/1.wav\n")
    table = read_voxceleb_list(lst)
    assert table.speaker_names == ["ann", "bob", "zed"]
    assert table.speaker_codes.dtype == np.int32 and table.speaker_codes.tolist() == [2, 0, 2, 1]
    assert speaker_index(table) == {"ann": 0, "bob": 1, "zed": 2} == speaker_index(list(table))
    assert table[0] == Utterance("z/1.wav", "zed", str(tmp_path / "z" / "1.wav"))
    assert [u.spk for u in table.take(np.array([3, 1]))] == ["bob", "ann"]


def test_paths_are_resolved_on_access_like_the_old_reader(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("s ./a//b.wav\ns ../up.wav\ns /abs/c.wav\n")
    paths = read_voxceleb_list(lst, root=tmp_path / "r").paths
    assert isinstance(paths, PathColumn) and len(paths) == 3
    assert list(paths) == [str(tmp_path / "r" / "a" / "b.wav"), str(tmp_path / "up.wav"), "/abs/c.wav"]
    assert paths[1:] == [str(tmp_path / "up.wav"), "/abs/c.wav"]


def test_kaldi_speakers_follow_wav_scp_order_and_utt2spk_may_hold_more(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("u2 w/2.wav\nu1 w/1.wav\n")
    (d / "utt2spk").write_text("u0 x\nu1 a\nu2 b\n")
    table = read_kaldi_dir(d, root=tmp_path)
    assert [(u.utt, u.spk) for u in table] == [("u2", "b"), ("u1", "a")]
    assert table.speaker_names == ["a", "b"] and table.speaker_codes.tolist() == [1, 0]


def test_the_first_bad_line_is_named_whichever_kind_of_error_it_is(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("s a.wav\ns b.wav\ns a.wav\nonly-one-field\n")
    with pytest.raises(ListFormatError, match=r"list.txt:3: duplicate id 'a.wav' \(first on line 1\)"):
        read_voxceleb_list(lst)
    lst.write_text("s a.wav\nonly-one-field\ns a.wav\n")
    with pytest.raises(ListFormatError, match=r"list.txt:2: expected 2 columns 'speaker path', found 1"):
        read_voxceleb_list(lst)
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text("u1 a.wav\nu2 sox b.wav - |\n")
    (d / "utt2spk").write_text("u1 s\n")
    with pytest.raises(ListFormatError, match=r"wav.scp:2: command pipes are not supported"):
        read_kaldi_dir(d)


def test_positions_in_finds_ids_and_reports_missing_ones(tmp_path):
    table = table_of([Utterance(f"u{i}", f"s{i % 3}", f"/d/u{i}.wav") for i in range(10)])
    found = positions_in(table, StringColumn.from_strings(["u7", "nope", "u0", "u9"]))
    assert found.tolist() == [7, -1, 0, 9]
    assert table.speaker_names == ["s0", "s1", "s2"] and table[4].path == "/d/u4.wav"


def test_a_file_source_keeps_the_path_column_and_pickles_it_as_arrays(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"s{i % 4} d/{i}.wav\n" for i in range(100)))
    table = read_voxceleb_list(lst)
    source = FileSource(table.paths, 16000)
    assert source.paths is table.paths and len(source) == 100
    assert source.paths[42] == os.path.join(str(tmp_path), "d", "42.wav")
    clone = pickle.loads(pickle.dumps(source))  # what a spawned DataLoader worker receives
    assert isinstance(clone.paths.written.data, np.ndarray) and clone.paths[99] == source.paths[99]
