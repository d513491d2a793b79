import logging

import numpy as np
import pytest
import soundfile as sf

import voxfast.audio.io as io
from voxfast.audio.io import read_audio, read_random_crop


@pytest.mark.parametrize("fmt, subtype, tol", [("WAV", "PCM_16", 1 / 32768), ("FLAC", "PCM_16", 1 / 32768),
                                               ("OGG", "VORBIS", 0.05)])
def test_every_libsndfile_format_reads_as_float32(tmp_path, fmt, subtype, tol):
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    whole = read_audio(path, sample_rate=16000)
    assert whole.dtype == np.float32 and len(whole) == len(x)
    assert np.max(np.abs(whole[2000:14000] - x[2000:14000])) <= tol  # lossy vorbis: loose, PCM: one step
    part = read_audio(path, start=1000, frames=500)
    np.testing.assert_array_equal(part, whole[1000:1500])
    crop = read_random_crop(path, 800, np.random.default_rng(0), 16000, dtype="int16")
    assert crop.dtype == np.int16 and len(crop) == 800


def test_multichannel_warning_is_given_once_per_run(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(io, "_warned_multichannel", False)
    stereo = np.zeros((100, 2), dtype=np.float32)
    sf.write(tmp_path / "st.wav", stereo, 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            read_audio(tmp_path / "st.wav")
    assert sum("channels" in r.getMessage() for r in caplog.records) == 1


def test_nan_in_a_float_file_is_caught_even_for_int16_reads(tmp_path):
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 600, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(io.AudioLoadError, match="NaN"):
        read_random_crop(tmp_path / "nan.wav", 1000, np.random.default_rng(0), 16000, dtype="int16")


def test_empty_file_is_an_audio_load_error(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(io.AudioLoadError, match=r"empty\.wav"):
        read_random_crop(tmp_path / "empty.wav", 100, np.random.default_rng(0), 16000)


def test_find_audio_files_lists_every_audio_file_below_a_folder_sorted(tmp_path):
    for rel in ("b/z.FLAC", "b/a.wav", "a.ogg", "c/d/e.Wav", "notes.txt", "b/x.mp3"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "folder.wav").mkdir()  # a folder is not a file, whatever its name
    found = io.find_audio_files(str(tmp_path))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.ogg", "b/a.wav", "b/z.FLAC", "c/d/e.Wav"]
    assert io.find_audio_files(tmp_path / "c") == [tmp_path / "c" / "d" / "e.Wav"]
    assert io.AUDIO_SUFFIXES_TEXT == ".wav, .flac, .ogg, .m4a or .mp4"


def test_int16_conversions_are_exact_inverses_on_the_pcm16_scale():
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    floats = io.to_float32(pcm)
    np.testing.assert_array_equal(floats, pcm.astype(np.float64) / io.PCM16_SCALE)
    np.testing.assert_array_equal(io.to_int16(floats), pcm)
    clipped_and_rounded = io.to_int16(np.array([1.0, -1.5, 2.5 / io.PCM16_SCALE], np.float32))
    np.testing.assert_array_equal(clipped_and_rounded, [32767, -32768, 2])  # ties round to even
