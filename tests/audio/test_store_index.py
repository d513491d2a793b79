"""The store's binary index: index.tsv as memory-mapped arrays, built at pack time or on first open, shared by every
process, rebuilt when stale, in memory when the folder is read-only; lookups by id; pickling without the arrays."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tools.fake_store import make_fake_store, utt_id, zero_crcs
from voxfast.audio import store as store_mod
from voxfast.audio.store import INDEX_DIR, CodedSequence, PackedStore, StringSequence, pack_store
from voxfast.columns import StringColumn
from voxfast.data.manifest import Utterance
from voxfast.errors import VoxfastError

SR = 16000


@pytest.fixture
def corpus(tmp_path: Path) -> list[Utterance]:
    """Seven files; paths with spaces and non-ASCII ids and speakers, speakers not in sorted order."""
    src = tmp_path / "my src"
    src.mkdir()
    specs = [("zoë/a", "zoë"), ("Émile/b", "Émile"), ("bob/c d", "bob"), ("zoë/e", "zoë"), ("al/f", "al"),
             ("bob/g", "bob"), ("Bob/h", "Bob")]
    utts = []
    for k, (utt, spk) in enumerate(specs):
        path = src / f"file {k}.wav"
        sf.write(path, (np.random.default_rng(k).standard_normal(500 + 97 * k) * 0.3).clip(-1, 1), SR)
        utts.append(Utterance(utt, spk, str(path)))
    return utts


@pytest.fixture
def packed(corpus: list[Utterance], tmp_path: Path) -> Path:
    pack_store(corpus, tmp_path / "st", workers=0, progress=False)
    return tmp_path / "st"


def tsv_entries(folder: Path) -> list[store_mod._Entry]:
    """index.tsv read line by line, as before the binary index."""
    return store_mod._read_index(folder / "index.tsv")


def assert_matches_tsv(store: PackedStore) -> None:
    """Every column of the store equals index.tsv's."""
    entries = tsv_entries(store.path)
    assert list(store.utts) == [e.utt for e in entries] and list(store.paths) == [e.path for e in entries]
    assert list(store.speakers) == [e.spk for e in entries]
    assert store.offsets.tolist() == [e.offset for e in entries] and store.lengths.tolist() == [e.length for e in
                                                                                                   entries]
    assert store.source_rates.tolist() == [e.source_rate for e in entries]
    assert store.crcs.tolist() == [e.crc for e in entries]
    assert store.speaker_names == sorted({e.spk for e in entries})
    assert [store.speaker_names[c] for c in store.speaker_codes] == [e.spk for e in entries]
    assert store.speaker_codes.dtype == np.int32 and store.crcs.dtype == np.uint32
    assert all(store.index_of(e.utt) == i for i, e in enumerate(entries))


def index_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / INDEX_DIR).iterdir())}


# --------------------------------------------------------------------------------------------------
# The index equals index.tsv.


def test_pack_writes_a_binary_index_equal_to_index_tsv(packed: Path, corpus: list[Utterance]) -> None:
    assert (packed / INDEX_DIR / "stamp.json").is_file()
    store = PackedStore(packed)
    assert_matches_tsv(store)
    assert store.speaker_names == ["Bob", "al", "bob", "zoë", "Émile"]  # code point order, as sorted() gives
    assert store.utts == [u.utt for u in corpus] and store.speakers == [u.spk for u in corpus]
    for i, u in enumerate(corpus):
        np.testing.assert_array_equal(store.read(i), sf.read(u.path, dtype="float32")[0])
    assert store.verify() == []


def test_an_old_store_without_index_opens_and_gets_one(packed: Path) -> None:
    written_by_pack = index_files(packed)
    shutil.rmtree(packed / INDEX_DIR)
    store = PackedStore(packed)
    assert_matches_tsv(store)
    assert index_files(packed) == written_by_pack  # the same bytes as pack writes
    assert not list(packed.glob(".index.tmp-*"))  # built in a temp folder and renamed


