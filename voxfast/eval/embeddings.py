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

A DataLoader reads and pads the next batches in worker processes while the model runs. Under torchrun,
:func:`extract_sharded` gives each rank an equal share of the audio and rank 0 merges the shards;
:func:`speaker_subset` picks a few utterances per speaker for a speaker-mean cohort.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import re
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
from voxfast.data.manifest import Utterance, read_trials, read_utterances
from voxfast.errors import AudioLoadError, VoxfastError
from voxfast.eval.tables import load_embeddings, save_embeddings
from voxfast.fileio import atomic_text
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
    shards: int = 0  # sharded: how many shards rank 0 merged into the table (0: one process wrote it)
    shard: str = ""  # sharded, ranks > 0: the shard file this process wrote (rank 0 writes the table)


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
    run = _Run(model, device, batching, sample_rate, num_workers, precision, flush_seconds, max_consecutive_failures,
               progress)
    done, summary = _embed_resumable(run, ids, paths, partial)
    kept = [utt for utt in ids if utt in done]
    if not kept:
        raise VoxfastError(f"no utterance could be embedded ({len(summary.skipped)} unreadable); nothing written")
    table = np.stack([done[utt] for utt in kept])
    save_embeddings(out, kept, table)
    partial.remove()
    summary.written, summary.dim = len(kept), table.shape[1]
    return summary


@dataclass(frozen=True)
class _Run:
    """How one process embeds (model, device, batching, reading), shared by whole tables and shards."""

    model: nn.Module
    device: torch.device
    batching: Batching
    sample_rate: int = 16000
    num_workers: int = 0
    precision: str = "fp32"
    flush_seconds: float = 30.0
    max_consecutive_failures: int = 20
    progress: bool = False


def _embed_resumable(run: _Run, ids: Sequence[str], paths: Sequence[str], partial: _Partial
                     ) -> tuple[dict[str, np.ndarray], ExtractSummary]:
    """Rows of every readable id (those of an interrupted run read back from `partial`, the rest embedded and
    flushed to it every `flush_seconds`), and a summary with `resumed` and `skipped` filled in."""
    done = partial.load(set(ids))
    todo = [i for i, utt in enumerate(ids) if utt not in done]
    summary = ExtractSummary(resumed=len(done))
    skipped = SkippedFiles(run.max_consecutive_failures)
    last_flush = time.monotonic()
    for indices, emb in embed_batches(run.model, [paths[i] for i in todo], run.device, run.batching,
                                      run.sample_rate, run.num_workers, run.precision, skipped, run.progress):
        partial.add([ids[todo[i]] for i in indices], emb)
        if time.monotonic() - last_flush >= run.flush_seconds:
            done.update(partial.flush())
            last_flush = time.monotonic()
    done.update(partial.flush())
    summary.skipped = skipped.items
    return done, summary


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


# ------------------------------------------------------------------------------------------------- shards

_SHARD = re.compile(r"^rank-(\d+)-of-(\d+)\b")


def extract_sharded(
    model: nn.Module,
    ids: Sequence[str],
    paths: Sequence[str],
    out: str | Path,
    device: torch.device,
    batching: Batching,
    rank: int,
    world: int,
    sample_rate: int = 16000,
    num_workers: int = 0,
    precision: str = "fp32",
    settings: dict[str, Any] | None = None,
    flush_seconds: float = 30.0,
    max_consecutive_failures: int = 20,
    progress: bool = False,
    poll_seconds: float = 2.0,
) -> ExtractSummary:
    """:func:`extract_to_file` split over `world` processes (torchrun): this rank's share into a shard, rank 0
    merges.

    Every rank computes the same split (:func:`deal_by_size`: equal audio per rank, so ranks finish together),
    embeds its share into ``OUT.shards/rank-R-of-W.npz`` through the resumable partial folder of that shard, and
    marks it finished with ``rank-R-of-W.json`` (settings, the share's fingerprint, the skipped files), written
    after the shard. Rank 0 then waits for every marker, checks that each utterance is in exactly one shard or
    skipped by its rank, writes OUT in the order of `ids` and removes ``OUT.shards/``; the other ranks return a
    summary of their shard alone.

    The finish line is files, not a ``torch.distributed`` barrier: ranks can end hours apart (a resumed rank
    with nothing left, a slow disk) and a collective times out after 30 minutes; a marker also outlives a killed
    launch, so a re-run with the same world size resumes every shard, finished or not, and can merge. (Across
    nodes OUT's folder must be shared, which the merge needs anyway.) World 1 is :func:`extract_to_file`, after
    the check that no shards of a multi-process run are waiting.
    """
    sample_rate = check_sample_rate(sample_rate, "sample_rate")
    _check_unique(ids, paths)
    out = Path(out)
    folder = shard_folder(out)
    _check_world(folder, out, world)
    if world == 1:
        return extract_to_file(model, ids, paths, out, device, batching, sample_rate, num_workers, precision,
                               settings, flush_seconds, max_consecutive_failures, progress)
    if not 0 <= rank < world:
        raise VoxfastError(f"rank {rank} outside world size {world} (check RANK and WORLD_SIZE)")
    started = time.time()
    run = _Run(model, device, batching, sample_rate, num_workers, precision, flush_seconds, max_consecutive_failures,
               progress)
    share = deal_by_size(paths, world, max(num_workers, 4))[rank]
    mine = _Shard(folder, rank, world, settings or {})
    summary = mine.extract(run, [ids[i] for i in share], [paths[i] for i in share])
    if rank != 0:
        return summary
    return _merge(folder, out, ids, world, mine.settings, poll_seconds, started)


