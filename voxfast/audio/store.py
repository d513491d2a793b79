"""A packed audio store: every utterance decoded once into one memory-mapped file, so a crop is a slice.

Training reads random 2 s crops of 4-16 s files millions of times. Decoding a compressed or even a WAV
file per crop costs a file open, a seek and a decode; from a store a crop costs a slice of an
``np.memmap`` and a float32 conversion of only the crop's samples.

Layout of a store folder::

    audio.bin   raw samples of every utterance back to back, little-endian int16 (or float32 for RIR banks)
    index.tsv   utt, spk, offset, length, source_rate, crc32, path -- one line per utterance, in audio.bin order
    bad.tsv     path, reason -- every file that could not be packed
    pack.json   the pack settings (format, dtype, sample_rate), written first so an interrupted pack can resume
    meta.json   format, dtype, sample_rate, utterances, samples, checksum -- written last: a store is
                complete only when meta.json exists
    index/      index.tsv as memory-mapped numpy arrays (see "The binary index" below), written after meta.json
                and stamped with it; built on first open for a store that lacks it or whose index.tsv changed

Offsets and lengths count samples, not bytes. Packing appends chunk by chunk and fsyncs each chunk, so an
interrupted pack is resumed by running it again into the same folder.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, NoReturn, Protocol

import numba
import numpy as np
import soundfile as sf

from voxfast.audio import av_decode
from voxfast.audio.io import resample, to_float32, to_int16
from voxfast.columns import Codes, ColumnSequence, StringColumn, hash_fields, id_codes, lookup_codes
from voxfast.errors import AudioLoadError, VoxfastError
from voxfast.fileio import atomic_text
from voxfast.progress import progress_bar

__all__ = ["STORE_FORMAT", "CodedSequence", "PackSummary", "PackedStore", "StringSequence", "UtteranceLike", "is_store",
           "pack_store"]

log = logging.getLogger(__name__)

STORE_FORMAT = 1

StoreDtype = Literal["int16", "float32"]
_DTYPES: dict[str, np.dtype] = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
# Subtypes whose samples are floats: they may hold NaN/inf, which libsndfile's int16 conversion silently turns
# into garbage, so an int16 store reads them as float32, checks them and converts them itself.
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})

AUDIO, INDEX, BAD, PARAMS, META = "audio.bin", "index.tsv", "bad.tsv", "pack.json", "meta.json"
_FIX_CONFLICT = "choose another OUT folder or delete it"
_FIX_OPEN = "run `voxfast pack LIST {path}` to build or finish it"


class UtteranceLike(Protocol):
    """What :func:`pack_store` reads of an utterance; :class:`voxfast.data.manifest.Utterance` is one.

    A protocol rather than the manifest's class because audio sits below data: the store must not import it.
    """

    @property
    def utt(self) -> str: ...  # unique id, the key of the store's index

    @property
    def spk(self) -> str: ...  # speaker name

    @property
    def path(self) -> str: ...  # the audio file


@dataclass
class PackSummary:
    """What :func:`pack_store` did, for the CLI's report."""

    packed: int  # utterances in the store after this call (including resumed ones)
    resumed: int  # utterances that were already in the store from an interrupted run
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of every file that was not packed
    samples: int = 0  # total samples in the store
    seconds: float = 0.0  # wall time of this call


class _Entry(NamedTuple):
    """One index.tsv line."""

    utt: str
    spk: str
    offset: int
    length: int
    source_rate: int
    crc: int
    path: str

    def line(self) -> str:
        fields = (self.utt, self.spk, self.offset, self.length, self.source_rate, f"{self.crc:08x}", self.path)
        return "\t".join(map(str, fields)) + "\n"


class _Decoded(NamedTuple):
    """A worker's result for one file: samples with their rate and crc, or the reason it is bad."""

    samples: np.ndarray | None
    source_rate: int
    crc: int
    error: str


# --------------------------------------------------------------------------------------------------
# Decoding (runs in worker processes).


def _decode_chunk(paths: list[str], sample_rate: int, dtype: str) -> list[_Decoded]:
    """Decode a chunk of files; a bad file becomes an error entry so one file never aborts the pack."""
    results = []
    for path in paths:
        try:
            samples, rate = _decode(path, sample_rate, dtype)
        except AudioLoadError as exc:
            results.append(_Decoded(None, 0, 0, _one_line(str(exc))))
        else:
            results.append(_Decoded(samples, rate, zlib.crc32(memoryview(samples)), ""))
    return results


def _decode(path: str, sample_rate: int, dtype: str) -> tuple[np.ndarray, int]:
    """Mono samples of `path` in the store's dtype at `sample_rate`, and the file's own rate.

    Integer files go to an int16 store through soundfile's int16 read, so 16-bit files are bit-exact; MP4 audio
    (PyAV, float32) is rounded to int16 like a float WAV.
    """
    data, rate = av_decode.decode(path) if av_decode.is_pyav_file(path) else _soundfile_read(path, dtype)
    if data.shape[0] == 0:
        raise AudioLoadError("no samples (empty or truncated file)")
    wave = _mono(data)
    if wave.dtype == np.float32 and not np.isfinite(wave).all():
        raise AudioLoadError("contains NaN or infinite samples (re-encode or remove the file)")
    if rate != sample_rate:
        wave = resample(to_float32(wave), rate, sample_rate)
    return _to_store_dtype(wave, dtype), rate


def _soundfile_read(path: str, dtype: str) -> tuple[np.ndarray, int]:
    """(frames, channels) samples and rate through libsndfile: int16 for integer files going to an int16 store."""
    try:
        with sf.SoundFile(path) as f:
            as_float = dtype == "float32" or f.subtype in _FLOAT_SUBTYPES
            return f.read(dtype="float32" if as_float else "int16", always_2d=True), f.samplerate
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioLoadError(f"cannot read audio: {exc}") from exc


