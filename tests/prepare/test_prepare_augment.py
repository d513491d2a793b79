"""`prepare musan` / `rirs`: the folders (or stores) NoiseBank reads, counts per category, and the overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prepare.trees import read_json, write_wav
from voxfast.audio.store import PackedStore
from voxfast.errors import VoxfastError
from voxfast.prepare import CommonOptions
from voxfast.prepare.augment_data import MUSAN_CATEGORIES, AugmentDataOptions, prepare_musan, prepare_rirs

MUSAN = {"music/fma/music-fma-0000.wav": 1, "music/fma/music-fma-0001.wav": 2, "noise/free-sound/noise-0000.wav": 3,
         "speech/librivox/speech-0000.wav": 4, "speech/us-gov/speech-0001.wav": 5, "speech/us-gov/speech-0002.wav": 6}


def _musan(root: Path) -> Path:
    for rel, seed in MUSAN.items():
        write_wav(root / "musan" / rel, seed=seed)
    (root / "musan" / "README").write_text("not audio")
    return root / "musan"


def _rirs_noises(root: Path) -> Path:
    base = root / "RIRS_NOISES"
    for k, rel in enumerate(["smallroom/Room001/Room001-00001.wav", "smallroom/Room001/Room001-00002.wav",
                             "mediumroom/Room001/Room001-00001.wav"]):
        write_wav(base / "simulated_rirs" / rel, seconds=0.02, seed=k)
    real = base / "real_rirs_isotropic_noises"
    write_wav(real / "air_type1_air_binaural_lecture_0_1.wav", seconds=0.02, seed=10)
    write_wav(real / "RVB2014_type1_rir_largeroom1_near_angla.wav", seconds=0.02, seed=11, channels=2)
    write_wav(real / "RVB2014_type1_noise_largeroom1_1.wav", seconds=0.02, seed=12)  # a noise, not an RIR
    (real / "rir_list").write_text(
        "--rir-id air_1 --room-id air_lecture RIRS_NOISES/real_rirs_isotropic_noises/"
        "air_type1_air_binaural_lecture_0_1.wav\n"
        "--rir-id rvb_1 --room-id largeroom1 RIRS_NOISES/real_rirs_isotropic_noises/"
        "RVB2014_type1_rir_largeroom1_near_angla.wav\n")
    return base


def test_musan_is_checked_and_counted_in_place(tmp_path: Path) -> None:
    musan = _musan(tmp_path)
    result = prepare_musan(tmp_path, tmp_path / "out")  # finds SRC/musan
    report = read_json(tmp_path / "out")
    assert {c: report["counts"][c]["files"] for c in MUSAN_CATEGORIES} == {"music": 2, "noise": 1, "speech": 3}
    assert report["overrides"] == [f"augment.noise_dir={musan.resolve()}"]
    assert report == result.to_json()


def test_musan_packed_store_loads_as_the_folder_does(tmp_path: Path) -> None:
    from voxfast.audio.augment import CATEGORIES, NoiseBank

    assert sorted(CATEGORIES) == list(MUSAN_CATEGORIES)
    musan = _musan(tmp_path)
    prepare_musan(musan, tmp_path / "out", AugmentDataOptions(pack=True, workers=0))
    report = read_json(tmp_path / "out")
    store = tmp_path.resolve() / "out" / "noise_store"
    assert report["overrides"] == [f"augment.noise_dir={store}"] and PackedStore(store).dtype == "int16"
    packed, folder = NoiseBank.from_dirs(str(store), None), NoiseBank.from_dirs(str(musan), None)
    for category in CATEGORIES:
        assert [len(w) for w in packed.categories[category]] == [len(w) for w in folder.categories[category]]


def test_a_missing_musan_category_fails_unless_allowed(tmp_path: Path) -> None:
    musan = _musan(tmp_path)
    for f in (musan / "noise").rglob("*.wav"):
        f.unlink()
    with pytest.raises(VoxfastError, match=r"MUSAN noise/ is missing.*--allow-missing"):
        prepare_musan(musan, tmp_path / "out")
    prepare_musan(musan, tmp_path / "out", common=CommonOptions(allow_missing=True))
    assert any("noise/" in p for p in read_json(tmp_path / "out")["problems"])


def test_other_sample_rates_fail_in_place_and_are_resampled_by_a_pack(tmp_path: Path) -> None:
    musan = _musan(tmp_path)
    write_wav(musan / "noise" / "free-sound" / "noise-8k.wav", rate=8000)
    with pytest.raises(VoxfastError, match=r"1 not at 16000 Hz.*--pack"):
        prepare_musan(musan, tmp_path / "out")
    assert "noise-8k.wav: 8000 Hz" in (tmp_path / "out" / "audio_problems.txt").read_text()
    result = prepare_musan(musan, tmp_path / "out", AugmentDataOptions(pack=True, workers=0))
    assert result.counts["packed"]["files"] == 7 and any("resampled" in line for line in result.summary)


def test_simulated_rirs_are_used_in_place(tmp_path: Path) -> None:
    base = _rirs_noises(tmp_path)
    prepare_rirs(tmp_path, tmp_path / "out")  # finds SRC/RIRS_NOISES
    report = read_json(tmp_path / "out")
    assert report["overrides"] == [f"augment.rir_dir={base.resolve() / 'simulated_rirs'}"]
    assert report["counts"]["simulated_rirs"]["files"] == 3


def test_real_and_simulated_rirs_are_linked_or_packed_without_the_noises(tmp_path: Path) -> None:
    from voxfast.audio.augment import NoiseBank

    base = _rirs_noises(tmp_path)
    result = prepare_rirs(base, tmp_path / "out", AugmentDataOptions(rirs="both"))
    links = tmp_path.resolve() / "out" / "rirs"
    assert result.overrides == [f"augment.rir_dir={links}"]
    names = sorted(p.relative_to(links).as_posix() for p in links.rglob("*.wav"))
    assert len(names) == 5 and not any("noise" in n for n in names) and names[0].startswith("real/")
    assert result.counts["real_rirs"]["files"] == 2
    prepare_rirs(base, tmp_path / "out", AugmentDataOptions(rirs="both"))  # re-run replaces its own links

    prepare_rirs(base, tmp_path / "packed", AugmentDataOptions(rirs="both", pack=True, workers=0))
    store = tmp_path.resolve() / "packed" / "rir_store"
    assert PackedStore(store).dtype == "float32" and len(PackedStore(store).utts) == 5
    assert len(NoiseBank.from_dirs(None, str(store)).rirs) == len(NoiseBank.from_dirs(None, str(links)).rirs) == 5


def test_real_rirs_need_their_list(tmp_path: Path) -> None:
    base = _rirs_noises(tmp_path)
    (base / "real_rirs_isotropic_noises" / "rir_list").unlink()
    with pytest.raises(VoxfastError, match="rir_list not found"):
        prepare_rirs(base, tmp_path / "out", AugmentDataOptions(rirs="real"))
