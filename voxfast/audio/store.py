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

Offsets and lengths count samples, not bytes. Packing appends chunk by chunk and fsyncs each chunk, so an
interrupted pack is resumed by running it again into the same folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Protocol

import numpy as np
import soundfile as sf

from voxfast.audio import av_decode
from voxfast.audio.io import resample, to_float32, to_int16
from voxfast.errors import AudioLoadError, VoxfastError
from voxfast.fileio import atomic_text
from voxfast.progress import progress_bar

__all__ = ["STORE_FORMAT", "PackSummary", "PackedStore", "UtteranceLike", "is_store", "pack_store"]

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


def _combined_crc(crcs: Sequence[int]) -> str:
    """crc32 chained over the per-utterance crcs (4 bytes little-endian each) in index order, as hex."""
    return f"{zlib.crc32(np.asarray(crcs, dtype='<u4').tobytes()):08x}"


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
# Reading.


class PackedStore:
    """Read-only access to a complete store: whole utterances and crops as float32 slices of one memmap.

    The memmap is opened on first access and not pickled, so each DataLoader worker maps the file itself
    (a mapping inherited through fork would work, but pickling one would copy the whole audio).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = _read_meta(self.path)
        self.dtype: str = meta["dtype"]
        self.sample_rate: int = int(meta["sample_rate"])
        entries = _read_index(self.path / INDEX)
        self.utts: list[str] = [e.utt for e in entries]
        self.speakers: list[str] = [e.spk for e in entries]
        self.paths: list[str] = [e.path for e in entries]
        self.offsets = np.array([e.offset for e in entries], dtype=np.int64)
        self.lengths = np.array([e.length for e in entries], dtype=np.int64)
        self.source_rates = np.array([e.source_rate for e in entries], dtype=np.int64)
        self.crcs = np.array([e.crc for e in entries], dtype=np.uint32)
        self._check_consistent(meta)
        self._positions = {u: i for i, u in enumerate(self.utts)}
        self._mmap: np.ndarray | None = None
        self._checked = np.zeros(len(self.utts), dtype=bool)  # utterances whose CRC32 this process has verified

    def _check_consistent(self, meta: dict[str, Any]) -> None:
        """Catch a truncated audio.bin or an edited index now, not as a wrong crop in the middle of training."""
        samples = int(self.lengths.sum())
        size = _file_size(self.path / AUDIO)
        problems = []
        if len(self.utts) != meta["utterances"] or samples != meta["samples"]:
            problems.append(f"index.tsv lists {len(self.utts)} utterances / {samples} samples, meta.json "
                            f"{meta['utterances']} / {meta['samples']}")
        if size != samples * _DTYPES[self.dtype].itemsize:
            problems.append(f"audio.bin has {size} bytes, expected {samples * _DTYPES[self.dtype].itemsize}")
        if _combined_crc(self.crcs.tolist()) != meta["checksum"]:
            problems.append("index.tsv checksums do not match meta.json")
        if problems:
            raise VoxfastError(f"{self.path}: damaged store ({'; '.join(problems)}); delete it and run `voxfast pack`")

    def __len__(self) -> int:
        return len(self.utts)

    def __contains__(self, utt: object) -> bool:
        return utt in self._positions

    def __repr__(self) -> str:
        return f"PackedStore({str(self.path)!r}, {len(self)} utterances, {self.dtype}, {self.sample_rate} Hz)"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mmap"] = None
        return state

    @property
    def _audio(self) -> np.ndarray:
        if self._mmap is None:
            if self.lengths.sum() == 0:  # np.memmap cannot map an empty file
                self._mmap = np.zeros(0, dtype=_DTYPES[self.dtype])
            else:
                self._mmap = np.memmap(self.path / AUDIO, dtype=_DTYPES[self.dtype], mode="r")
        return self._mmap

    def index_of(self, utt: str) -> int:
        """Position of utterance id `utt`."""
        try:
            return self._positions[utt]
        except KeyError:
            raise VoxfastError(f"utterance {utt!r} is not in store {self.path}") from None

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
        return [utt for i, utt in enumerate(self.utts) if not self._intact(i)]

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
