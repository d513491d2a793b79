"""Utterance embeddings from a trained embedding network: batched by length, optionally into a resumable table.

One forward pass per utterance leaves a GPU mostly idle, but the pooling layers take no padding mask, so
utterances of different lengths cannot simply be zero-padded into one batch. Two ways to get one vector per
utterance, both batched:

* ``full`` (default): the whole utterance (capped at ``max_samples``). Utterances are sorted by length and cut into
  buckets whose lengths are within ``tolerance`` (1 %) of the bucket's shortest and whose padded audio fits
  ``batch_samples``. Each utterance is padded to its bucket's longest by repeating itself from the start (wrap):
  never zeros, which would enter the pooling statistics, and never a crop, which would drop audio. So at most 1 % of
  any utterance's samples are repeats, and embeddings agree with one-at-a-time ones to a cosine above 0.999 (2-8 s
  utterances). Any change of length moves an embedding a little (the last frames change), so a looser tolerance
  trades agreement for fuller batches; ``tolerance=0`` batches equal lengths only and changes nothing at all.
* ``crops``: voxceleb_trainer's evaluation: ``crops`` evenly spaced crops of ``crop_samples`` (wrap-padded when the
  utterance is shorter). The crops' L2-normalised embeddings are averaged and normalised again (mean embedding);
  with ``pairwise`` the mean is kept unnormalised, so the dot product of two utterances' rows is exactly the mean
  cosine over all N x N crop pairs. voxceleb_trainer scores the mean Euclidean distance over those pairs of unit
  vectors, sqrt(2 - 2 cos) averaged, a close variant that needs all N vectors per utterance.

In ``full`` mode (and in ``voxfast.load(...).embed``) utterances shorter than :data:`MIN_SAMPLES` (a third of a
second) are repeat-padded up to it, so one very short file embeds like the others instead of failing the whole run;
``crops`` pads every utterance to the crop length anyway.

A DataLoader reads and pads the next batches in worker processes while the model runs.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from voxfast.audio.features import crop_samples
from voxfast.audio.io import AUDIO_SUFFIXES, AUDIO_SUFFIXES_TEXT, audio_info, find_audio_files, read_audio, to_float32
from voxfast.data.manifest import read_trials, read_utterances
from voxfast.errors import AudioLoadError, VoxfastError
from voxfast.progress import progress_bar
from voxfast.runtime import autocast_for

log = logging.getLogger(__name__)

# The shortest input every registered speaker embedder is given: 32 Kaldi fbank frames (400 + 31 x 160 = 5,360
# samples, 0.34 s at 16 kHz; the log-mel front end makes 34 frames of it). The hard limits are lower: log-mel's
# reflect padding fails below 257 samples and Kaldi fbank (resnet34, se_resnet34, ECAPA) below one 400-sample
# window. But one frame is no utterance: Kaldi CMN turns it into all zeros, and the ResNets halve time three times
# before the pooling, so 32 frames are what leave their mean and standard deviation 4 steps to work on.
MIN_FRAMES = 32
MIN_SAMPLES = crop_samples(MIN_FRAMES)


# ------------------------------------------------------------------------------------------------- input checks


def check_waveform(wave: object, what: str = "waveform") -> np.ndarray:
    """`wave` (a numpy array, torch tensor or sequence of numbers) as a 1-D float32 array, or a VoxfastError that
    says what is wrong with it: not 1-D, empty, not real numbers (strings, objects, complex), NaN or infinite.

    Checked where arrays enter (``SpeakerModel.embed``), because the network would otherwise fail deep inside with
    a torch error, or worse, turn one NaN sample into a NaN embedding that scores NaN against everything. int16
    is taken as PCM (scaled by 1/32768, as reading the file would give); other numbers are cast as they are.
    """
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu()
        wave = wave.float() if wave.dtype == torch.bfloat16 else wave  # numpy has no bfloat16
    try:
        array = np.asarray(wave)
    except (ValueError, TypeError) as exc:  # ragged nested sequences
        raise VoxfastError(f"{what}: not an array of samples ({exc})") from None
    if array.ndim != 1 or array.size == 0:
        raise VoxfastError(f"{what}: expected a non-empty 1-D waveform, got an array of shape {array.shape}"
                           + (" (average the channels to mono first)" if array.ndim == 2 and array.size else ""))
    if array.dtype.kind not in "fiu":
        kind = {"c": "complex numbers (pass the real part)", "U": "strings", "S": "bytes", "O": "Python objects",
                "b": "booleans"}.get(array.dtype.kind, str(array.dtype))
        raise VoxfastError(f"{what}: expected real-valued samples (float or integer), got an array of {kind}")
    array = to_float32(array) if array.dtype == np.int16 else array.astype(np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise VoxfastError(f"{what}: {bad.size} of {array.size} samples are NaN or infinite (first at index "
                           f"{bad[0]}); clean or drop this audio")
    return array


def check_sample_rate(sr: object, what: str = "sr") -> int:
    """`sr` as an int, or a VoxfastError: a rate must be a positive integer number of Hz (not a string, a float or
    a bool), since resampling takes integer ratios and a wrong type would otherwise surface as a scipy error."""
    if isinstance(sr, bool) or not isinstance(sr, numbers.Integral) or sr <= 0:
        raise VoxfastError(f"{what} must be a positive integer sample rate in Hz, got {sr!r}")
    return int(sr)


def pad_to_minimum(wave: np.ndarray) -> np.ndarray:
    """`wave` repeated from its start up to :data:`MIN_SAMPLES` when shorter (as the batches pad); else as it is."""
    return _wrap_to(wave, MIN_SAMPLES) if len(wave) < MIN_SAMPLES else wave


@dataclass(frozen=True)
class Batching:
    """How utterances become model batches (see the module docstring); sizes in samples."""

    mode: str = "full"  # full | crops
    batch_samples: int = 120 * 16000  # padded audio per forward pass
    max_samples: int = 0  # cap on the audio read per utterance (0: all of it)
    tolerance: float = 0.01  # full: longest / shortest length of a bucket is at most 1 + tolerance
    crops: int = 10  # crops: crops per utterance
    crop_samples: int = 4 * 16000  # crops: samples per crop
    pairwise: bool = False  # crops: keep the mean of the unit crop vectors unnormalised (dot = mean pairwise cosine)

    def __post_init__(self) -> None:
        if self.mode not in ("full", "crops"):
            raise VoxfastError(f"unknown embedding mode {self.mode!r}; choose full or crops")
        if self.batch_samples <= 0 or self.crops <= 0 or self.crop_samples <= 0 or self.tolerance < 0:
            raise VoxfastError(f"batch size, crops and crop length must be > 0 and tolerance >= 0, got {self}")


# ------------------------------------------------------------------------------------------------- planning


def length_buckets(lengths: Sequence[int], batch_samples: int, tolerance: float) -> list[tuple[list[int], int]]:
    """(positions in `lengths`, padded length) per batch: similar lengths together, shortest first.

    A bucket takes utterances in length order while the longest stays within (1 + tolerance) x its shortest and
    count x longest stays within `batch_samples`; an utterance longer than `batch_samples` goes alone.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    buckets: list[tuple[list[int], int]] = []
    members: list[int] = []
    for i in order:
        n = lengths[i]
        if members and (n > lengths[members[0]] * (1 + tolerance) or (len(members) + 1) * n > batch_samples):
            buckets.append((members, lengths[members[-1]]))
            members = []
        members.append(i)
    if members:
        buckets.append((members, lengths[members[-1]]))
    return buckets


