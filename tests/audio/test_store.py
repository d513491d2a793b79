"""Packed audio store: bit-exact round trips against soundfile, crops, bad files, resume, verify, pickling."""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from voxfast.audio import store as store_mod
from voxfast.audio.store import PackedStore, is_store, pack_store
from voxfast.data.manifest import Utterance
from voxfast.errors import VoxfastError

SR = 16000
STORE_FILES = ("audio.bin", "index.tsv", "meta.json", "bad.tsv")


def write_audio(path: Path, n: int, seed: int, sr: int = SR, channels: int = 1, subtype: str = "PCM_16",
                scale: float = 0.5) -> str:
    """A noise file of `n` samples; returns its absolute path."""
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((n, channels) if channels > 1 else n) * scale).astype(np.float32)
    sf.write(path, data if subtype == "FLOAT" else data.clip(-1, 1), sr, subtype=subtype)
    return str(path.resolve())


def int16_of(path: str) -> np.ndarray:
    return sf.read(path, dtype="int16")[0]


def as_int16(x: np.ndarray) -> np.ndarray:
    """Undo the store's 1/32768 scaling (exact for int16 stores)."""
    return (x * 32768).astype(np.int16)


@pytest.fixture
def corpus(tmp_path: Path) -> list[Utterance]:
    """Six 16 kHz 16-bit files, WAV and FLAC, of different lengths; c is shorter than the crops below."""
    src = tmp_path / "src"
    src.mkdir()
    specs = [("a", "s1", "wav", 3000), ("b", "s1", "flac", 2500), ("c", "s2", "wav", 800),
             ("d", "s2", "flac", 4100), ("e", "s3", "wav", 1700), ("f", "s3", "wav", 2222)]
    return [Utterance(f"{spk}/{name}", spk, write_audio(src / f"{name}.{ext}", n, seed))
            for seed, (name, spk, ext, n) in enumerate(specs)]


def pack(utts: list[Utterance], out: Path, **kw) -> store_mod.PackSummary:
    kw.setdefault("workers", 0)
    return pack_store(utts, out, progress=False, **kw)


def store_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in STORE_FILES}


# --------------------------------------------------------------------------------------------------
# Round trips and crops.


def test_int16_round_trip_is_bit_exact_for_wav_and_flac(corpus: list[Utterance], tmp_path: Path) -> None:
    summary = pack(corpus, tmp_path / "st")
    store = PackedStore(tmp_path / "st")
    assert (summary.packed, summary.resumed, summary.bad) == (len(corpus), 0, [])
    assert store.utts == [u.utt for u in corpus] and store.speakers == [u.spk for u in corpus]
    assert store.dtype == "int16" and store.sample_rate == SR and len(store) == len(corpus)
    for i, u in enumerate(corpus):
        wave = store.read(i)
        assert wave.dtype == np.float32
        np.testing.assert_array_equal(as_int16(wave), int16_of(u.path))
        assert store.index_of(u.utt) == i
    assert store.offsets.tolist() == np.concatenate([[0], np.cumsum(store.lengths)[:-1]]).tolist()
    assert summary.samples == store.lengths.sum() == (tmp_path / "st" / "audio.bin").stat().st_size // 2
    meta = json.loads((tmp_path / "st" / "meta.json").read_text())
    assert meta["utterances"] == len(corpus) and meta["samples"] == summary.samples and meta["format"] == 1
    assert is_store(tmp_path / "st") and store.verify() == []


def test_float32_store_keeps_float_samples_exactly(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "rir.wav", 1234, seed=9, subtype="FLOAT", scale=1.5)  # peaks above 1
    pack([Utterance("rir", "rirs", path)], tmp_path / "st", dtype="float32")
    store = PackedStore(tmp_path / "st")
    expected = sf.read(path, dtype="float32")[0]
    assert store.dtype == "float32" and np.abs(expected).max() > 1
    np.testing.assert_array_equal(store.read(0), expected)
    # float crops are copies, not read-only memmap views: callers augment them in place
    assert store.read(0).flags.writeable and store.crop(0, 10, 100).flags.writeable