def _mono(data: np.ndarray) -> np.ndarray:
    """Average channels; int16 through an int32 sum rounded to nearest, so no sample overflows or drifts."""
    channels = data.shape[1]
    if channels == 1:
        return np.ascontiguousarray(data[:, 0])
    if data.dtype == np.int16:
        return np.rint(data.sum(axis=1, dtype=np.int32) / channels).astype(np.int16)
    return data.mean(axis=1, dtype=np.float32)


def _to_store_dtype(wave: np.ndarray, dtype: str) -> np.ndarray:
    """Samples as the store's little-endian dtype; floats go to int16 rounded and clipped."""
    if dtype == "int16" and wave.dtype != np.int16:
        wave = to_int16(wave)
    return np.ascontiguousarray(wave.astype(_DTYPES[dtype], copy=False))


def _one_line(text: str) -> str:
    """A reason that fits one bad.tsv field."""
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------
# Packing.


def pack_store(
    utts: Sequence[UtteranceLike],
    out: str | Path,
    sample_rate: int = 16000,
    workers: int = 2,
    dtype: StoreDtype = "int16",
    chunk: int = 64,
    progress: bool = True,
) -> PackSummary:
    """Decode every utterance once into the store folder `out`; resume an interrupted pack there.

    Bad files (unreadable, empty, NaN/inf) are listed in the summary and in bad.tsv and never stop the
    pack. `workers` processes decode chunks of `chunk` files (0 or 1: decode in this process); they are
    spawned, so a script calling this with workers > 1 needs the usual ``if __name__ == "__main__":`` guard.

    Raises:
        VoxfastError: duplicate utterance ids, bad arguments, or `out` holds a different store.
    """
    start = time.perf_counter()
    _check_request(utts, sample_rate, workers, dtype, chunk)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VoxfastError(f"store folder {out} is a file; {_FIX_CONFLICT}")
    if (out / META).exists():
        return _existing_summary(out, utts, sample_rate, dtype, start)
    entries = _prepare_folder(out, utts, sample_rate, dtype)
    resumed = len(entries)
    done = {e.utt for e in entries}
    todo = [u for u in utts if u.utt not in done]
    bar = progress_bar(len(utts), f"pack {out.name}") if progress else None
    try:
        if bar is not None:
            bar.update(resumed)
        bad = _pack_todo(out, todo, entries, sample_rate, dtype, workers, chunk, bar)
    finally:
        if bar is not None:
            bar.close()
    samples = _write_meta(out, entries, sample_rate, dtype)
    _load_index(out, _read_meta(out))  # writes index/, so the first training process opens the store at once
    return PackSummary(len(entries), resumed, bad, samples, time.perf_counter() - start)


def _check_request(utts: Sequence[UtteranceLike], sample_rate: int, workers: int, dtype: str, chunk: int) -> None:
    """Reject arguments that would make a broken or ambiguous store before touching the folder."""
    if dtype not in _DTYPES:
        raise VoxfastError(f"store dtype must be 'int16' or 'float32', not {dtype!r}")
    if sample_rate <= 0 or chunk <= 0 or workers < 0:
        raise VoxfastError(
            f"sample_rate and chunk must be positive and workers >= 0, got {sample_rate}, {chunk} and {workers}"
        )
    if not utts:
        raise VoxfastError("no utterances to pack; pass a non-empty list")
    dups = [utt for utt, n in Counter(u.utt for u in utts).items() if n > 1]
    if dups:
        raise VoxfastError(f"{len(dups)} utterance id(s) occur more than once, first: {dups[0]!r}; ids must be unique")
    for u in utts:
        if any(c in s for s in (u.utt, u.spk, u.path) for c in "\t\n\r"):
            raise VoxfastError(f"cannot pack {u.utt!r}: ids, speakers and paths must not contain tabs or newlines")


def _existing_summary(
    out: Path, utts: Sequence[UtteranceLike], sample_rate: int, dtype: str, start: float
) -> PackSummary:
    """A complete store of the same utterances is reused as is; any other complete store is an error."""
    meta = _read_meta(out)
    if (meta.get("dtype"), meta.get("sample_rate")) != (dtype, sample_rate):
        raise VoxfastError(
            f"{out} already holds a complete {meta.get('dtype')} store at {meta.get('sample_rate')} Hz, "
            f"not {dtype} at {sample_rate} Hz; {_FIX_CONFLICT}"
        )
    entries = _read_index(out / INDEX)
    bad = _read_bad(out / BAD)
    stored = {e.utt: e.spk for e in entries}
    bad_paths = {p for p, _ in bad}
    wanted = {u.utt for u in utts}
    differs = [e.utt for e in entries if e.utt not in wanted]
    differs += [u.utt for u in utts if stored.get(u.utt, u.spk) != u.spk]
    differs += [u.utt for u in utts if u.utt not in stored and u.path not in bad_paths]
    if differs:
        raise VoxfastError(
            f"{out} already holds a complete store of other utterances or speakers (first difference: "
            f"{differs[0]!r}); {_FIX_CONFLICT}"
        )
    requested_paths = {u.path for u in utts}
    bad = [(p, r) for p, r in bad if p in requested_paths]
    return PackSummary(len(entries), len(entries), bad, int(meta["samples"]), time.perf_counter() - start)


