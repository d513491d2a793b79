import numpy as np
import pytest
import soundfile as sf

from voxfast.audio.features import crop_samples
from voxfast.audio.io import read_audio, read_random_crop
from voxfast.data.manifest import Utterance
from voxfast.data.speaker import EpochSampler, TrainCrops, collate_crops
from voxfast.errors import AudioLoadError, VoxfastError


def _wav(path, n, sr=16000):
    x = (np.arange(n) % 1000 / 1000.0 - 0.5).astype(np.float32)
    sf.write(path, x, sr, subtype="FLOAT")
    return x


def test_crop_length_matches_voxceleb_trainer():
    assert crop_samples(200) == 32240


def test_random_crop_reads_the_right_samples(tmp_path):
    x = _wav(tmp_path / "a.wav", 5000)
    for seed in range(5):
        crop = read_random_crop(tmp_path / "a.wav", 1200, np.random.default_rng(seed))
        start = int(np.random.default_rng(seed).integers(0, 5000 - 1200 + 1))
        np.testing.assert_array_equal(crop, x[start : start + 1200])


def test_short_file_is_wrap_padded(tmp_path):
    x = _wav(tmp_path / "short.wav", 700)
    crop = read_random_crop(tmp_path / "short.wav", 1500, np.random.default_rng(0))
    np.testing.assert_array_equal(crop, np.concatenate([x, x, x[:100]]))


def test_bad_files_raise_audio_load_errors(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioLoadError, match=r"junk\.wav"):
        read_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="NaN"):
        read_audio(tmp_path / "nan.wav")
    _wav(tmp_path / "8k.wav", 100, sr=8000)
    with pytest.raises(AudioLoadError, match="sample rate 8000 Hz, expected 16000"):
        read_audio(tmp_path / "8k.wav", sample_rate=16000)


def test_stereo_is_downmixed(tmp_path):
    stereo = np.stack([np.full(10, 0.2), np.full(10, 0.6)], axis=1).astype(np.float32)
    sf.write(tmp_path / "st.wav", stereo, 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "st.wav"), np.full(10, 0.4), rtol=1e-6)


def test_sampler_is_a_seeded_permutation_per_epoch():
    s = EpochSampler(50, seed=7)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(50))
    assert first == list(EpochSampler(50, seed=7))
    s.set_epoch(1)
    second = list(s)
    assert [i for i, _ in second] != [i for i, _ in first]
    assert len({d for _, d in first + second}) == 100  # every draw has its own crop seed


def test_unreadable_files_are_skipped_counted_and_bounded(tmp_path):
    _wav(tmp_path / "ok.wav", 4000)
    utts = [Utterance("ok", "s1", str(tmp_path / "ok.wav"))] + [
        Utterance(f"bad{i}", "s2", str(tmp_path / f"missing{i}.wav")) for i in range(3)
    ]
    ds = TrainCrops(utts, {"s1": 0, "s2": 1}, 1000, max_consecutive_failures=3)
    batch = collate_crops([ds[(0, 1)], ds[(1, 2)], ds[(2, 3)]])
    assert batch["wave"].shape == (1, 1000) and batch["failed"] == 2 and batch["label"].tolist() == [0]
    assert ds[(0, 4)] is not None  # a good read resets the run of failures
    ds[(1, 5)]
    ds[(2, 6)]
    with pytest.raises(VoxfastError, match="3 audio files in a row failed"):
        ds[(3, 7)]