def test_index_tsv_is_parsed_in_chunks_like_in_one_piece(packed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks smaller than a line: speakers numbered across chunks, line numbers of errors count from the file."""
    whole = index_files(packed)
    shutil.rmtree(packed / INDEX_DIR)
    monkeypatch.setattr(store_mod, "_TSV_READ_BYTES", 37)
    PackedStore(packed)
    assert index_files(packed) == whole
    lines = (packed / "index.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[5] = lines[5].replace("\t", " ", 1)
    (packed / "index.tsv").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(VoxfastError, match=r"index.tsv:6: malformed index line"):
        PackedStore(packed)


@pytest.mark.parametrize(("edit", "line", "what"), [
    (lambda t: t[:-1], 7, "malformed"),  # the last line lost its newline
    (lambda t: t.replace("\t16000\t", "\t16k\t", 1), 1, "malformed"),
    (lambda t: t.replace("\t", "\t\t", 1), 1, "malformed"),
    (lambda t: t + t.splitlines(keepends=True)[2], 8, "'bob/c d' occurs more than once"),
])
def test_a_damaged_index_tsv_names_its_line(packed: Path, edit, line: int, what: str) -> None:
    shutil.rmtree(packed / INDEX_DIR)
    tsv = packed / "index.tsv"
    tsv.write_text(edit(tsv.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(VoxfastError, match=rf"index.tsv:{line}: .*{what}.*pack it again"):
        PackedStore(packed)


def test_a_crc_that_is_not_hex_is_refused(packed: Path) -> None:
    tsv = packed / "index.tsv"
    entry = tsv_entries(packed)[1]
    tsv.write_text(tsv.read_text(encoding="utf-8").replace(f"\t{entry.crc:08x}\t", "\t0000000g\t"), encoding="utf-8")
    with pytest.raises(VoxfastError, match=r"index.tsv:2: malformed"):
        PackedStore(packed)


# --------------------------------------------------------------------------------------------------
# Stale indexes, read-only folders, concurrent builders.


def test_a_stale_index_is_rebuilt(packed: Path, corpus: list[Utterance], tmp_path: Path) -> None:
    """index.tsv edited (same meta.json) or the whole index from another store: both rebuilt from index.tsv."""
    tsv = packed / "index.tsv"
    tsv.write_text(tsv.read_text(encoding="utf-8").replace("\tal\t", "\tali\t"), encoding="utf-8")
    store = PackedStore(packed)
    assert store.speakers[4] == "ali" and "al" not in store.speaker_names
    assert_matches_tsv(store)
    pack_store(corpus[:3], tmp_path / "other", workers=0, progress=False)
    shutil.rmtree(packed / INDEX_DIR)
    shutil.copytree(tmp_path / "other" / INDEX_DIR, packed / INDEX_DIR)  # stamped with the other meta.json
    store = PackedStore(packed)
    assert len(store) == len(corpus)
    assert_matches_tsv(store)


def test_a_torn_index_is_rebuilt(packed: Path) -> None:
    (packed / INDEX_DIR / "lengths.npy").write_bytes(b"\x93NUMPY")
    assert_matches_tsv(PackedStore(packed))


def test_damage_is_still_found_through_the_index(packed: Path) -> None:
    meta = json.loads((packed / "meta.json").read_text())
    (packed / "meta.json").write_text(json.dumps({**meta, "checksum": "00000000"}))
    with pytest.raises(VoxfastError, match=r"damaged store.*checksums do not match"):
        PackedStore(packed)
    (packed / "meta.json").write_text(json.dumps({**meta, "utterances": 99}))
    with pytest.raises(VoxfastError, match=r"damaged store.*index.tsv lists 7 utterances"):
        PackedStore(packed)


@contextmanager
def _read_only_lock(folder: Path):
    raise OSError(errno.EROFS, "Read-only file system")
    yield


def test_a_read_only_store_builds_its_index_in_memory_and_says_so_once(
    packed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.rmtree(packed / INDEX_DIR)
    monkeypatch.setattr(store_mod, "_build_lock", _read_only_lock)
    with caplog.at_level(logging.WARNING, logger="voxfast.audio.store"):
        stores = [PackedStore(packed), PackedStore(packed)]
    assert not (packed / INDEX_DIR).exists()
    warnings = [r for r in caplog.records if "cannot write its binary index" in r.message]
    assert len(warnings) == 1 and "writable copy" in warnings[0].message
    for store in stores:
        assert_matches_tsv(store)
        assert not isinstance(store.offsets, np.memmap)
    copy = pickle.loads(pickle.dumps(stores[0]))  # in memory, the arrays travel with it
    assert_matches_tsv(copy)


def test_a_failed_save_keeps_the_index_built_in_memory(packed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(packed / INDEX_DIR)

    def denied(folder: Path, index: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store_mod, "_save_index", denied)
    assert_matches_tsv(PackedStore(packed))


def _without_write_override() -> list[str]:
    """A command prefix under which this user cannot write to a 0555 folder: none for a normal user; for root,
    setpriv dropping the capabilities that override file permissions (skips the test where that is impossible)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("root writes to read-only folders, and setpriv cannot drop that here")
    return prefix


def test_a_read_only_folder_opens(packed: Path) -> None:
    """A real read-only folder (not a patched one): the index is built in memory, nothing is written."""
    shutil.rmtree(packed / INDEX_DIR)
    (packed / ".index.lock").unlink()
    code = ("import sys; from voxfast.audio.store import PackedStore; s = PackedStore(sys.argv[1]); "
            "print(len(s), type(s.offsets).__name__, s.index_of('bob/g'), s.speakers[6])")
    packed.chmod(0o555)
    try:
        run = subprocess.run([*_without_write_override(), sys.executable, "-c", code, str(packed)],
                             capture_output=True, text=True, cwd=Path(__file__).parents[2])
    finally:
        packed.chmod(0o755)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["7", "ndarray", "5", "Bob"] and "cannot write its binary index" in run.stderr
    assert not (packed / INDEX_DIR).exists() and not (packed / ".index.lock").exists()


def _open_and_count(folder: str) -> int:
    return len(PackedStore(folder))


def test_processes_opening_a_new_store_at_once_build_one_index(packed: Path) -> None:
    shutil.rmtree(packed / INDEX_DIR)
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("fork")) as ex:
        assert list(ex.map(_open_and_count, [str(packed)] * 6)) == [7] * 6
    assert sorted(p.name for p in packed.iterdir() if p.name.startswith(".index")) == [".index.lock"]
    assert_matches_tsv(PackedStore(packed))


