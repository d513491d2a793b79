"""`prepare voxceleb`: training lists of vox1 / vox2 / both, and official trial lists converted to absolute paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.prepare.trees import read_json, vox_tree
from voxfast.audio.io import AUDIO_SUFFIXES
from voxfast.data.manifest import read_trials, read_utterances
from voxfast.errors import ListFormatError, VoxfastError
from voxfast.prepare import CommonOptions
from voxfast.prepare.voxceleb import MISSING_TRIALS, VoxcelebOptions, prepare_voxceleb, trial_name

VOX1 = {"id10270": {"x6uYqmx31kE": 2, "8jEAjG6SegY": 2}, "id10271": {"1gtz-CUIygI": 3},
        "id10001": {"1zcIwhmdeo4": 2}, "id10002": {"0_laIeN-Q44": 2}}
VOX2 = {"id00012": {"21Uxsk56VDQ": 2, "2DLq_Kkc1r8": 1}, "id00015": {"0fijmz4vTVU": 2}}
OFFICIAL = """1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00002.wav
0 id10270/x6uYqmx31kE/00002.wav id10271/1gtz-CUIygI/00003.wav
1 id10271/1gtz-CUIygI/00001.wav id10271/1gtz-CUIygI/00002.wav
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    vox_tree(tmp_path / "data" / "voxceleb1" / "wav", VOX1)
    vox_tree(tmp_path / "data" / "voxceleb2" / "dev" / "aac", VOX2, seed=50_000)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "veri_test2.txt").write_text(OFFICIAL)
    return tmp_path


def _speakers(out: Path) -> set[str]:
    return {u.spk for u in read_utterances(out / "train_list.txt")}


def test_official_trials_become_absolute_label_enroll_test_lists(data: Path) -> None:
    out = data / "out"
    options = VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1")], vox2=str(data / "data" / "voxceleb2"),
                              trials=[str(data / "lists" / "veri_test2.txt")])
    result = prepare_voxceleb(data / "data", out, options)
    trials = read_trials(out / "trials" / "vox1_O.txt")
    assert [t.label for t in trials] == [1, 0, 1]
    wav = (data / "data" / "voxceleb1" / "wav").resolve()
    assert trials[0].enroll == str(wav / "id10270/x6uYqmx31kE/00001.wav")
    assert all(os.path.isabs(p) and os.path.isfile(p) for t in trials for p in (t.enroll, t.test))
    report = read_json(out)
    assert report["counts"]["trials"]["vox1_O"] == {"trials": 3, "target": 2, "nontarget": 1, "dropped": 0}
    assert f"eval.trials={out.resolve() / 'trials' / 'vox1_O.txt'}" in report["overrides"]
    assert report["overrides"][0] == f"data.train_list={out.resolve() / 'train_list.txt'}"
    assert report == result.to_json()


@pytest.mark.parametrize(("train", "speakers"), [
    (None, {"id00012", "id00015"}),
    ("vox2", {"id00012", "id00015"}),
    ("vox1", {"id10001", "id10002"}),  # the trial speakers id10270, id10271 are held out
    ("vox1+vox2", {"id10001", "id10002", "id00012", "id00015"}),
])
def test_training_lists_of_each_part_leave_trial_speakers_out(data: Path, train: str | None,
                                                               speakers: set[str]) -> None:
    out = data / "out"
    options = VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1")], vox2=str(data / "data" / "voxceleb2"),
                              train=train, trials=[str(data / "lists" / "veri_test2.txt")])
    prepare_voxceleb(data / "data", out, options)
    utts = read_utterances(out / "train_list.txt")
    assert {u.spk for u in utts} == speakers
    assert all(os.path.isabs(u.path) and os.path.isfile(u.path) for u in utts)
    counts = read_json(out)["counts"]
    assert counts["train"]["speakers"] == len(speakers)
    assert counts["train"]["excluded_trial_speakers"] == (2 if "vox1" in (train or "") else 0)


