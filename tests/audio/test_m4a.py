"""AAC in .m4a (VoxCeleb2) through PyAV: the same samples, lengths, checks and store as the soundfile path.

The m4a files are encoded here with PyAV's AAC encoder; AAC is lossy, so the decode is compared with its
source by length and SNR, and with a WAV of the very samples it decodes to for everything voxfast does after.
"""

from __future__ import annotations

import logging
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

import voxfast.audio.io as io
from voxfast.audio import av_decode
from voxfast.audio.io import audio_info, read_audio, read_random_crop, to_float32, to_int16
from voxfast.audio.store import PackedStore, pack_store
from voxfast.data.manifest import Utterance
from voxfast.data.speaker import FileSource
from voxfast.errors import AudioLoadError, VoxfastError

SR = 16000


def tones(n: int, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A few sinusoids under a syllable-rate envelope: speech-like enough for AAC, no numba compile."""
    t = np.arange(n) / sr
    freqs = np.random.default_rng(seed).uniform(150, 3500, 4)
    x = sum(a * np.sin(2 * np.pi * f * t) for a, f in zip((0.3, 0.2, 0.1, 0.05), freqs, strict=True))
    return (x * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def write_m4a(path: Path, x: np.ndarray, sr: int = SR) -> str:
    """x (n,) or (n, 2) as AAC in MP4. pts 0 on the frame, so the muxer writes the edit list that hides the
    encoder's 1024 priming samples (without it they would be part of the media, as in the file's own view)."""
    layout = "mono" if x.ndim == 1 else "stereo"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.atleast_2d(x.T)), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = sr, 0, Fraction(1, sr)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return str(path)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - test) ** 2)))


def best_lag(ref: np.ndarray, test: np.ndarray, max_lag: int) -> int:
    """The shift of `test` against `ref` (positive: test is late) with the largest cross-correlation."""
    n = len(ref) - 2 * max_lag
    scores = [float(np.dot(ref[max_lag : max_lag + n], test[max_lag + lag : max_lag + lag + n]))
              for lag in range(-max_lag, max_lag + 1)]
    return int(np.argmax(scores)) - max_lag


def test_m4a_decodes_to_the_source_length_aligned_and_close(tmp_path):
    x = tones(int(1.3 * SR))
    path = write_m4a(tmp_path / "a.m4a", x)
    y = read_audio(path, sample_rate=SR)
    # FFmpeg drops the 1024 priming samples (edit list) but decodes the last frame whole (448 padding samples
    # here); cutting to the container's duration gives exactly the encoder's input length.
    assert y.dtype == np.float32 and len(y) == len(x) and audio_info(path) == (len(x), SR)
    assert best_lag(x, y, 1100) == 0  # priming gone: no 1024-sample offset
    assert snr_db(x, y) > 20  # measured 28.5 dB (FFmpeg 8.1 AAC, 16 kHz mono default bitrate)
    assert np.abs(y).max() <= 1


def test_frame_ranges_are_slices_of_the_whole_decode(tmp_path):
    path = write_m4a(tmp_path / "a.m4a", tones(SR))
    whole = read_audio(path)
    np.testing.assert_array_equal(read_audio(path, start=3000, frames=700), whole[3000:3700])
    np.testing.assert_array_equal(read_audio(path, start=-500), whole[-500:])
    np.testing.assert_array_equal(read_audio(path, frames=100), whole[:100])


def test_crops_equal_those_of_a_wav_of_the_decoded_samples_and_warn_once(tmp_path, caplog, monkeypatch):
    m4a = write_m4a(tmp_path / "a.m4a", tones(SR))
    wav = tmp_path / "a.wav"
    sf.write(wav, read_audio(m4a), SR, subtype="FLOAT")
    monkeypatch.setattr(io, "_warned_compressed_crops", False)
    with caplog.at_level(logging.WARNING):
        for dtype in ("float32", "int16", "native"):
            got = read_random_crop(m4a, 4000, np.random.default_rng(7), SR, dtype=dtype)
            want = read_random_crop(wav, 4000, np.random.default_rng(7), SR, dtype=dtype)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert sum("voxfast pack" in r.getMessage() for r in caplog.records) == 1
    out = np.empty(4000, dtype=np.float32)
    FileSource([m4a], SR).random_crop_into(0, np.random.default_rng(7), out)
    np.testing.assert_array_equal(out, read_random_crop(wav, 4000, np.random.default_rng(7), SR))


def test_a_44k_stereo_m4a_is_downmixed_resampled_or_rejected_as_a_wav_is(tmp_path):
    n = int(0.5 * 44100)
    stereo = np.stack([tones(n, 44100, 1), tones(n, 44100, 2)], axis=1)
    m4a = write_m4a(tmp_path / "st.m4a", stereo, 44100)
    decoded, rate = av_decode.decode(m4a)
    assert rate == 44100 and decoded.shape == (n, 2)
    wav = tmp_path / "st.wav"
    sf.write(wav, decoded, 44100, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(m4a), read_audio(wav))
    np.testing.assert_array_equal(read_audio(m4a), decoded.mean(axis=1, dtype=np.float32))
    with pytest.raises(AudioLoadError, match=r"st\.m4a: sample rate 44100 Hz, expected 16000 Hz"):
        read_audio(m4a, sample_rate=SR)
    crop = [read_random_crop(p, 3000, np.random.default_rng(3), SR, resample_mismatch=True) for p in (m4a, wav)]
    np.testing.assert_array_equal(*crop)
    utts = [Utterance("m", "s", m4a), Utterance("w", "s", str(wav))]
    assert pack_store(utts, tmp_path / "store", SR, workers=0, dtype="float32", progress=False).packed == 2
    store = PackedStore(tmp_path / "store")
    assert store.lengths.tolist() == [SR // 2] * 2 and store.source_rates.tolist() == [44100] * 2
    np.testing.assert_array_equal(store.read(0), store.read(1))


def test_pack_store_packs_wav_and_m4a_side_by_side_and_lists_corrupt_ones(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, tones(SR, seed=1), SR, subtype="PCM_16")
    m4a = write_m4a(tmp_path / "b.M4A", tones(int(1.2 * SR), seed=2))
    (tmp_path / "bad.m4a").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "empty.m4a").write_bytes(b"")
    utts = [Utterance(u, "s", str(p)) for u, p in
            (("a", wav), ("bad", tmp_path / "bad.m4a"), ("b", m4a), ("empty", tmp_path / "empty.m4a"))]
    summary = pack_store(utts, tmp_path / "store", SR, workers=0, progress=False)
    assert summary.packed == 2 and [p for p, _ in summary.bad] == [utts[1].path, utts[3].path]
    assert all("cannot read audio" in reason for _, reason in summary.bad)
    store = PackedStore(tmp_path / "store")
    for i, path in enumerate((str(wav), m4a)):
        want = to_float32(to_int16(read_audio(path, sample_rate=SR)))  # the int16 store's rounding; exact for WAV
        np.testing.assert_array_equal(store.read(i), want)
        np.testing.assert_array_equal(store.crop(i, 1234, 5000), want[1234:6234])


def test_voxfast_pack_finds_m4a_files_in_a_folder(tmp_path):
    from voxfast.pipeline import pack  # what `voxfast pack SOURCE OUT` calls

    for spk, suffix in (("id00012", ".m4a"), ("id00015", ".mp4")):
        (tmp_path / "aac" / spk / "vid").mkdir(parents=True)
        write_m4a(tmp_path / "aac" / spk / "vid" / f"00001{suffix}", tones(SR // 2))
    assert pack(tmp_path / "aac", tmp_path / "store", workers=0).packed == 2
    store = PackedStore(tmp_path / "store")
    assert store.speakers == ["id00012", "id00015"]
    assert store.utts == ["id00012/vid/00001.m4a", "id00015/vid/00001.mp4"]
    assert ".m4a" in io.AUDIO_SUFFIXES and io.AUDIO_SUFFIXES_TEXT.endswith(".m4a or .mp4")


def test_without_pyav_reads_stop_with_the_install_command(tmp_path, monkeypatch):
    path = write_m4a(tmp_path / "a.m4a", tones(SR // 4))
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(VoxfastError, match=r'a\.m4a.*pip install "voxfast\[m4a\]"') as caught:
        read_audio(path)
    assert not isinstance(caught.value, AudioLoadError)  # not a bad file to skip: a pack must stop, not list it
    with pytest.raises(VoxfastError, match="voxfast"):
        pack_store([Utterance("a", "s", path)], tmp_path / "store", SR, workers=0, progress=False)