# --------------------------------------------------------------------------------------------------
# Lookups.


def test_index_of_positions_of_and_in(packed: Path, corpus: list[Utterance]) -> None:
    store = PackedStore(packed)
    ids = [u.utt for u in corpus]
    assert [store.index_of(u) for u in ids] == list(range(len(ids)))
    assert all(u in store for u in ids)
    for miss in ("nobody", "", "bob/c", "bob/c d ", "zoe/a", 3, None):
        assert miss not in store
    with pytest.raises(VoxfastError, match="'nobody' is not in store"):
        store.index_of("nobody")
    query = ["bob/g", "nobody", "zoë/a", "", "Bob/h", "bob/g"]
    expected = [5, -1, 0, -1, 6, 5]
    column = StringColumn.from_strings(query)
    for given in (query, iter(query), column, StringSequence(column)):
        positions = store.positions_of(given)
        assert positions.dtype == np.int64 and positions.tolist() == expected
    assert store.positions_of([]).tolist() == []
    assert store.positions_of(store.utts).tolist() == list(range(len(ids)))


def test_an_empty_store_opens(tmp_path: Path) -> None:
    pack_store([Utterance("gone", "s", str(tmp_path / "gone.wav"))], tmp_path / "st", workers=0, progress=False)
    store = PackedStore(tmp_path / "st")
    assert len(store) == 0 and list(store.utts) == [] and store.speaker_names == []
    assert "gone" not in store and store.positions_of(["gone"]).tolist() == [-1] and store.verify() == []