def evenly_spaced_crops(wave: np.ndarray, crops: int, size: int) -> np.ndarray:
    """(crops, size): crops from start to end at even steps (voxceleb_trainer's eval), wrap-padded when short."""
    if len(wave) < size:
        wave = np.pad(wave, (0, size - len(wave)), mode="wrap")
    starts = np.linspace(0, len(wave) - size, num=crops).astype(np.int64)
    return np.stack([wave[s : s + size] for s in starts])


def _wrap_to(wave: np.ndarray, size: int) -> np.ndarray:
    """Exactly `size` samples: the utterance repeated from its start, or cut if the header understated it."""
    return np.pad(wave, (0, size - len(wave)), mode="wrap") if len(wave) < size else wave[:size]


def _frames(path: str, max_samples: int) -> int:
    """Length in samples from the file header (no decoding), capped at `max_samples` when > 0."""
    frames, _ = audio_info(path)  # soundfile, or PyAV for compressed files (VoxCeleb2's .m4a)
    return min(frames, max_samples) if max_samples > 0 else frames


class SkippedFiles:
    """Unreadable files of one extraction: skipped and listed, but `limit` in a row mean the data is broken."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.items: list[tuple[str, str]] = []  # (path, reason)
        self._run = 0

    def ok(self) -> None:
        self._run = 0

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))
        self._run += 1
        log.warning("skipping unreadable file (%d in a row): %s", self._run, reason)
        if self._run >= self.limit:
            raise VoxfastError(f"{self._run} audio files in a row failed to load, last: {reason} "
                               "(check the paths and --root)")


def _report(skipped: SkippedFiles | None, path: str, reason: str | None) -> None:
    """Count a read; without a SkippedFiles every failure raises (callers needing every row)."""
    if reason is None:
        if skipped is not None:
            skipped.ok()
    elif skipped is None:
        raise AudioLoadError(reason)
    else:
        skipped.add(path, reason)


def _plan(paths: Sequence[str], batching: Batching, threads: int, skipped: SkippedFiles | None,
          progress: bool = False) -> list[tuple[list[int], int]]:
    """Batches of indices into `paths` with their padded length (full) or crop length (crops).

    Full mode reads every header first, so files whose header is unreadable are reported here, in list order.
    Full-mode lengths below :data:`MIN_SAMPLES` are planned at that length, so the reader repeat-pads them; crops
    keep the length asked for (every utterance is wrap-padded to it).
    """
    if batching.mode == "crops":
        per_batch = max(batching.batch_samples // (batching.crops * batching.crop_samples), 1)
        return [(list(range(i, min(i + per_batch, len(paths)))), batching.crop_samples)
                for i in range(0, len(paths), per_batch)]
    good, lengths = [], []
    for i, found in enumerate(_header_lengths(paths, batching.max_samples, threads, progress)):
        _report(skipped, paths[i], found if isinstance(found, str) else None)
        if isinstance(found, int):
            good.append(i)
            lengths.append(max(found, MIN_SAMPLES))
    return [([good[j] for j in members], size) for members, size in
            length_buckets(lengths, batching.batch_samples, batching.tolerance)]


def _header_lengths(paths: Sequence[str], max_samples: int, threads: int, progress: bool) -> Iterator[int | str]:
    """Each file's length, or why it cannot be opened, in order. Header reads wait on storage, so threads
    overlap them; chunks keep the pending futures few at a million files."""
    bar = progress_bar(len(paths), "lengths", progress)
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        for start in range(0, len(paths), 4096):
            chunk = paths[start : start + 4096]
            yield from pool.map(_length_or_error, chunk, [max_samples] * len(chunk))
            bar.update(len(chunk))
    bar.close()


def _length_or_error(path: str, max_samples: int) -> int | str:
    try:
        return _frames(path, max_samples)
    except AudioLoadError as exc:
        return str(exc)


# ------------------------------------------------------------------------------------------------- reading


class _BatchReader(Dataset):
    """Item b: batch b of the plan read and padded (or cropped) into one array, with each file's failure."""

    def __init__(self, paths: Sequence[str], plan: list[tuple[list[int], int]], batching: Batching,
                 sample_rate: int) -> None:
        self.paths, self.plan, self.batching, self.sample_rate = list(paths), plan, batching, sample_rate

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> dict[str, Any]:
        indices, size = self.plan[b]
        rows, errors = [], []
        for i in indices:
            try:
                rows.append(self._read(self.paths[i], size))
                errors.append(None)
            except AudioLoadError as exc:
                errors.append(str(exc))
        wave = np.concatenate(rows) if rows else np.zeros((0, size), np.float32)
        return {"indices": indices, "errors": errors, "wave": torch.from_numpy(wave)}

    def _read(self, path: str, size: int) -> np.ndarray:
        """(1, size) in full mode, (crops, size) in crops mode."""
        frames = self.batching.max_samples if self.batching.max_samples > 0 else -1
        wave = read_audio(path, frames=frames, sample_rate=self.sample_rate)
        if self.batching.mode == "crops":
            return evenly_spaced_crops(wave, self.batching.crops, size)
        return _wrap_to(wave, size)[None]