def test_crop_is_a_slice_and_wraps_past_the_end(corpus: list[Utterance], tmp_path: Path) -> None:
    pack(corpus, tmp_path / "st")
    store = PackedStore(tmp_path / "st")
    n = 1000
    for i, u in enumerate(corpus):
        ref = int16_of(u.path)
        length = len(ref)
        tiled = np.tile(ref, 3 * math.ceil(n / length))
        for start in (0, max(length - n, 0), length - 10, length // 2):
            np.testing.assert_array_equal(as_int16(store.crop(i, start, n)), tiled[start : start + n])
    short = store.index_of("s2/c")
    assert store.lengths[short] < n
    np.testing.assert_array_equal(as_int16(store.crop(short, 0, 2000)), np.tile(int16_of(corpus[2].path), 3)[:2000])


def test_random_crop_is_uniformly_placed_and_reproducible(corpus: list[Utterance], tmp_path: Path) -> None:
    pack(corpus, tmp_path / "st")
    store = PackedStore(tmp_path / "st")
    n = 1000
    for i, u in enumerate(corpus):
        ref = int16_of(u.path)
        reference_rng = np.random.default_rng(42)
        start = reference_rng.integers(0, max(len(ref) - n, 0) + 1)
        expected = np.tile(ref, math.ceil(n / len(ref)) + 1)[start : start + n]
        crop = store.random_crop(i, n, np.random.default_rng(42))
        np.testing.assert_array_equal(as_int16(crop), expected)
        np.testing.assert_array_equal(crop, store.random_crop(i, n, np.random.default_rng(42)))
    rng = np.random.default_rng(0)
    starts = set()
    ref = int16_of(corpus[3].path)
    for _ in range(20):
        crop = as_int16(store.random_crop(3, n, rng))
        start = next(s for s in range(len(ref) - n + 1) if np.array_equal(ref[s : s + n], crop))
        starts.add(start)
    assert len(starts) > 10  # crops really move around


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "stereo.wav", 2000, seed=3, channels=2)
    pack([Utterance("st", "s", path)], tmp_path / "st")
    channels = sf.read(path, dtype="int16")[0].astype(np.int64)
    np.testing.assert_array_equal(as_int16(PackedStore(tmp_path / "st").read(0)), np.rint(channels.mean(axis=1)))


@pytest.mark.parametrize("rate", [8000, 22050])
def test_other_sample_rates_are_resampled(tmp_path: Path, rate: int) -> None:
    n = 1001
    path = write_audio(tmp_path / f"r{rate}.wav", n, seed=4, sr=rate, scale=0.2)
    pack([Utterance("x", "s", path)], tmp_path / "st")
    store = PackedStore(tmp_path / "st")
    g = math.gcd(rate, SR)
    assert store.lengths[0] == math.ceil(n * SR / rate) and store.source_rates[0] == rate
    expected = resample_poly(sf.read(path, dtype="float32")[0], SR // g, rate // g) * 32768
    assert np.abs(as_int16(store.read(0)).astype(np.float64) - expected).max() <= 1.0
    assert (tmp_path / "st" / "index.tsv").read_text().split("\t")[4] == str(rate)


# --------------------------------------------------------------------------------------------------
# Bad files.


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_bad_files_are_listed_and_the_rest_packed(corpus: list[Utterance], tmp_path: Path, dtype: str) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.int16), SR, subtype="PCM_16")
    nan = np.random.default_rng(1).standard_normal(500).astype(np.float32) * 0.1
    nan[123] = np.nan
    sf.write(tmp_path / "nan.wav", nan, SR, subtype="FLOAT")
    bad = [(Utterance("bad/corrupt", "x", str(corrupt)), "cannot read"),
           (Utterance("bad/empty", "x", str(empty)), "no samples"),
           (Utterance("bad/nan", "x", str(tmp_path / "nan.wav")), "NaN"),
           (Utterance("bad/missing", "x", str(tmp_path / "missing.wav")), "cannot read")]
    utts = [corpus[0], bad[0][0], corpus[1], bad[1][0], bad[2][0], corpus[2], bad[3][0]]
    summary = pack(utts, tmp_path / "st", chunk=2, dtype=dtype)
    assert [p for p, _ in summary.bad] == [u.path for u, _ in bad]
    for (_, reason), (_, word) in zip(summary.bad, bad, strict=True):
        assert word in reason
    rows = [tuple(line.split("\t")) for line in (tmp_path / "st" / "bad.tsv").read_text().splitlines()]
    assert rows == summary.bad
    store = PackedStore(tmp_path / "st")
    assert store.utts == [corpus[i].utt for i in range(3)] and summary.packed == 3
    for i in range(3):
        np.testing.assert_array_equal(store.read(i), sf.read(corpus[i].path, dtype="float32")[0])


