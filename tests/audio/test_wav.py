"""The PCM WAV fast path must give soundfile's samples, and hand every file it does not fully understand back."""

import os
import struct

import numpy as np
import pytest
import soundfile as sf

from voxfast.audio import io
from voxfast.audio.io import read_audio, read_random_crop
from voxfast.audio.wav import HEADER_BYTES, Pcm16Wav
from voxfast.errors import AudioLoadError


def _write(path, n=5000, channels=1, rate=16000, seed=0, **kw):
    wave = np.random.default_rng(seed).uniform(-0.9, 0.9, (n, channels))
    sf.write(path, wave, rate, **kw)
    return path


def _riff(chunks):
    pad = b"\0"
    body = b"WAVE" + b"".join(cid + struct.pack("<I", len(d)) + d + pad * (len(d) & 1) for cid, d in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(channels=1, rate=16000, bits=16, tag=1):
    return b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)


@pytest.mark.parametrize(("channels", "fmt"), [(1, "WAV"), (2, "WAV"), (1, "WAVEX"), (3, "WAVEX")])
def test_fast_reads_equal_soundfile_bit_for_bit(tmp_path, channels, fmt):
    path = _write(tmp_path / "a.wav", channels=channels, format=fmt, subtype="PCM_16")
    ref = sf.read(path, dtype="int16", always_2d=True)[0]
    with Pcm16Wav.open(path) as wav:
        assert (wav.samplerate, wav.channels, wav.frames) == (16000, channels, 5000)
        for start, frames in [(0, 5000), (123, 1000), (4990, 100), (5000, 10)]:
            np.testing.assert_array_equal(wav.read(start, frames), ref[start : start + frames])
    whole = read_audio(path)
    ref_float = sf.read(path, dtype="float32", always_2d=True)[0]
    np.testing.assert_array_equal(whole, ref_float.mean(axis=1, dtype=np.float32))
    np.testing.assert_array_equal(read_audio(path, start=77, frames=400), whole[77:477])


@pytest.mark.parametrize("dtype", ["int16", "float32"])
@pytest.mark.parametrize("n", [40000, 700])  # longer than the crop, and wrap-padded
def test_random_crops_equal_the_soundfile_path_for_the_same_draw(tmp_path, dtype, n):
    path = _write(tmp_path / "a.wav", n=n, subtype="PCM_16")
    for seed in range(5):
        fast_rng, slow_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        fast = read_random_crop(path, 3000, fast_rng, 16000, dtype=dtype)
        data, _ = io._soundfile_crop(path, 3000, slow_rng, 16000, False, dtype)
        slow = np.resize(data[:, 0], 3000)  # np.resize repeats: wrap padding
        assert fast.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(fast, slow)
        assert fast_rng.random() == slow_rng.random()  # the same number of draws


@pytest.mark.parametrize(
    ("name", "kw"),
    [("b.wav", {"subtype": "PCM_24"}), ("c.wav", {"subtype": "FLOAT"}), ("d.wav", {"subtype": "PCM_U8"}),
     ("e.wav", {"subtype": "ULAW"}), ("f.flac", {}), ("g.ogg", {}), ("h.WAV.flac", {})],
)
def test_other_encodings_are_left_to_soundfile(tmp_path, name, kw):
    path = _write(tmp_path / name, **kw)
    assert Pcm16Wav.open(path) is None
    np.testing.assert_array_equal(read_audio(path), sf.read(path, dtype="float32")[0])


def test_extra_chunks_before_the_data_are_skipped(tmp_path):
    samples = np.arange(-300, 300, dtype="<i2")
    (tmp_path / "x.wav").write_bytes(_riff([(b"JUNK", b"abc"), _fmt(), (b"LIST", b"INFOISFT\x05\0\0\0abcd\0\0"),
                                            (b"data", samples.tobytes())]))
    with Pcm16Wav.open(tmp_path / "x.wav") as wav:
        np.testing.assert_array_equal(wav.read(0, 600)[:, 0], samples)
    np.testing.assert_array_equal(read_audio(tmp_path / "x.wav"), sf.read(tmp_path / "x.wav", dtype="float32")[0])


@pytest.mark.parametrize(
    "chunks",
    [
        [(b"data", b"\1\0" * 10)],  # no fmt before data
        [_fmt(bits=24), (b"data", b"\1\0\0" * 10)],
        [_fmt(tag=3, bits=32), (b"data", b"\0\0\0\0" * 10)],  # IEEE float
        [_fmt(), (b"data", b"")],  # empty
        [_fmt(), (b"JUNK", b"\0" * HEADER_BYTES), (b"data", b"\1\0" * 10)],  # data beyond the parsed header
    ],
)
def test_headers_it_does_not_fully_understand_return_none(tmp_path, chunks):
    (tmp_path / "x.wav").write_bytes(_riff(chunks))
    assert Pcm16Wav.open(tmp_path / "x.wav") is None


def test_a_truncated_data_chunk_or_streamed_size_goes_to_soundfile(tmp_path):
    full = _riff([_fmt(), (b"data", np.arange(1000, dtype="<i2").tobytes())])
    (tmp_path / "cut.wav").write_bytes(full[:-500])  # header claims 1000 samples, 750 are there
    assert Pcm16Wav.open(tmp_path / "cut.wav") is None
    streamed = bytearray(full)
    streamed[40:44] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "stream.wav").write_bytes(bytes(streamed))
    assert Pcm16Wav.open(tmp_path / "stream.wav") is None
    (tmp_path / "riff.wav").write_bytes(b"RIFX" + full[4:])
    assert Pcm16Wav.open(tmp_path / "riff.wav") is None


def test_a_file_truncated_while_open_is_an_error_not_short_audio(tmp_path):
    path = _write(tmp_path / "a.wav", subtype="PCM_16")
    with Pcm16Wav.open(path) as wav:
        os.truncate(path, 1000)
        with pytest.raises(OSError, match="short read"):
            wav.read(0, 5000)


def test_missing_and_mismatched_rate_files_keep_their_messages(tmp_path):
    with pytest.raises(AudioLoadError, match=r"cannot read audio .*nope\.wav"):
        read_random_crop(tmp_path / "nope.wav", 100, np.random.default_rng(0), 16000)
    path = _write(tmp_path / "8k.wav", rate=8000, subtype="PCM_16")
    with pytest.raises(AudioLoadError, match="voxfast pack"):
        read_random_crop(path, 100, np.random.default_rng(0), 16000)
    crop = read_random_crop(path, 1000, np.random.default_rng(0), 16000, resample_mismatch=True)
    assert crop.shape == (1000,) and crop.dtype == np.float32


@pytest.mark.parametrize(("name", "subtype", "dtype"),
                         [("a.wav", "PCM_16", "int16"), ("a.flac", "PCM_16", "int16"), ("a.wav", "FLOAT", "float32"),
                          ("a.flac", "PCM_24", "float32")])
def test_native_crops_are_int16_only_for_16_bit_pcm_and_lossless(tmp_path, name, subtype, dtype):
    path = _write(tmp_path / name, subtype=subtype)
    native = read_random_crop(path, 1000, np.random.default_rng(3), 16000, dtype="native")
    as_float = read_random_crop(path, 1000, np.random.default_rng(3), 16000)
    assert native.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(native / np.float32(32768.0) if dtype == "int16" else native, as_float)
    with pytest.raises(ValueError, match="dtype must be"):
        read_random_crop(path, 1000, np.random.default_rng(3), 16000, dtype="float64")