def shard_folder(out: str | Path) -> Path:
    """Where the shards of a sharded extraction of OUT live: ``OUT.shards/`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def _check_world(folder: Path, out: Path, world: int) -> None:
    """Shards (or a single-process partial folder) of another world size cannot be resumed by this launch: their
    utterances were dealt for that many ranks. Say which and what to do, before any work."""
    partial = out.with_name(out.name + ".partial")
    if world > 1 and partial.is_dir():
        raise VoxfastError(f"{partial} holds an interrupted single-process extraction of {out}; rerun without "
                           "torchrun to resume it, or delete that folder to extract with "
                           f"{world} processes")
    sizes = {int(m[2]) for p in folder.glob("rank-*") if (m := _SHARD.match(p.name))} if folder.is_dir() else set()
    others = sorted(sizes - {world})
    if others:
        raise VoxfastError(f"{folder} holds the shards of an interrupted {others[0]}-process extraction, but this "
                           f"run has {world}; rerun with `torchrun --nproc_per_node {others[0]}` (same command) "
                           f"to resume it, or delete {folder} to start afresh")


def deal_by_size(paths: Sequence[str], world: int, threads: int = 4) -> list[list[int]]:
    """Positions in `paths` of each rank's share, in list order: utterances sorted by file size, largest first,
    dealt in a snake (0..W-1, W-1..0, ...), so shares differ by at most one utterance and about the audio of one.

    File size stands for length: a stat costs no decoding (every rank computes the split, at a million files),
    and bytes grow with duration for WAV exactly and for AAC nearly. A missing file counts 0; its rank reports it.
    Equal counts matter as well as equal audio: opening and decoding cost per file, which equal-audio blocks of
    the sorted list (few long files against many short ones) would leave unequal.
    """
    sizes = _file_sizes(paths, threads)
    order = sorted(range(len(paths)), key=lambda i: (-sizes[i], i))
    shares: list[list[int]] = [[] for _ in range(world)]
    for k, i in enumerate(order):
        turn, seat = divmod(k, world)
        shares[seat if turn % 2 == 0 else world - 1 - seat].append(i)
    return [sorted(share) for share in shares]


def _file_sizes(paths: Sequence[str], threads: int) -> list[int]:
    def size(path: str) -> int:
        try:
            return os.stat(path).st_size
        except OSError:
            return 0

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        return list(pool.map(size, paths, chunksize=1024))


class _Shard:
    """One rank's shard: ``rank-R-of-W.npz`` (its rows), its partial folder, and ``rank-R-of-W.json`` (finished)."""

    def __init__(self, folder: Path, rank: int, world: int, settings: dict[str, Any]) -> None:
        self.folder, self.rank, self.world = folder, rank, world
        self.settings = json.loads(json.dumps(settings))  # as it reads back
        self.table = folder / f"rank-{rank}-of-{world}.npz"
        self.marker = folder / f"rank-{rank}-of-{world}.json"

    def extract(self, run: _Run, ids: list[str], paths: list[str]) -> ExtractSummary:
        """Embed the share (resuming its partial folder) unless a finished shard of the same share is there."""
        fingerprint = _fingerprint(ids)
        finished = self._finished(fingerprint)
        if finished is not None:
            log.info("%s: finished by an earlier launch, %d rows", self.table, finished.written)
            return finished
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = _Partial(self.table, {**self.settings, "shard": fingerprint})
        done, summary = _embed_resumable(run, ids, paths, partial)
        kept = [utt for utt in ids if utt in done]
        table = np.stack([done[utt] for utt in kept]) if kept else np.zeros((0, 0), np.float32)
        save_embeddings(self.table, kept, table)
        missing = [(utt, path) for utt, path in zip(ids, paths, strict=True) if utt not in done]
        with atomic_text(self.marker) as f:
            json.dump({"settings": self.settings, "shard": fingerprint, "written": len(kept), "dim": table.shape[1],
                       "resumed": summary.resumed, "missing": missing, "skipped": summary.skipped}, f)
        partial.remove()
        summary.written, summary.dim, summary.shard = len(kept), table.shape[1], str(self.table)
        return summary

    def _finished(self, fingerprint: str) -> ExtractSummary | None:
        """The summary of this shard finished by an earlier launch with the same settings and share, else None."""
        if not self.marker.is_file():
            return None
        if not self.table.is_file():  # the rows went missing: embed again, and let rank 0 wait for the new marker
            self.marker.unlink(missing_ok=True)
            return None
        record = _read_marker(self.marker)
        if record["settings"] != self.settings or record["shard"] != fingerprint:
            raise VoxfastError(f"{self.marker}: this shard was extracted with other settings or another list "
                               f"({_changed(record['settings'], self.settings) or 'the utterances'}); rerun with "
                               f"the same ones to resume, or delete {self.folder} to start afresh")
        return ExtractSummary(written=record["written"], resumed=record["written"], dim=record["dim"],
                              shard=str(self.table), skipped=[(str(f), str(why)) for f, why in record["skipped"]])