def test_vox1_without_trials_trains_on_every_speaker(data: Path) -> None:
    prepare_voxceleb(data / "data", data / "out", VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1")]))
    assert _speakers(data / "out") == set(VOX1)
    assert read_json(data / "out")["counts"]["vox1"] == {"speakers": 4, "utterances": 11}


def test_the_wav_and_aac_folders_themselves_and_the_search_under_src(data: Path) -> None:
    direct = VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1" / "wav")],
                             vox2=str(data / "data" / "voxceleb2" / "dev" / "aac"), train="vox1+vox2")
    prepare_voxceleb(data / "data", data / "a", direct)
    prepare_voxceleb(data / "data", data / "b", VoxcelebOptions(train="vox1+vox2"))  # found under SRC
    assert (data / "a" / "train_list.txt").read_text() == (data / "b" / "train_list.txt").read_text()
    assert _speakers(data / "a") == set(VOX1) | set(VOX2)


def test_missing_trial_files_are_listed_with_their_lines_and_fail(data: Path) -> None:
    trials = data / "lists" / "list_test_hard2.txt"
    trials.write_text("# comment\n" + OFFICIAL + "0 id10270/x6uYqmx31kE/00001.wav id10299/nope/00001.wav\n")
    options = VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1")], trials=[str(trials)])
    with pytest.raises(VoxfastError, match=r"1 trial file\(s\) are not under") as info:
        prepare_voxceleb(data / "data", data / "out", options)
    assert MISSING_TRIALS in str(info.value) and "--allow-missing" in str(info.value)
    listed = (data / "out" / MISSING_TRIALS).read_text()
    assert f"{trials}:5: id10299/nope/00001.wav" in listed
    assert not (data / "out" / "prepare.json").exists()

    common = CommonOptions(allow_missing=True)
    prepare_voxceleb(data / "data", data / "out", options, common)
    report = read_json(data / "out")
    assert report["counts"]["trials"]["vox1_H"]["dropped"] == 1
    assert len(read_trials(data / "out" / "trials" / "vox1_H.txt")) == 3
    assert any(MISSING_TRIALS in p for p in report["problems"])


def test_a_malformed_trial_line_names_file_and_line(data: Path) -> None:
    trials = data / "lists" / "veri_test2.txt"
    trials.write_text(OFFICIAL + "2 a b\n")
    options = VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1")], trials=[str(trials)])
    with pytest.raises(ListFormatError, match=r"veri_test2.txt:4:"):
        prepare_voxceleb(data / "data", data / "out", options)


def test_training_on_vox1_with_trials_over_all_of_it_fails_clearly(data: Path) -> None:
    every = data / "lists" / "list_test_all2.txt"
    every.write_text(OFFICIAL + "0 id10001/1zcIwhmdeo4/00001.wav id10002/0_laIeN-Q44/00001.wav\n")
    options = VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1")], trials=[str(every)])
    with pytest.raises(VoxfastError, match="train on VoxCeleb2"):
        prepare_voxceleb(data / "data", data / "out", options)


def test_requested_parts_must_exist(data: Path) -> None:
    with pytest.raises(VoxfastError, match="needs a VoxCeleb2 tree"):
        prepare_voxceleb(data / "data", data / "out", VoxcelebOptions(vox1=[str(data / "data" / "voxceleb1")],
                                                                      train="vox2"))
    with pytest.raises(VoxfastError, match="no VoxCeleb tree under"):
        prepare_voxceleb(data / "lists", data / "out", VoxcelebOptions())


def test_trial_names() -> None:
    assert [trial_name(f"x/{n}") for n in ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")] == [
        "vox1_O", "vox1_E", "vox1_H"]
    assert trial_name("veri_test.txt") == "vox1_O_orig" and trial_name("list_test_hard.txt") == "vox1_H_orig"
    assert trial_name("/a/my_trials.txt") == "my_trials"


def _write_m4a(path: Path, seconds: float = 0.3, rate: int = 16000) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 3000).astype(np.int16)[None, :]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_real_m4a_files_of_voxceleb2_are_listed(tmp_path: Path) -> None:
    pytest.importorskip("av")
    if ".m4a" not in AUDIO_SUFFIXES:
        pytest.skip("voxfast.audio.io does not list .m4a yet")
    aac = tmp_path / "vox2" / "dev" / "aac"
    for spk, video in (("id00012", "21Uxsk56VDQ"), ("id00015", "0fijmz4vTVU")):
        _write_m4a(aac / spk / video / "00001.m4a")
    prepare_voxceleb(tmp_path, tmp_path / "out", VoxcelebOptions(vox2=str(tmp_path / "vox2")))
    utts = read_utterances(tmp_path / "out" / "train_list.txt")
    assert [Path(u.path).suffix for u in utts] == [".m4a", ".m4a"] and {u.spk for u in utts} == {"id00012", "id00015"}