# ------------------------------------------------------------------------------------------------- embedding


def embed_batches(
    model: nn.Module,
    paths: Sequence[str],
    device: torch.device,
    batching: Batching,
    sample_rate: int = 16000,
    num_workers: int = 0,
    precision: str = "fp32",
    skipped: SkippedFiles | None = None,
    progress: bool = False,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """(indices into `paths`, (n, D) float32 L2-normalised rows) per batch, in the plan's order.

    Unreadable files go to `skipped`, or raise AudioLoadError when it is None.
    """
    sample_rate = check_sample_rate(sample_rate, "sample_rate")
    plan = _plan(paths, batching, num_workers, skipped, progress)
    loader = DataLoader(_BatchReader(paths, plan, batching, sample_rate), batch_size=None, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    crops = batching.crops if batching.mode == "crops" else 1
    bar = progress_bar(sum(len(indices) for indices, _ in plan), "embeddings", progress)
    model.eval()
    try:
        with torch.inference_mode(), autocast_for(precision, device):
            for batch in loader:
                good = _account(batch, paths, skipped)
                bar.update(len(batch["indices"]))
                if good:
                    emb = F.normalize(model(batch["wave"].to(device, non_blocking=True)).float(), dim=1)
                    if crops > 1:
                        emb = emb.view(len(good), crops, -1).mean(dim=1)
                        emb = emb if batching.pairwise else F.normalize(emb, dim=1)
                    yield good, emb.cpu().numpy()
    finally:
        bar.close()


def _account(batch: dict[str, Any], paths: Sequence[str], skipped: SkippedFiles | None) -> list[int]:
    """The batch's readable indices, reporting each read in order."""
    good = []
    for i, error in zip(batch["indices"], batch["errors"], strict=True):
        _report(skipped, paths[i], error)
        if error is None:
            good.append(int(i))
    return good


def extract_embeddings(
    model: nn.Module,
    paths: Sequence[str],
    device: torch.device,
    sample_rate: int = 16000,
    max_samples: int = 0,
    num_workers: int = 0,
    progress: bool = False,
    batch_seconds: float = 120.0,
    tolerance: float = 0.01,
    precision: str = "fp32",
    batching: Batching | None = None,
) -> np.ndarray:
    """(N, D) float32 L2-normalised whole-utterance embeddings, row i for paths[i]; an unreadable file raises.

    Utterances are batched by length (see the module docstring); `tolerance=0` reproduces one-at-a-time exactly.
    A `batching` given replaces the full-utterance one built from the sizes (e.g. evenly spaced crops).
    """
    sample_rate = check_sample_rate(sample_rate, "sample_rate")
    batching = batching or Batching("full", int(batch_seconds * sample_rate), max_samples, tolerance)
    out: np.ndarray | None = None
    for indices, emb in embed_batches(model, paths, device, batching, sample_rate, num_workers, precision,
                                      progress=progress):
        if out is None:
            out = np.empty((len(paths), emb.shape[1]), dtype=np.float32)
        out[indices] = emb
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


# ------------------------------------------------------------------------------------------------- tables


@dataclass
class ExtractSummary:
    """What :func:`extract_to_file` did: rows written, rows taken from an interrupted run, files skipped."""

    written: int = 0
    resumed: int = 0
    dim: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def extract_to_file(
    model: nn.Module,
    ids: Sequence[str],
    paths: Sequence[str],
    out: str | Path,
    device: torch.device,
    batching: Batching,
    sample_rate: int = 16000,
    num_workers: int = 0,
    precision: str = "fp32",
    settings: dict[str, Any] | None = None,
    flush_seconds: float = 30.0,
    max_consecutive_failures: int = 20,
    progress: bool = False,
) -> ExtractSummary:
    """Embed `paths` into one :func:`save_embeddings` table keyed by `ids`, resuming an interrupted run.

    New rows are flushed every `flush_seconds` as chunk files in ``OUT.partial/`` (each chunk holds only new rows,
    so flushing stays cheap at a million utterances); a restart with the same `settings` (what decides the
    embeddings: checkpoint, mode, ...) skips the ids found there. The table replaces OUT atomically, in the order
    of `ids`, and the partial folder is removed. Unreadable files are skipped and listed in the summary.
    """
    sample_rate = check_sample_rate(sample_rate, "sample_rate")  # before the partial folder is made
    _check_unique(ids, paths)
    partial = _Partial(Path(out), settings or {})
    done = partial.load(set(ids))
    todo = [i for i, utt in enumerate(ids) if utt not in done]
    summary = ExtractSummary(resumed=len(done))
    skipped = SkippedFiles(max_consecutive_failures)
    last_flush = time.monotonic()
    for indices, emb in embed_batches(model, [paths[i] for i in todo], device, batching, sample_rate, num_workers,
                                      precision, skipped, progress):
        partial.add([ids[todo[i]] for i in indices], emb)
        if time.monotonic() - last_flush >= flush_seconds:
            done.update(partial.flush())
            last_flush = time.monotonic()
    done.update(partial.flush())
    summary.skipped = skipped.items
    kept = [utt for utt in ids if utt in done]
    if not kept:
        raise VoxfastError(f"no utterance could be embedded ({len(skipped.items)} unreadable); nothing written")
    table = np.stack([done[utt] for utt in kept])
    save_embeddings(out, kept, table)
    partial.remove()
    summary.written, summary.dim = len(kept), table.shape[1]
    return summary


def _check_unique(ids: Sequence[str], paths: Sequence[str]) -> None:
    """A repeated id would make one row overwrite another; name both entries."""
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} ids for {len(paths)} paths")
    first: dict[str, int] = {}
    for i, utt in enumerate(ids):
        j = first.setdefault(utt, i)
        if j != i:
            raise VoxfastError(f"duplicate utterance id {utt!r}: entries {j + 1} ({paths[j]}) and {i + 1} ({paths[i]})")


class _Partial:
    """The rows of an unfinished extraction: ``OUT.partial/settings.json`` plus ``chunk-NNNNNN.npz`` files."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.dir = out.with_name(out.name + ".partial")
        self.settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        self.pending_ids: list[str] = []
        self.pending: list[np.ndarray] = []
        self.chunks = 0

    def load(self, wanted: set[str]) -> dict[str, np.ndarray]:
        """Rows of an earlier run with the same settings (only ids still wanted); starts the folder when new."""
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True)
            (self.dir / "settings.json").write_text(json.dumps(self.settings, indent=2, sort_keys=True))
            return {}
        saved = self._saved_settings()
        if saved != self.settings:
            changed = sorted(k for k in {*saved, *self.settings} if saved.get(k) != self.settings.get(k))
            raise VoxfastError(f"{self.dir} holds an interrupted extraction with other settings "
                               f"({', '.join(changed)}); rerun with the same ones to resume, or delete the folder "
                               "to start afresh")
        rows: dict[str, np.ndarray] = {}
        files = sorted(self.dir.glob("chunk-*.npz"))
        for chunk in files:
            ids, emb = load_embeddings(chunk)
            rows.update((utt, row) for utt, row in zip(ids, emb, strict=True) if utt in wanted)
        self.chunks = len(files)
        log.info("resuming %s: %d embeddings already done", self.dir, len(rows))
        return rows

    def _saved_settings(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "settings.json").read_text())
        except (OSError, ValueError) as exc:
            raise VoxfastError(f"{self.dir}: unreadable settings.json ({exc}); delete the folder to start afresh"
                               ) from exc

    def add(self, ids: list[str], emb: np.ndarray) -> None:
        self.pending_ids += ids
        self.pending.append(emb)

    def flush(self) -> dict[str, np.ndarray]:
        """Write the pending rows as one more chunk (atomically) and hand them over."""
        if not self.pending_ids:
            return {}
        emb = np.concatenate(self.pending)
        save_embeddings(self.dir / f"chunk-{self.chunks:06d}.npz", self.pending_ids, emb)
        rows = dict(zip(self.pending_ids, emb, strict=True))
        self.chunks += 1
        self.pending_ids, self.pending = [], []
        return rows

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- sources


def extraction_source(source: str | Path, root: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(ids, audio paths) of a training list, a Kaldi data dir, a folder of audio files or a trial list.

    Folder: every audio file below it (:func:`find_audio_files`), id = the path relative to it. Trial list (its
    first line has 3 columns, or 2 audio file names): every utterance it names once, id = the name as written,
    path relative to `root` (default: the list's folder), so ``voxfast score`` finds the ids. Otherwise
    ``read_utterances``.
    """
    source = Path(source)
    if source.is_dir() and not (source / "wav.scp").is_file():
        files = find_audio_files(source)
        if not files:
            raise VoxfastError(f"{source}: no {AUDIO_SUFFIXES_TEXT} files found (pass a list, a Kaldi dir or a "
                               "folder of audio)")
        return [p.relative_to(source).as_posix() for p in files], [str(p.resolve()) for p in files]
    if source.is_file() and _is_trial_list(source):
        trials = read_trials(source)
        names = sorted({name for t in trials for name in (t.enroll, t.test)})
        base = Path(root) if root is not None else source.parent
        return names, [os.path.normpath(base / name) for name in names]
    utts = read_utterances(source, root)
    return [u.utt for u in utts], [u.path for u in utts]


def _is_trial_list(path: Path) -> bool:
    """A trial line has 3 columns or two audio names; a training list line is `speaker path`."""
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                return len(fields) == 3 or (len(fields) == 2 and fields[0].lower().endswith(AUDIO_SUFFIXES))
    return False


# ------------------------------------------------------------------------------------------------- files


def save_embeddings(path: str | Path, ids: Sequence[str], emb: np.ndarray) -> None:
    """Write an embedding table keyed by utterance id: one .npz holding `ids` (str) and `emb` (N, D) float32.

    Written to a temporary file and renamed, so a killed extraction never leaves a truncated table behind.
    """
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"expected (len(ids), D) embeddings, got {emb.shape} for {len(ids)} ids")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(list(ids), dtype=str), emb=emb)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(ids, (N, D) float32) from :func:`save_embeddings`; a missing or foreign file fails naming it."""
    path = Path(path)
    if not path.is_file():
        raise VoxfastError(f"embedding file not found: {path} (write one with `voxfast extract`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, emb = [str(u) for u in data["ids"]], np.asarray(data["emb"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise VoxfastError(f"{path}: not a voxfast embedding file ({exc}); write one with `voxfast extract`") from exc
    if emb.ndim != 2 or len(ids) != emb.shape[0]:
        raise VoxfastError(f"{path}: {len(ids)} ids for embeddings of shape {emb.shape}")
    _check_rows(path, ids, emb)
    return ids, emb


def _check_rows(path: Path, ids: list[str], emb: np.ndarray) -> None:
    """A table that would score silently wrong is refused: a repeated id (which row would a trial get?) or a row
    that is zero or not finite (its cosine is NaN or 0 whatever the other side), each named."""
    seen: set[str] = set()
    repeated = next((u for u in ids if u in seen or seen.add(u)), None)
    if repeated is not None:
        raise VoxfastError(f"{path}: id {repeated!r} appears more than once; extract the table again")
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        kind = "not finite" if not np.isfinite(norms[bad[0]]) else "all zeros"
        raise VoxfastError(f"{path}: the embedding of {ids[bad[0]]!r} is {kind} ({bad.size} such row(s)); extract "
                           "that utterance again, or check its audio")