def _fingerprint(ids: Sequence[str]) -> str:
    """Which utterances a share holds: a changed list or split must not be merged with an old shard."""
    return f"{len(ids)}:{hashlib.sha1(chr(10).join(ids).encode()).hexdigest()}"


def _changed(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(sorted(k for k in {*a, *b} if a.get(k) != b.get(k)))


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        _ = record["settings"], record["shard"], record["written"], record["dim"], record["missing"], record["skipped"]
        return record
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VoxfastError(f"{path}: unreadable shard record ({exc}); delete {path.parent} to start afresh"
                           ) from exc


def _merge(folder: Path, out: Path, ids: Sequence[str], world: int, settings: dict[str, Any], poll: float,
           started: float) -> ExtractSummary:
    """Rank 0: wait for every shard's marker, check that each id is in exactly one shard or skipped by its rank,
    write OUT in the order of `ids` and remove the shard folder. A shard finished before this launch `started`
    counts all its rows as resumed."""
    records = _wait_for_shards(folder, world, poll, started)
    rows: dict[str, np.ndarray] = {}
    summary = ExtractSummary(shards=world)
    missing: set[str] = set()
    for rank, record in enumerate(records):
        if record["settings"] != settings:
            raise VoxfastError(f"{folder}/rank-{rank}-of-{world}.json: extracted with other settings "
                               f"({_changed(record['settings'], settings)}); delete {folder} and extract again")
        shard_ids, emb = load_embeddings(folder / f"rank-{rank}-of-{world}.npz")
        twice = next((u for u in shard_ids if u in rows), None)
        if twice is not None:
            raise VoxfastError(f"{folder}: utterance {twice!r} is in two shards; delete {folder} and extract again")
        rows.update(zip(shard_ids, emb, strict=True))
        missing.update(utt for utt, _ in record["missing"])
        summary.resumed += record["written"] if record["earlier"] else record["resumed"]
        summary.skipped += [(str(f), str(why)) for f, why in record["skipped"]]
    _check_complete(folder, ids, rows, missing)
    kept = [utt for utt in ids if utt in rows]
    if not kept:
        raise VoxfastError(f"no utterance could be embedded ({len(summary.skipped)} unreadable); nothing written")
    table = np.stack([rows[utt] for utt in kept])
    save_embeddings(out, kept, table)
    shutil.rmtree(folder, ignore_errors=True)
    summary.written, summary.dim = len(kept), table.shape[1]
    return summary


def _wait_for_shards(folder: Path, world: int, poll: float, started: float) -> list[dict[str, Any]]:
    """Every rank's finished-shard record, polling for the missing ones (torchrun stops rank 0 if a rank fails),
    each with ``earlier``: written before this launch `started`."""
    markers = [folder / f"rank-{r}-of-{world}.json" for r in range(world)]
    waited, said = 0.0, 0.0
    while not all(m.is_file() for m in markers):
        if waited - said >= 600:
            said = waited
            log.info("waiting for shards %s", [m.name for m in markers if not m.is_file()])
        time.sleep(poll)
        waited += poll
    return [{**_read_marker(m), "earlier": m.stat().st_mtime < started} for m in markers]


def _check_complete(folder: Path, ids: Sequence[str], rows: dict[str, np.ndarray], missing: set[str]) -> None:
    """Every id of the source is in one shard or skipped by its rank, and nothing else is: a shard from another
    list is refused instead of silently dropping or adding utterances."""
    wanted = set(ids)
    stray = next((u for u in [*rows, *missing] if u not in wanted), None)
    lost = next((u for u in ids if u not in rows and u not in missing), None)
    if stray is not None or lost is not None:
        what = f"{stray!r} is not in the source" if stray is not None else f"{lost!r} is in no shard"
        raise VoxfastError(f"{folder}: the shards do not match the source ({what}); delete {folder} and extract "
                           "again")


# ------------------------------------------------------------------------------------------------- sources


def extraction_source(source: str | Path, root: str | Path | None = None, per_speaker: int = 0, seed: int = 0
                      ) -> tuple[list[str], list[str]]:
    """(ids, audio paths) of a training list, a Kaldi data dir, a folder of audio files or a trial list.

    Folder: every audio file below it (:func:`find_audio_files`), id = the path relative to it. Trial list (its
    first line has 3 columns, or 2 audio file names): every utterance it names once, id = the name as written,
    path relative to `root` (default: the list's folder), so ``voxfast score`` finds the ids. Otherwise
    ``read_utterances``. `per_speaker` > 0 keeps only that many utterances of each speaker
    (:func:`speaker_subset`), which needs a source with speakers: a training list or a Kaldi dir.
    """
    if per_speaker < 0:
        raise VoxfastError(f"per_speaker must be >= 0 (0: every utterance), got {per_speaker}")
    source = Path(source)
    if source.is_dir() and not (source / "wav.scp").is_file():
        _no_speakers(source, "a folder of audio files", per_speaker)
        files = find_audio_files(source)
        if not files:
            raise VoxfastError(f"{source}: no {AUDIO_SUFFIXES_TEXT} files found (pass a list, a Kaldi dir or a "
                               "folder of audio)")
        return [p.relative_to(source).as_posix() for p in files], [str(p.resolve()) for p in files]
    if source.is_file() and _is_trial_list(source):
        _no_speakers(source, "a trial list", per_speaker)
        trials = read_trials(source)
        names = sorted({name for t in trials for name in (t.enroll, t.test)})
        base = Path(root) if root is not None else source.parent
        return names, [os.path.normpath(base / name) for name in names]
    utts = read_utterances(source, root)
    if per_speaker:
        utts = speaker_subset(utts, per_speaker, seed)
    return [u.utt for u in utts], [u.path for u in utts]


def _no_speakers(source: Path, kind: str, per_speaker: int) -> None:
    if per_speaker:
        raise VoxfastError(f"{source} is {kind}: it names no speakers, so --per-speaker cannot choose among a "
                           "speaker's utterances; pass the training list or Kaldi data dir of the cohort")


def speaker_subset(utts: Sequence[Utterance], per_speaker: int, seed: int = 0) -> list[Utterance]:
    """At most `per_speaker` utterances of each speaker, in list order: a speaker-mean cohort for N x speakers
    utterances instead of all of them (VoxCeleb2: 5,994 means from 10 x 5,994 files, not 1.09 M).

    The rule: a speaker with more than N utterances keeps those at positions
    ``numpy.random.default_rng(s).choice(count, N, replace=False)`` of its utterances sorted by id, with
    ``s = int.from_bytes(sha256(f"{seed}:{speaker}").digest()[:8], "little")``; one with N or fewer keeps all.

    Why uniformly random: a speaker mean estimates the speaker's average embedding over all of their speech, and
    a uniform sample does that without bias, spreading over the speaker's sessions (videos) as the full list
    does. The longest utterances would favour a few long sessions (one channel, one room) and need every file's
    header read first. Seeded per speaker from its name, the choice is the same whatever the list's order or the
    other speakers in it, so a grown list keeps its earlier picks.
    """
    if per_speaker <= 0:
        raise VoxfastError(f"per_speaker must be > 0, got {per_speaker}")
    members: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        members.setdefault(u.spk, []).append(i)
    chosen: list[int] = []
    for spk, own in members.items():
        if len(own) <= per_speaker:
            chosen += own
            continue
        ranked = sorted(own, key=lambda i: utts[i].utt)
        digest = hashlib.sha256(f"{seed}:{spk}".encode()).digest()[:8]
        picks = np.random.default_rng(int.from_bytes(digest, "little")).choice(len(ranked), per_speaker,
                                                                               replace=False)
        chosen += [ranked[j] for j in picks]
    return [utts[i] for i in sorted(chosen)]


def _is_trial_list(path: Path) -> bool:
    """A trial line has 3 columns or two audio names; a training list line is `speaker path`."""
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                return len(fields) == 3 or (len(fields) == 2 and fields[0].lower().endswith(AUDIO_SUFFIXES))
    return False


# ------------------------------------------------------------------------------------------------- files