# --------------------------------------------------------------------------------------------------
# Memory and pickling.


def test_the_index_is_mapped_not_held(tmp_path: Path) -> None:
    """Opening allocates no per-utterance Python objects or private arrays: columns are memmaps of index/, and
    what the open allocates grows by at most the 1 B per utterance of the CRC-checked flags."""
    n = 20_000
    folder = make_fake_store(tmp_path / "fake", n, speakers=100, binary_index=True)
    tracemalloc.start()
    try:
        store = PackedStore(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * n + 200_000
    assert isinstance(store.utts, StringSequence) and isinstance(store.paths, StringSequence)
    assert isinstance(store.speakers, CodedSequence) and not isinstance(store.utts, list)
    for array in (store.utts.column.data, store.utts.column.offsets, store.paths.column.data, store.offsets,
                  store.lengths, store.crcs, store.source_rates, store.speaker_codes, store.speakers.codes):
        assert isinstance(array, np.memmap) and not array.flags.writeable
    assert len(store.speaker_names) == 100


def test_pickling_carries_no_arrays(tmp_path: Path) -> None:
    folder = make_fake_store(tmp_path / "fake", 20_000, binary_index=True)
    store = PackedStore(folder)
    blob = pickle.dumps(store)
    assert len(blob) < 2_000 and utt_id(5, 0).encode() not in blob
    copy = pickle.loads(blob)
    assert isinstance(copy.offsets, np.memmap) and copy.utts == store.utts and copy.speakers == store.speakers
    assert copy.index_of(utt_id(12_345, int(store.speaker_codes[12_345]))) == 12_345
    np.testing.assert_array_equal(copy.read(7), store.read(7))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
        assert ex.submit(copy.index_of, store.utts[19_999]).result() == 19_999
    with open(folder / "index.tsv", "a", encoding="utf-8") as f:
        f.write("")  # the same bytes, but a new mtime: another index.tsv as far as the stamp knows
    os.utime(folder / "index.tsv", ns=(1, 1))
    PackedStore(folder)  # rebuilds index/
    with pytest.raises(VoxfastError, match="changed after it was opened"):
        pickle.loads(blob)


def test_the_sequences_behave_like_lists(packed: Path, corpus: list[Utterance]) -> None:
    store = PackedStore(packed)
    utts, spks = [u.utt for u in corpus], [u.spk for u in corpus]
    assert store.utts == utts and utts == store.utts and store.utts == tuple(utts) and store.utts != utts[:-1]
    assert store.speakers == spks and store.speakers != [*spks[:-1], "x"] and store.utts != "zoë/a"
    assert store.utts[-1] == utts[-1] and store.utts[1:4] == utts[1:4] and store.speakers[::2] == spks[::2]
    assert list(reversed(store.utts)) == utts[::-1] and "bob/g" in store.utts and store.speakers.count("bob") == 2
    assert store.speakers[np.int64(2)] == "bob" and len(store.paths) == len(corpus)
    with pytest.raises(IndexError):
        store.utts[len(corpus)]
    assert "zoë/a" in repr(store.utts) and "5 distinct" in repr(store.speakers)


# --------------------------------------------------------------------------------------------------
# The fake store generator (tools/fake_store.py).


def test_a_fake_store_is_consistent(tmp_path: Path) -> None:
    folder = make_fake_store(tmp_path / "fake", 300, speakers=7, path_prefix="/data/with space")
    assert not (folder / INDEX_DIR).exists()  # old-style until opened
    store = PackedStore(folder)
    assert_matches_tsv(store)
    assert len(store.speaker_names) == 7 and store.paths[0].startswith("/data/with space/")
    assert store.verify() == []
    assert (folder / "audio.bin").stat().st_size == 2 * int(store.lengths.sum())


def test_zero_crcs_match_zlib() -> None:
    import zlib

    sizes = np.array([6, 0, 4, 6, 1000, 3])
    assert zero_crcs(sizes).tolist() == [zlib.crc32(bytes(int(s))) for s in sizes]