def _prepare_folder(out: Path, utts: Sequence[UtteranceLike], sample_rate: int, dtype: str) -> list[_Entry]:
    """Start a fresh store, or cut an interrupted one back to its last complete chunk; return its entries."""
    out.mkdir(parents=True, exist_ok=True)
    params = {"format": STORE_FORMAT, "dtype": dtype, "sample_rate": sample_rate}
    if not (out / INDEX).exists():
        _write_json(out / PARAMS, params)
        for name in (AUDIO, INDEX, BAD):
            (out / name).write_bytes(b"")
        return []
    _check_resumable(out, params)
    entries = _valid_prefix(_read_index(out / INDEX, lenient=True), _file_size(out / AUDIO) // _DTYPES[dtype].itemsize)
    spk_of = {u.utt: u.spk for u in utts}
    foreign = [e.utt for e in entries if spk_of.get(e.utt) != e.spk]
    if foreign:
        raise VoxfastError(
            f"{out} holds an interrupted pack of other utterances or speakers (first difference: {foreign[0]!r}); "
            f"resume it with the same list, or {_FIX_CONFLICT}"
        )
    _atomic_write(out / INDEX, "".join(e.line() for e in entries))
    end = entries[-1].offset + entries[-1].length if entries else 0
    with open(out / AUDIO, "r+b") as f:
        f.truncate(end * _DTYPES[dtype].itemsize)
        _sync(f)
    (out / BAD).write_bytes(b"")  # bad files of the interrupted run are not indexed, so they are retried
    return entries


def _check_resumable(out: Path, params: dict[str, Any]) -> None:
    """An interrupted pack resumes only with the settings it was started with."""
    try:
        found = json.loads((out / PARAMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VoxfastError(
            f"{out} holds index.tsv but no readable {PARAMS}, so it is not a voxfast pack in progress; {_FIX_CONFLICT}"
        ) from None
    if found != params:
        raise VoxfastError(
            f"{out} holds an interrupted pack with settings {found}, not {params}; resume it with the same "
            f"settings, or {_FIX_CONFLICT}"
        )


def _valid_prefix(entries: list[_Entry], audio_samples: int) -> list[_Entry]:
    """The leading entries that are contiguous and whose samples are all in audio.bin."""
    kept: list[_Entry] = []
    end = 0
    for e in entries:
        if e.offset != end or e.length <= 0 or e.offset + e.length > audio_samples:
            break
        kept.append(e)
        end += e.length
    return kept


def _pack_todo(
    out: Path,
    todo: list[UtteranceLike],
    entries: list[_Entry],
    sample_rate: int,
    dtype: str,
    workers: int,
    chunk: int,
    bar: Any,
) -> list[tuple[str, str]]:
    """Decode `todo` chunk by chunk and append each chunk in order; extends `entries`, returns the bad files."""
    bad: list[tuple[str, str]] = []
    offset = entries[-1].offset + entries[-1].length if entries else 0
    with (
        open(out / AUDIO, "ab") as audio,
        open(out / INDEX, "a", encoding="utf-8") as index,
        open(out / BAD, "a", encoding="utf-8") as bad_file,
        closing(_decoded_chunks(todo, sample_rate, dtype, workers, chunk)) as chunks,
    ):
        for batch, results in chunks:
            new, new_bad = _chunk_entries(batch, results, offset)
            _write_audio(audio, results)
            _write_lines(index, [e.line() for e in new])
            _write_lines(bad_file, [f"{p}\t{r}\n" for p, r in new_bad])
            entries.extend(new)
            bad.extend(new_bad)
            offset += sum(e.length for e in new)
            if bar is not None:
                bar.update(len(batch))
    return bad


def _chunk_entries(
    batch: list[UtteranceLike], results: list[_Decoded], offset: int
) -> tuple[list[_Entry], list[tuple[str, str]]]:
    """Index entries of a chunk's good files (from `offset` on) and (path, reason) of its bad ones."""
    new: list[_Entry] = []
    bad: list[tuple[str, str]] = []
    for u, r in zip(batch, results, strict=True):
        if r.samples is None:
            bad.append((u.path, r.error))
            continue
        new.append(_Entry(u.utt, u.spk, offset, len(r.samples), r.source_rate, r.crc, u.path))
        offset += len(r.samples)
    return new, bad


def _write_audio(f: BinaryIO, results: list[_Decoded]) -> None:
    """Append a chunk's samples and make them durable before its index lines are written."""
    for r in results:
        if r.samples is not None:
            f.write(memoryview(r.samples))
    _sync(f)


def _write_lines(f: Any, lines: list[str]) -> None:
    """Append lines durably: after a crash the file holds whole chunks plus at most one partial line."""
    if lines:
        f.write("".join(lines))
        _sync(f)


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _decoded_chunks(
    todo: list[UtteranceLike], sample_rate: int, dtype: str, workers: int, chunk: int
) -> Iterator[tuple[list[UtteranceLike], list[_Decoded]]]:
    """(chunk, decoded chunk) pairs in list order; with workers > 1, decoded ahead in worker processes."""
    batches = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    if workers <= 1 or len(batches) <= 1:
        for batch in batches:
            yield batch, _decode_chunk([u.path for u in batch], sample_rate, dtype)
        return
    # spawn: the parent may hold torch/OpenMP threads, which a forked child can deadlock on.
    ex = ProcessPoolExecutor(min(workers, len(batches)), mp_context=multiprocessing.get_context("spawn"))
    pending: deque[tuple[list[UtteranceLike], Future]] = deque()
    try:
        for batch in batches:
            pending.append((batch, ex.submit(_decode_chunk, [u.path for u in batch], sample_rate, dtype)))
            if len(pending) >= 2 * workers:  # bounded read-ahead: memory stays at a few chunks
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _result(batch: list[UtteranceLike], future: Future) -> tuple[list[UtteranceLike], list[_Decoded]]:
    try:
        return batch, future.result()
    except BrokenProcessPool:
        raise VoxfastError(
            "a decoding worker process died (killed for memory, or started from a script without an "
            "`if __name__ == '__main__':` guard); run the same pack again to resume, with fewer workers or workers=0"
        ) from None


def _write_meta(out: Path, entries: list[_Entry], sample_rate: int, dtype: str) -> int:
    """Mark the store complete; returns its total samples."""
    samples = sum(e.length for e in entries)
    meta = {
        "format": STORE_FORMAT,
        "dtype": dtype,
        "sample_rate": sample_rate,
        "utterances": len(entries),
        "samples": samples,
        "checksum": _combined_crc([e.crc for e in entries]),
    }
    _write_json(out / META, meta)
    return samples


def _combined_crc(crcs: Sequence[int] | np.ndarray) -> str:
    """crc32 chained over the per-utterance crcs (4 bytes little-endian each) in index order, as hex: one zlib
    call over the array's bytes (40 MB at 10 M utterances), no Python loop."""
    return f"{zlib.crc32(memoryview(np.ascontiguousarray(crcs, dtype='<u4'))):08x}"


# --------------------------------------------------------------------------------------------------
# Files.


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    _atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    with atomic_text(path) as f:
        f.write(text)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _read_meta(folder: Path) -> dict[str, Any]:
    """meta.json of a complete store, or VoxfastError saying how to make one."""
    path = folder / META
    if not path.is_file():
        raise VoxfastError(f"{folder} is not a complete voxfast store (no {META}); {_FIX_OPEN.format(path=folder)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VoxfastError(f"{path}: unreadable ({exc}); delete {folder} and run `voxfast pack` again") from None
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise VoxfastError(
            f"{folder}: store format {found!r}, this voxfast reads format {STORE_FORMAT}; "
            f"delete it and run `voxfast pack` again"
        )
    return meta


def _parse_index_line(line: str) -> _Entry | None:
    """An index entry, or None for a malformed (e.g. half-written) line."""
    fields = line.rstrip("\n").split("\t")
    if not line.endswith("\n") or len(fields) != 7:
        return None
    try:
        return _Entry(fields[0], fields[1], int(fields[2]), int(fields[3]), int(fields[4]), int(fields[5], 16),
                      fields[6])
    except ValueError:
        return None


def _read_index(path: Path, lenient: bool = False) -> list[_Entry]:
    """Entries of index.tsv; `lenient` stops at the first malformed line (a resume re-packs from there)."""
    if not path.is_file():
        raise VoxfastError(f"{path} is missing; delete {path.parent} and pack it again")
    entries: list[_Entry] = []
    with path.open(encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            entry = _parse_index_line(line)
            if entry is None:
                if lenient:
                    break
                raise VoxfastError(f"{path}:{lineno}: malformed index line; delete {path.parent} and pack it again")
            entries.append(entry)
    return entries


def _read_bad(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    rows = (line.rstrip("\n").split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines(True))
    return [(r[0], r[1] if len(r) > 1 else "") for r in rows if r[0]]


def is_store(path: str | Path) -> bool:
    """Whether `path` is a complete store of this format (a folder with our meta.json)."""
    try:
        _read_meta(Path(path))
    except VoxfastError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# The binary index: index.tsv as memory-mapped arrays.
#
# Every process that opens a store (each rank, each spawned loader worker) would otherwise parse index.tsv into
# Python objects: ~600 B and ~5 us per utterance, 6 GB and a minute per process at 10 M utterances, and forked
# workers copy the pages whose reference counts they touch. The arrays below are written once, next to index.tsv,
# and every process maps them: the page cache holds one copy for all, and opening reads two small files.
#
#   index/stamp.json           what the arrays were built from (meta.json, index.tsv's size and mtime) and the
#                              utterance count, sample total and combined crc they hold; written last
#   index/offsets.npy          int64     first sample of each utterance in audio.bin
#   index/lengths.npy          int32     samples (int64 if an utterance had 2**31 or more)
#   index/source_rates.npy     int32
#   index/crcs.npy             uint32
#   index/speaker.npy          int32     code of each utterance's speaker: its position in the sorted names
#   index/speaker_{data,offsets}.npy     the distinct speaker names, sorted by code point, as a StringColumn
#   index/utt_{data,offsets}.npy         utterance ids as a StringColumn (uint8 UTF-8 bytes, int64 offsets)
#   index/path_{data,offsets}.npy        source paths as a StringColumn
#   index/utt_h1.npy, utt_h2.npy         uint64 hash pairs of the ids (voxfast.columns.hash_fields), by h1
#   index/utt_order.npy        int32     the utterance position of each sorted hash pair (int64 past 2**31)

INDEX_DIR = "index"
_INDEX_FORMAT = 1
_STAMP, _LOCK, _TMP_PREFIX = "stamp.json", ".index.lock", ".index.tmp-"
_ARRAYS = ("offsets", "lengths", "source_rates", "crcs", "speaker", "speaker_data", "speaker_offsets", "utt_data",
           "utt_offsets", "path_data", "path_offsets", "utt_h1", "utt_h2", "utt_order")
_PER_UTTERANCE = ("offsets", "lengths", "source_rates", "crcs", "speaker", "utt_h1", "utt_h2", "utt_order")
_CHUNK_KEYS = ("offsets", "lengths", "source_rates", "crcs", "h1", "h2", "utts", "paths", "speaker")
_TSV_READ_BYTES = 1 << 26  # index.tsv is parsed 64 MiB at a time: the build's memory is its output, not the text
_UNWRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
_DIGITS = np.full(256, 255, dtype=np.uint8)  # byte -> hex digit value, 255 for every other byte
_DIGITS[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_DIGITS[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_read_only_warned: set[str] = set()


@dataclass
class _Index:
    """The arrays of a store's index, with what they were built from and the totals computed when they were."""

    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]  # utterances, samples, checksum (combined crc) of index.tsv
    source: dict[str, Any]  # the stamp that says which meta.json and index.tsv they belong to
    mapped: bool  # memory-mapped from index/ (False: built in memory because the folder is not writable)


def _load_index(folder: Path, meta: dict[str, Any]) -> _Index:
    """The store's binary index, mapped; built from index.tsv first when it is missing or stale."""
    source = _source_stamp(folder, meta)
    index = _open_mapped(folder, source)
    if index is not None:
        return index
    try:
        with _build_lock(folder):
            return _open_mapped(folder, source) or _build_and_save(folder, source)  # another process may have won
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        _warn_read_only(folder, exc)
        return _build_index(folder, source)


def _source_stamp(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What an up-to-date index was built from: a repack changes meta.json, an edit of index.tsv its size or
    mtime (a copy that does not keep mtimes costs one rebuild)."""
    try:
        stat = (folder / INDEX).stat()
    except OSError:
        raise VoxfastError(f"{folder / INDEX} is missing; delete {folder} and pack it again") from None
    return {"format": _INDEX_FORMAT, "meta": meta, "index_size": stat.st_size, "index_mtime_ns": stat.st_mtime_ns}


def _open_mapped(folder: Path, source: dict[str, Any]) -> _Index | None:
    """index/ mapped read-only, or None when it is missing, stale or unreadable (so it is rebuilt)."""
    where = folder / INDEX_DIR
    try:
        stamp = json.loads((where / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or {key: stamp.get(key) for key in source} != source:
        log.info("%s: the binary index is stale (index.tsv or meta.json changed since it was built)", folder)
        return None
    try:
        arrays = {name: np.load(where / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in _ARRAYS}
        n = int(stamp["summary"]["utterances"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _shapes_agree(arrays, n):
        return None
    return _Index(arrays, stamp["summary"], source, mapped=True)


def _shapes_agree(arrays: dict[str, np.ndarray], n: int) -> bool:
    """A torn or mixed-up index/ (every per-utterance array and offset table of the right length)."""
    return (all(arrays[name].shape == (n,) for name in _PER_UTTERANCE)
            and arrays["utt_offsets"].shape == arrays["path_offsets"].shape == (n + 1,))


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """One builder per store at a time: the ranks of a job opening a new store wait for the first to build it."""
    fd = os.open(folder / _LOCK, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _build_and_save(folder: Path, source: dict[str, Any]) -> _Index:
    """Build the index, write it, and map what was written (the in-memory arrays are dropped)."""
    log.info("%s: building the binary index from index.tsv (once per store)", folder)
    index = _build_index(folder, source)
    try:
        _save_index(folder, index)
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        _warn_read_only(folder, exc)
        return index
    mapped = _open_mapped(folder, source)
    if mapped is None:
        return index
    del index
    _release_freed_memory()
    return mapped


def _release_freed_memory() -> None:
    """Hand the build's freed heap back to the OS. glibc keeps freed blocks below its (adaptive) mmap threshold in
    the heap, ~100 B per utterance after a build, which the building process (pack, or the first rank to open a
    new store) would otherwise carry for its whole life. Best effort: other C libraries have no malloc_trim."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _warn_read_only(folder: Path, exc: OSError) -> None:
    if str(folder) not in _read_only_warned:
        _read_only_warned.add(str(folder))
        log.warning("%s: cannot write its binary index (%s), so every process parses index.tsv and holds the index "
                    "in memory; open the store once as a user who can write to its folder (or from a writable copy), "
                    "or repack it, to make opening fast and shared", folder, exc.strerror or exc)


def _save_index(folder: Path, index: _Index) -> None:
    """Write index/ atomically: into a temp folder, each file fsynced, stamp last, then renamed into place."""
    for stale in folder.glob(f"{_TMP_PREFIX}*"):  # left by a build that crashed; we hold the build lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=folder))
    try:
        for name, array in index.arrays.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, array, allow_pickle=False)
                _sync(f)
        with open(tmp / _STAMP, "w", encoding="utf-8") as f:
            json.dump({**index.source, "summary": index.summary}, f, indent=2)
            _sync(f)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from other users of a shared store
        _replace_folder(tmp, folder / INDEX_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`; an old `target` is moved aside first (processes mapping it keep their pages)."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
        os.replace(target, old / "old")
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def _build_index(folder: Path, source: dict[str, Any]) -> _Index:
    """Parse index.tsv into the index arrays (vectorised, 64 MiB of text at a time)."""
    path = folder / INDEX
    names: dict[str, int] = {}
    chunks: dict[str, list[Any]] = {key: [] for key in _CHUNK_KEYS}
    line = 1
    for buf in _tsv_chunks(path):
        for key, value in _parse_lines(path, buf, line, names).items():
            chunks[key].append(value)
        line += len(chunks["h1"][-1])
    arrays = _assemble(path, chunks, names)
    summary = {"utterances": len(arrays["offsets"]), "samples": int(arrays["lengths"].sum()),
               "checksum": _combined_crc(arrays["crcs"])}
    return _Index(arrays, summary, source, mapped=False)


def _tsv_chunks(path: Path) -> Iterator[np.ndarray]:
    """index.tsv's bytes in pieces of whole lines; only an unterminated last line ends a piece without \\n.

    The file is read into one reused buffer (no copy per piece), so a piece is valid only until the next is asked
    for: the parser copies what it keeps."""
    buf, held = np.empty(_TSV_READ_BYTES, dtype=np.uint8), 0
    with path.open("rb", buffering=0) as f:
        while True:
            if held == len(buf):  # a line longer than the buffer: grow it
                buf = np.concatenate([buf, np.empty_like(buf)])
            got = f.readinto(memoryview(buf)[held:])
            if not got:
                break
            held += got
            cut = _after_last_newline(buf, held)
            if cut:
                yield buf[:cut]
                buf[: held - cut] = buf[cut:held].copy()
                held -= cut
    if held:
        yield buf[:held]


def _after_last_newline(buf: np.ndarray, held: int) -> int:
    """Length of the longest prefix of buf[:held] that ends with \\n (0: none), searched from the end."""
    end = held
    while end > 0:
        start = max(end - 65536, 0)
        found = buf[start:end].tobytes().rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _parse_lines(path: Path, buf: np.ndarray, first_line: int, names: dict[str, int]) -> dict[str, Any]:
    """Index.tsv lines in `buf` (line `first_line` first) as the columns of _CHUNK_KEYS. Only tabs and \\n
    separate: ids, speakers and paths may hold spaces. `names` numbers the speakers met so far (in order of first
    appearance) and gains this chunk's new ones; "speaker" holds those numbers."""
    _check_utf8(path, buf, first_line)
    ends = np.flatnonzero(buf == 0x0A)
    if len(ends) == 0 or ends[-1] != len(buf) - 1:  # a line cut short (old readers refused it too)
        _malformed(path, first_line + len(ends))
    tabs = np.flatnonzero(buf == 0x09)
    per_line = np.diff(np.searchsorted(tabs, ends), prepend=0)
    if (per_line != 6).any():
        _malformed(path, first_line + int(np.argmax(per_line != 6)))
    cuts = tabs.reshape(-1, 6)
    starts = np.column_stack([np.concatenate([[0], ends[:-1] + 1]), cuts + 1])  # (lines, 7 fields)
    stops = np.column_stack([cuts, ends])
    columns: dict[str, Any] = {}
    for column, name, base, digits in ((2, "offsets", 10, 18), (3, "lengths", 10, 18), (4, "source_rates", 10, 9),
                                       (5, "crcs", 16, 8)):
        columns[name], bad = _parse_uints(buf, starts[:, column], stops[:, column], base, digits)
        if bad >= 0:
            _malformed(path, first_line + bad)
    columns["h1"], columns["h2"] = hash_fields(buf, starts[:, 0], stops[:, 0])
    columns["utts"], columns["paths"] = (StringColumn.gather(buf, starts[:, k], stops[:, k]) for k in (0, 6))
    columns["speaker"] = _speaker_numbers(buf, starts[:, 1], stops[:, 1], names)
    return columns


def _check_utf8(path: Path, buf: np.ndarray, first_line: int) -> None:
    if len(buf) and buf.max() >= 0x80:
        try:
            buf.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            _malformed(path, first_line + int(np.count_nonzero(buf[: exc.start] == 0x0A)), "not UTF-8")


def _malformed(path: Path, line: int, what: str = "malformed index line") -> NoReturn:
    raise VoxfastError(f"{path}:{line}: {what}; delete {path.parent} and pack it again")


def _parse_uints(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray, base: int, digits: int
                 ) -> tuple[np.ndarray, int]:
    """Unsigned integers in base 10 or 16 from the byte ranges [starts, stops), and the index of the first range
    that is not 1..`digits` digits (-1: none). Compiled, one pass over the digits: numpy's vectorised form needs a
    dozen passes over a (fields, widest) matrix and took 16 s of a 10 M-line build."""
    values = np.empty(len(starts), dtype=np.int64)
    return values, _parse_uints_into(buf, starts, stops, base, digits, _DIGITS, values)


@numba.njit(cache=True)
def _parse_uints_into(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray, base: int, digits: int,
                      table: np.ndarray, out: np.ndarray) -> int:
    for k in range(len(starts)):
        if not 0 < stops[k] - starts[k] <= digits:
            return k
        value = 0
        for j in range(starts[k], stops[k]):
            d = table[buf[j]]
            if d >= base:
                return k
            value = value * base + d
        out[k] = value
    return -1


def _speaker_numbers(buf: np.ndarray, starts: np.ndarray, stops: np.ndarray, names: dict[str, int]) -> np.ndarray:
    """Each line's speaker as its number in `names` (first appearance in the file): hashing finds the chunk's
    distinct names, so only those become Python strings. Lists are usually sorted by speaker, so only the first
    line of each run of equal speakers is looked up."""
    h1, h2 = hash_fields(buf, starts, stops)
    new = np.ones(len(h1), dtype=bool)
    new[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    heads = np.flatnonzero(new)
    codes = id_codes(h1[heads], h2[heads])
    distinct = [buf[starts[i] : stops[i]].tobytes().decode("utf-8") for i in heads[codes.first].tolist()]
    numbers = np.array([names.setdefault(name, len(names)) for name in distinct], dtype=np.int64)
    return numbers[codes.codes][np.cumsum(new) - 1]


def _assemble(path: Path, chunks: dict[str, list[Any]], names: dict[str, int]) -> dict[str, np.ndarray]:
    """The chunks' columns as the index arrays: speakers recoded in sorted-name order, ids hashed and sorted. Each
    column's chunks are freed as soon as it is joined, so the build peaks at its output plus one column."""
    code = {name: k for k, name in enumerate(sorted(names))}
    rank = np.array([code[name] for name in names], dtype=np.int32)  # number (first appearance) -> code
    speakers = StringColumn.from_strings(sorted(names))
    out = {"speaker": rank[_join(chunks.pop("speaker"), np.int64)], "speaker_data": speakers.data,
           "speaker_offsets": speakers.offsets, "offsets": _join(chunks.pop("offsets"), np.int64),
           "lengths": _narrow(_join(chunks.pop("lengths"), np.int64)),
           "source_rates": _join(chunks.pop("source_rates"), np.int64).astype(np.int32),
           "crcs": _join(chunks.pop("crcs"), np.int64).astype(np.uint32)}
    utts = _concat(chunks.pop("utts"))
    out["utt_data"], out["utt_offsets"] = utts.data, utts.offsets
    h1, h2 = _join(chunks.pop("h1"), np.uint64), _join(chunks.pop("h2"), np.uint64)
    by_hash = _sorted_ids(path, utts, h1, h2)
    out.update(utt_h1=h1[by_hash], utt_h2=h2[by_hash], utt_order=_narrow(by_hash))
    del h1, h2
    paths = _concat(chunks.pop("paths"))
    out["path_data"], out["path_offsets"] = paths.data, paths.offsets
    return out


def _join(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate([np.zeros(0, dtype), *arrays])


def _sorted_ids(path: Path, utts: StringColumn, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Positions of the ids in order of h1 (lookups walk runs of equal h1, so h2 need not be sorted within them,
    but duplicates must be adjacent: equal h1 in distinct ids, ~1e-6 at 10 M, takes the exact (h1, h2) sort)."""
    order = np.argsort(h1)
    s1 = h1[order]
    if (s1[1:] == s1[:-1]).any():
        order = np.lexsort((h2, h1))
    s1, s2 = h1[order], h2[order]
    same = (s1[1:] == s1[:-1]) & (s2[1:] == s2[:-1])
    if same.any():
        k = int(np.argmax(same))
        twice = int(max(order[k], order[k + 1]))  # the repeat, not the first occurrence
        _malformed(path, twice + 1, f"utterance id {utts[twice]!r} occurs more than once")
    return order


def _concat(columns: list[StringColumn]) -> StringColumn:
    """One column of several, in order."""
    sizes = [len(c.data) for c in columns]
    starts = np.cumsum([0, *sizes])
    offsets = [np.zeros(1, np.int64)] + [c.offsets[1:] + base for c, base in zip(columns, starts, strict=False)]
    return StringColumn(np.concatenate([np.zeros(0, np.uint8)] + [c.data for c in columns]), np.concatenate(offsets))


def _narrow(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits: half the pages for every process to map."""
    return values.astype(np.int32) if values.max(initial=0) < 2**31 else values.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Reading.


class StringSequence(ColumnSequence[str]):
    """A read-only sequence of strings over a :class:`StringColumn` (e.g. a store's memory-mapped ids): len, [i],
    iteration and == against lists work as on a list, but no per-string Python object exists until one is asked
    for. Iteration decodes a block of strings per step, so a full pass costs ~0.3 us per string."""

    __slots__ = ("column",)
    _BLOCK = 65536

    def __init__(self, column: StringColumn) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def _at(self, i: int) -> str:
        return self.column[i]

    def __iter__(self) -> Iterator[str]:
        offsets, data = self.column.offsets, self.column.data
        for lo in range(0, len(self), self._BLOCK):
            hi = min(lo + self._BLOCK, len(self))
            base = int(offsets[lo])
            cuts = (offsets[lo : hi + 1] - base).tolist()
            blob = data[base : int(offsets[hi])].tobytes()
            yield from (blob[a:b].decode("utf-8") for a, b in itertools.pairwise(cuts))

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"{type(self).__name__}([{head}{', ...' if len(self) > 3 else ''}], {len(self)} strings)"


class CodedSequence(ColumnSequence[str]):
    """A read-only sequence of strings given as an integer code per item and the distinct strings (`names`): a
    store's speakers. Like :class:`StringSequence`, it stands in for a list without one object per item."""

    __slots__ = ("codes", "names")

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes, self.names = codes, names

    def __len__(self) -> int:
        return len(self.codes)

    def _at(self, i: int) -> str:
        return self.names[int(self.codes[i])]

    def __iter__(self) -> Iterator[str]:
        for lo in range(0, len(self), StringSequence._BLOCK):
            yield from map(self.names.__getitem__, self.codes[lo : lo + StringSequence._BLOCK].tolist())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items of {len(self.names)} distinct strings)"


class PackedStore:
    """Read-only access to a complete store: whole utterances and crops as float32 slices of one memmap.

    The index is memory-mapped from index/ (built from index.tsv on first open when missing or stale), so opening
    costs milliseconds and a few bytes of private memory per utterance (the `_checked` flags), and every process
    shares the same pages. Arrays: `offsets`, `lengths`, `source_rates`, `crcs`, `speaker_codes` (int32 position in
    `speaker_names`, the sorted distinct speakers). `utts`, `paths` and `speakers` are sequences of str that behave
    like lists without holding one object per utterance; code working on many utterances should use
    `speaker_codes` and :meth:`positions_of`.

    Pickling (DataLoader workers under spawn) carries only the path and settings: the worker maps index/ and
    audio.bin itself, after checking that index/ is still the one the parent opened. A forked worker simply
    inherits the mappings. Only a store whose folder was not writable (index built in memory) pickles its arrays.
    """

    _INDEX_ATTRS = ("offsets", "lengths", "source_rates", "crcs", "speaker_codes", "speaker_names", "utts", "paths",
                    "speakers", "_h1", "_h2", "_order", "_index")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = _read_meta(self.path)
        self.dtype: str = meta["dtype"]
        self.sample_rate: int = int(meta["sample_rate"])
        self._attach(_load_index(self.path, meta))
        self._check_consistent(meta)
        self._mmap: np.ndarray | None = None
        self._checked = np.zeros(len(self), dtype=bool)  # utterances whose CRC32 this process has verified

    def _attach(self, index: _Index) -> None:
        """Expose the index arrays under the store's attribute names."""
        a = index.arrays
        self._index = index
        self.offsets: np.ndarray = a["offsets"]
        self.lengths: np.ndarray = a["lengths"]
        self.source_rates: np.ndarray = a["source_rates"]
        self.crcs: np.ndarray = a["crcs"]
        self.speaker_codes: np.ndarray = a["speaker"]
        self.speaker_names: list[str] = list(StringSequence(StringColumn(a["speaker_data"], a["speaker_offsets"])))
        self.utts = StringSequence(StringColumn(a["utt_data"], a["utt_offsets"]))
        self.paths = StringSequence(StringColumn(a["path_data"], a["path_offsets"]))
        self.speakers = CodedSequence(self.speaker_codes, self.speaker_names)
        self._h1, self._h2, self._order = a["utt_h1"], a["utt_h2"], a["utt_order"]

    def _check_consistent(self, meta: dict[str, Any]) -> None:
        """Catch a truncated audio.bin or an edited index now, not as a wrong crop in the middle of training.

        The index's totals were computed from index.tsv when index/ was built and index/ is tied to this
        meta.json and index.tsv, so the check reads no per-utterance data."""
        n, samples = int(self._index.summary["utterances"]), int(self._index.summary["samples"])
        size = _file_size(self.path / AUDIO)
        problems = []
        if n != meta["utterances"] or samples != meta["samples"]:
            problems.append(f"index.tsv lists {n} utterances / {samples} samples, meta.json "
                            f"{meta['utterances']} / {meta['samples']}")
        if size != samples * _DTYPES[self.dtype].itemsize:
            problems.append(f"audio.bin has {size} bytes, expected {samples * _DTYPES[self.dtype].itemsize}")
        if self._index.summary["checksum"] != meta["checksum"]:
            problems.append("index.tsv checksums do not match meta.json")
        if problems:
            raise VoxfastError(f"{self.path}: damaged store ({'; '.join(problems)}); delete it and run `voxfast pack`")

    def __len__(self) -> int:
        return len(self.offsets)

    def __contains__(self, utt: object) -> bool:
        return isinstance(utt, str) and self._find(utt) >= 0

    def __repr__(self) -> str:
        return f"PackedStore({str(self.path)!r}, {len(self)} utterances, {self.dtype}, {self.sample_rate} Hz)"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mmap"] = None
        state["_checked"] = None  # per-process flags: a new process checks each utterance once itself
        if self._index.mapped:
            for name in self._INDEX_ATTRS:
                state.pop(name, None)
            state["_source"] = self._index.source
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        source = state.pop("_source", None)
        self.__dict__.update(state)
        if source is not None:
            index = _open_mapped(self.path, source)
            if index is None:
                raise VoxfastError(f"{self.path}: the store changed after it was opened (its index.tsv, meta.json or "
                                   "binary index); restart so every process reads the same store")
            self._attach(index)
        self._checked = np.zeros(len(self), dtype=bool)

    @property
    def _audio(self) -> np.ndarray:
        if self._mmap is None:
            if int(self._index.summary["samples"]) == 0:  # np.memmap cannot map an empty file
                self._mmap = np.zeros(0, dtype=_DTYPES[self.dtype])
            else:
                self._mmap = np.memmap(self.path / AUDIO, dtype=_DTYPES[self.dtype], mode="r")
        return self._mmap

    def index_of(self, utt: str) -> int:
        """Position of utterance id `utt`."""
        i = self._find(utt)
        if i < 0:
            raise VoxfastError(f"utterance {utt!r} is not in store {self.path}")
        return i

    def positions_of(self, ids: Iterable[str] | StringColumn) -> np.ndarray:
        """Positions (int64) of utterance ids `ids`, -1 for ids the store lacks: one vectorised hash lookup, so a
        list of millions takes seconds. A StringColumn (e.g. read by voxfast.columns) is hashed without decoding;
        ids are matched by their two 64-bit hashes (a false match has odds of ~1e-25 at 10 M ids)."""
        if isinstance(ids, StringSequence):
            ids = ids.column
        column = ids if isinstance(ids, StringColumn) else StringColumn.from_strings(ids)
        if len(self) == 0:
            return np.full(len(column), -1, dtype=np.int64)
        found = lookup_codes(Codes(self._h1, self._h2, self._order, self._order), *column.hashes())
        return np.where(found >= 0, self._order[np.maximum(found, 0)], -1).astype(np.int64)

    def _find(self, utt: str) -> int:
        """Position of `utt` or -1: a binary search of the sorted hashes, confirmed by comparing the id itself."""
        raw = np.frombuffer(utt.encode("utf-8"), dtype=np.uint8)
        h1, h2 = (h[0] for h in hash_fields(raw, np.zeros(1, np.int64), np.full(1, len(raw), np.int64)))
        k = int(np.searchsorted(self._h1, h1))
        while k < len(self._h1) and self._h1[k] == h1:
            if self._h2[k] == h2:
                i = int(self._order[k])
                return i if self.utts[i] == utt else -1
            k += 1
        return -1

    def _segment(self, i: int) -> np.ndarray:
        """The memmap slice of utterance `i` (no copy)."""
        offset, length = int(self.offsets[i]), int(self.lengths[i])
        return self._audio[offset : offset + length]

    def read(self, i: int) -> np.ndarray:
        """Utterance `i` as float32 (a writable copy)."""
        return _float_copy(self._segment(i))

    def read_raw(self, i: int) -> np.ndarray:
        """Utterance `i` in the store's dtype: a read-only memmap view, shared through the page cache."""
        return self._segment(i)

    def crop(self, i: int, start: int, n: int) -> np.ndarray:
        """`n` samples of utterance `i` from `start`, wrapping around to its beginning past the end."""
        return _float_copy(self.crop_raw(i, start, n))

    def crop_raw(self, i: int, start: int, n: int) -> np.ndarray:
        """Like :meth:`crop` in the store's own dtype: a memmap view when it fits, no conversion."""
        if n < 0:
            raise ValueError(f"crop length must be >= 0, got {n}")
        segment = self._segment(i)
        length = len(segment)
        start %= length
        if start + n <= length:
            return segment[start : start + n]
        return np.take(segment, (start + np.arange(n)) % length)

    def random_crop(self, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """A uniformly placed `n`-sample crop of utterance `i`; a shorter utterance is wrapped from its start."""
        return self.crop(i, self._random_start(i, n, rng), n)

    def random_crop_raw(self, i: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """:meth:`random_crop` in the store's dtype (the same draw, so the same samples)."""
        return self.crop_raw(i, self._random_start(i, n, rng), n)

    def _random_start(self, i: int, n: int, rng: np.random.Generator) -> int:
        return int(rng.integers(0, max(int(self.lengths[i]) - n, 0) + 1))

    def verify(self) -> list[str]:
        """Ids of utterances whose samples no longer match their crc32 (empty when the store is intact)."""
        return [self.utts[i] for i in range(len(self)) if not self._intact(i)]

    def unpacked_paths(self) -> set[str]:
        """Files of the packed list that could not be read when packing (bad.tsv), so a list naming them can tell
        them from utterances the store never held."""
        return {p for p, _ in _read_bad(self.path / BAD)}

    def check(self, i: int) -> None:
        """Raise AudioLoadError when utterance `i` fails its CRC32; each utterance is hashed once per process
        (~14 us per second of int16 audio on the 2-core VM), so training pays for it on the first epoch only."""
        if self._checked[i]:
            return
        if not self._intact(i):
            raise AudioLoadError(f"{self.path}: utterance {self.utts[i]!r} fails its CRC32 check (the store is "
                                 "damaged: `voxfast pack --verify STORE` lists every such utterance; repack them)")
        self._checked[i] = True

    def _intact(self, i: int) -> bool:
        return zlib.crc32(memoryview(self._segment(i))) == self.crcs[i]


def _float_copy(samples: np.ndarray) -> np.ndarray:
    """A writable float32 copy in one pass: a float32 store's slices are read-only memmap views, and callers
    augment crops in place."""
    return to_float32(samples, out=np.empty(samples.shape, dtype=np.float32))