# --------------------------------------------------------------------------------------------------
# Resume, reuse and conflicts.


def test_resume_after_a_crash_mid_chunk_equals_one_pass(
    corpus: list[Utterance], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack(corpus, tmp_path / "ref", chunk=2)
    original, calls = store_mod._write_audio, []

    def crash_on_second_chunk(f, results) -> None:
        original(f, results)  # the chunk's audio reaches the disk, its index lines never do
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(store_mod, "_write_audio", crash_on_second_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pack(corpus, tmp_path / "st", chunk=2)
    monkeypatch.undo()
    assert not is_store(tmp_path / "st")
    with pytest.raises(VoxfastError, match="voxfast pack"):
        PackedStore(tmp_path / "st")
    summary = pack(corpus, tmp_path / "st", chunk=2)
    assert (summary.resumed, summary.packed) == (2, len(corpus))
    assert store_bytes(tmp_path / "st") == store_bytes(tmp_path / "ref")


def test_resume_drops_a_half_written_tail(corpus: list[Utterance], tmp_path: Path) -> None:
    pack(corpus, tmp_path / "ref", chunk=4)
    out = tmp_path / "st"
    pack(corpus[:3], out)
    (out / "meta.json").unlink()
    with open(out / "audio.bin", "ab") as f:
        f.write(b"\x01garbage")
    with open(out / "index.tsv", "a") as f:
        f.write("s3/e\ts3\t9100\t17")  # a line cut short by the crash
    summary = pack(corpus, out, chunk=4)
    assert (summary.resumed, summary.packed, summary.samples) == (3, 6, PackedStore(out).lengths.sum())
    assert store_bytes(out) == store_bytes(tmp_path / "ref")


def test_complete_store_is_reused_without_decoding(
    corpus: list[Utterance], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = Utterance("gone", "s9", str(tmp_path / "gone.wav"))
    first = pack([*corpus, missing], tmp_path / "st")
    before = store_bytes(tmp_path / "st")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a complete store must not be decoded again")

    monkeypatch.setattr(store_mod, "_decode_chunk", no_decoding)
    again = pack([*corpus, missing], tmp_path / "st")
    assert (again.packed, again.resumed, again.samples) == (len(corpus), len(corpus), first.samples)
    assert again.bad == first.bad and len(again.bad) == 1
    assert store_bytes(tmp_path / "st") == before


def test_conflicting_stores_and_ids_are_refused(corpus: list[Utterance], tmp_path: Path) -> None:
    out = tmp_path / "st"
    pack(corpus[:4], out)
    for utts, kw in [(corpus[:5], {}), (corpus[:3], {}), (corpus[:4], {"dtype": "float32"}),
                     (corpus[:4], {"sample_rate": 8000}),
                     ([Utterance(u.utt, "other", u.path) for u in corpus[:4]], {})]:
        with pytest.raises(VoxfastError, match="delete") as exc:
            pack(utts, out, **kw)
        assert str(out) in str(exc.value)
    (out / "meta.json").unlink()  # now an interrupted pack: other settings are refused too
    with pytest.raises(VoxfastError, match="same settings"):
        pack(corpus[:4], out, dtype="float32")
    with pytest.raises(VoxfastError, match="unique"):
        pack([corpus[0], corpus[1], corpus[0]], tmp_path / "dup")


# --------------------------------------------------------------------------------------------------
# Integrity, opening, pickling and workers.


def test_verify_finds_a_flipped_byte(corpus: list[Utterance], tmp_path: Path) -> None:
    pack(corpus, tmp_path / "st")
    store = PackedStore(tmp_path / "st")
    assert store.verify() == []
    pos = int(store.offsets[3]) * 2 + 101
    data = bytearray((tmp_path / "st" / "audio.bin").read_bytes())
    data[pos] ^= 0x10
    (tmp_path / "st" / "audio.bin").write_bytes(bytes(data))
    assert PackedStore(tmp_path / "st").verify() == [corpus[3].utt]


def test_a_crop_of_a_damaged_utterance_is_an_unreadable_file(corpus: list[Utterance], tmp_path: Path) -> None:
    """A CRC mismatch met while training is an AudioLoadError (counted and skipped like an unreadable file),
    checked once per utterance and process; intact utterances still crop."""
    from voxfast.data.speaker import StoreSource
    from voxfast.errors import AudioLoadError

    pack(corpus, tmp_path / "st")
    data = bytearray((tmp_path / "st" / "audio.bin").read_bytes())
    data[int(PackedStore(tmp_path / "st").offsets[1]) * 2 + 7] ^= 0x01
    (tmp_path / "st" / "audio.bin").write_bytes(bytes(data))
    source = StoreSource(PackedStore(tmp_path / "st"))
    rng = np.random.default_rng(0)
    with pytest.raises(AudioLoadError, match=rf"utterance '{corpus[1].utt}' fails its CRC32 check.*--verify"):
        source.random_crop(1, 100, rng)
    with pytest.raises(AudioLoadError):
        source.random_crop_int16(1, 100, rng)  # not remembered as good after failing
    assert source.random_crop(0, 100, rng).shape == (100,)
    assert source.store._checked.tolist() == [i == 0 for i in range(len(corpus))]


def test_voxfast_pack_verify_reports_the_damaged_utterances(corpus: list[Utterance], tmp_path: Path, capsys) -> None:
    from voxfast.cli import main

    pack(corpus, tmp_path / "st")
    assert main(["pack", "--verify", str(tmp_path / "st")]) == 0
    assert f"{len(corpus)} of {len(corpus)} utterances intact" in capsys.readouterr().out
    data = bytearray((tmp_path / "st" / "audio.bin").read_bytes())
    data[int(PackedStore(tmp_path / "st").offsets[2]) * 2 + 11] ^= 0x10
    (tmp_path / "st" / "audio.bin").write_bytes(bytes(data))
    assert main(["pack", "--verify", str(tmp_path / "st")]) == 1
    out = capsys.readouterr().out
    assert f"{len(corpus) - 1} of {len(corpus)} utterances intact" in out and f"{corpus[2].utt}: CRC32 mismatch" in out
    assert main(["pack", str(tmp_path / "st")]) == 2  # SOURCE without OUT
    assert "needs SOURCE and OUT (or --verify STORE)" in capsys.readouterr().err


def test_opening_an_incomplete_or_damaged_folder_says_how_to_fix(corpus: list[Utterance], tmp_path: Path) -> None:
    with pytest.raises(VoxfastError, match="voxfast pack") as exc:
        PackedStore(tmp_path / "nothing")
    assert "nothing" in str(exc.value) and not is_store(tmp_path / "nothing")
    pack(corpus, tmp_path / "st")
    meta = json.loads((tmp_path / "st" / "meta.json").read_text())
    (tmp_path / "st" / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(VoxfastError, match="voxfast pack"):
        PackedStore(tmp_path / "st")
    assert not is_store(tmp_path / "st")
    (tmp_path / "st" / "meta.json").write_text(json.dumps(meta))
    with open(tmp_path / "st" / "audio.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(VoxfastError, match="damaged"):
        PackedStore(tmp_path / "st")


def test_pickled_store_maps_its_own_file(corpus: list[Utterance], tmp_path: Path) -> None:
    pack(corpus, tmp_path / "st")
    store = PackedStore(tmp_path / "st")
    first = store.read(0)
    blob = pickle.dumps(store)
    assert len(blob) < (tmp_path / "st" / "audio.bin").stat().st_size  # the samples are not in the pickle
    copy = pickle.loads(blob)
    for i in range(len(store)):
        np.testing.assert_array_equal(copy.read(i), store.read(i))
    np.testing.assert_array_equal(copy.crop(2, 500, 1000), store.crop(2, 500, 1000))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
        np.testing.assert_array_equal(ex.submit(store.read, 0).result(), first)


def test_workers_give_the_same_bytes_as_in_process(corpus: list[Utterance], tmp_path: Path) -> None:
    utts = [*corpus, Utterance("gone", "s9", str(tmp_path / "gone.wav"))]
    pack(utts, tmp_path / "serial", chunk=2, workers=0)
    summary = pack(utts, tmp_path / "parallel", chunk=2, workers=2)
    assert summary.packed == len(corpus) and len(summary.bad) == 1
    assert store_bytes(tmp_path / "parallel") == store_bytes(tmp_path / "serial")
