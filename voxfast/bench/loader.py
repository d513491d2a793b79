"""`voxfast bench-loader`: voxfast's loader against the voxceleb_trainer recipe, timed in the same run.

The baseline re-implements what voxceleb_trainer's loader does per training crop: read the whole file
as float64, crop (wrap-padding short files), and for augmentation read whole noise files the same way
and reverberate with `scipy.signal.convolve`. Every configuration runs through a DataLoader with the
same workers and batch size after one untimed pass has warmed the page cache, so the ratios compare
only the per-crop work. Configurations run in interleaved rounds (all of them, then all again) and each
reports its median round: on a shared machine the load drifts over tens of seconds, and a baseline timed
once in a slow minute skewed every single-shot ratio taken against it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from voxfast.audio.augment import (
    AugmentSpec,
    DeviceBank,
    NoiseBank,
    augment_batch,
    draw_plan,
    stack_plans,
)
from voxfast.audio.features import crop_samples
from voxfast.audio.store import PackedStore, is_store, pack_store
from voxfast.config import AugmentConfig
from voxfast.data.manifest import Utterance, read_utterances
from voxfast.data.speaker import BatchRing, FileSource, RingBatches, StoreSource, TrainCrops, collate_crops
from voxfast.data.synthetic import CorpusSpec, make_corpus

log = logging.getLogger(__name__)
CATEGORIES = ("noise", "speech", "music")
_RECIPE = {"noise": ((1, 1), (0, 15)), "speech": ((3, 7), (13, 20)), "music": ((1, 1), (5, 15))}  # files, SNR dB


@dataclass
class BenchResult:
    name: str
    samples_per_s: float  # median of the rounds
    per_worker: float
    baseline: str
    speedup: float = field(default=0.0)
    rounds: list[float] = field(default_factory=list)  # samples/s of each round


class VoxcelebTrainerCrops(Dataset):
    """The baseline: whole-file float64 reads, crop, and voxceleb_trainer's AugmentWAV maths."""

    def __init__(self, paths: list[str], num_samples: int, noise_dir: Path | None, rir_dir: Path | None) -> None:
        self.paths = paths
        self.num_samples = num_samples
        self.augment = noise_dir is not None
        if self.augment:
            self.noises = {c: sorted(str(p) for p in (noise_dir / c).rglob("*.wav")) for c in CATEGORIES}
            self.rirs = sorted(str(p) for p in rir_dir.rglob("*.wav"))

    def __len__(self) -> int:
        return 1 << 30

    def _load(self, path: str, rng: np.random.Generator) -> np.ndarray:
        audio, _ = sf.read(path)  # float64, whole file
        if len(audio) <= self.num_samples:
            audio = np.pad(audio, (0, self.num_samples - len(audio) + 1), "wrap")
        start = int(rng.random() * (len(audio) - self.num_samples))
        return audio[start : start + self.num_samples].astype(np.float64)

    def __getitem__(self, key: int) -> np.ndarray:
        rng = np.random.default_rng(key)
        audio = self._load(self.paths[key % len(self.paths)], rng)[None]
        if self.augment:
            kind = int(rng.integers(5))
            if kind == 1:
                audio = self._reverberate(audio, rng)
            elif kind > 1:
                audio = self._additive(("music", "speech", "noise")[kind - 2], audio, rng)
        return audio[0].astype(np.float32)

    def _additive(self, category: str, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        count, (lo, hi) = _RECIPE[category]
        clean_db = 10 * np.log10(np.mean(audio**2) + 1e-4)
        n = int(rng.integers(count[0], count[1] + 1))
        files = rng.choice(self.noises[category], size=n, replace=n > len(self.noises[category]))
        noises = []
        for path in files:
            noise = self._load(str(path), rng)[None]
            noise_db = 10 * np.log10(np.mean(noise[0] ** 2) + 1e-4)
            noises.append(np.sqrt(10 ** ((clean_db - noise_db - rng.uniform(lo, hi)) / 10)) * noise)
        return np.sum(np.concatenate(noises, axis=0), axis=0, keepdims=True) + audio

    def _reverberate(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rir, _ = sf.read(self.rirs[int(rng.integers(len(self.rirs)))])
        rir = rir.astype(np.float64)[None]
        rir = rir / np.sqrt(np.sum(rir**2))
        return scipy.signal.convolve(audio, rir, mode="full")[:, : self.num_samples]


class _EndlessBatches(Sampler):
    """Batches of (index, crop seed) cycling through the list, for as long as the timer runs."""

    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch = n, batch

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return 1 << 30

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for j in itertools.count():
            yield [((j * self.batch + r) % self.n, j * self.batch + r) for r in range(self.batch)]


def _collate_baseline(items: list[np.ndarray]) -> dict[str, Any]:
    """voxceleb_trainer's transport: a float tensor per batch, pickled through shared memory."""
    return {"wave": torch.from_numpy(np.stack(items)), "label": torch.zeros(len(items), dtype=torch.long)}


def _time_loader(loader: DataLoader, seconds: float, take: Callable[[dict[str, Any]], torch.Tensor]) -> float:
    """Crops per second over at least `seconds`, after the first batch (worker start-up) is excluded.

    `take` is what the consumer does with a batch to get at its crops (for the ring: a view of its slot).
    """
    samples, start = 0, None
    for b in loader:
        wave = take(b)
        if start is None:
            start = time.perf_counter()
            continue
        samples += wave.shape[0]
        if time.perf_counter() - start >= seconds:
            break
    return samples / (time.perf_counter() - start)


def _warm_cache(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def bench_loader(list_path: str | None, make_corpus_dir: str | None = None, speakers: int = 40,
                 noise_dir: str | None = None, rir_dir: str | None = None, store_dir: str | None = None,
                 **options: Any) -> list[BenchResult]:
    """`voxfast bench-loader`: pick (or write) the corpus, then :func:`run_bench` (options: its keywords).

    --make-corpus writes a VoxCeleb-shaped corpus (4-16 s utterances); without a list, the demo corpus is used
    (generated when missing). Noise and RIRs default to the folders beside the list, the store to <list>/store.
    """
    if make_corpus_dir:
        spec = CorpusSpec(train_speakers=speakers, test_speakers=2, train_utts=10, test_utts=2,
                          min_seconds=4.0, max_seconds=16.0)
        list_path = make_corpus(make_corpus_dir, spec)["train_list"]
    elif not list_path:
        list_path = "demo_data/train_list.txt"
        if not Path(list_path).is_file():
            make_corpus("demo_data")
    root = Path(list_path).parent
    noise_dir = noise_dir or (str(root) if (root / "noise").is_dir() else None)
    rir_dir = rir_dir or (str(root / "rirs") if (root / "rirs").is_dir() else None)
    return run_bench(str(list_path), noise_dir, rir_dir, store_dir or str(root / "store"), **options)


def run_bench(
    list_path: str,
    noise_dir: str | None,
    rir_dir: str | None,
    store_dir: str,
    workers: int = 1,
    batch: int = 64,
    frames: int = 200,
    seconds: float = 5.0,
    device: str = "cpu",
    rounds: int = 3,
) -> list[BenchResult]:
    """Time every configuration for `seconds` in all, split over `rounds` interleaved rounds; returns the
    medians with speedups over the matching baseline's median."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    utts = read_utterances(list_path)
    paths = [u.path for u in utts]
    n = crop_samples(frames)
    packed = _ensure_store(utts, store_dir, workers)
    augment = noise_dir is not None and rir_dir is not None
    bank = NoiseBank.from_dirs(noise_dir, rir_dir) if augment else None
    spec = AugmentSpec.from_config(AugmentConfig(enabled=True)) if augment else None
    _warm_cache(paths + ([str(p) for p in Path(noise_dir).rglob("*.wav")] if augment else []))
    labels = [0] * len(paths)

    def ours(source, aug=None, on_device=False):
        dtype = TrainCrops.crop_dtype(source, aug is not None and not on_device, False)
        ring = BatchRing(BatchRing.slots_for(workers, 4, 1), batch, n, dtype)
        crops = TrainCrops(source, labels, n, ring, aug, augment_on_device=on_device)
        sampler = RingBatches(_EndlessBatches(len(paths), batch), ring.slots)
        return DataLoader(crops, batch_sampler=sampler, num_workers=workers, collate_fn=collate_crops,
                          prefetch_factor=4 if workers else None), crops.batch_wave

    def baseline(noise: str | None, rirs: str | None):
        crops = VoxcelebTrainerCrops(paths, n, Path(noise) if noise else None, Path(rirs) if rirs else None)
        loader = DataLoader(crops, batch_size=batch, num_workers=workers, collate_fn=_collate_baseline,
                            prefetch_factor=4 if workers else None)
        return loader, lambda b: b["wave"]

    files, store = FileSource(paths, 16000), StoreSource(packed)
    runs = [
        ("baseline (voxceleb_trainer), no augmentation", baseline(None, None), "noaug"),
        ("files, partial reads, no augmentation", ours(files), "noaug"),
        ("store, slices, no augmentation", ours(store), "noaug"),
    ]
    if augment:
        runs += [
            ("baseline (voxceleb_trainer), augmentation", baseline(noise_dir, rir_dir), "aug"),
            ("files, CPU augmentation", ours(files, (spec, bank)), "aug"),
            ("store, CPU augmentation", ours(store, (spec, bank)), "aug"),
            ("store, device augmentation: CPU side", ours(store, (spec, bank), True), "aug"),
        ]
    timed: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for r in range(rounds):  # a fresh iterator (workers) per round; the first batch of each is not timed
        for name, (loader, take), _ in runs:
            timed[name].append(_time_loader(loader, seconds / rounds, take))
            log.info("round %d/%d  %-48s %9.0f samples/s", r + 1, rounds, name, timed[name][-1])
    results, base = [], {}
    for name, _, group in runs:  # each group's baseline comes first
        sps = float(np.median(timed[name]))
        ref_name, ref = base.setdefault(group, (name, sps))
        results.append(BenchResult(name, sps, sps / max(workers, 1), ref_name, sps / ref, timed[name]))
    if augment:
        results.append(_bench_device_augment(bank, spec, n, batch, device, seconds, base["aug"]))
    return results


def _bench_device_augment(bank: NoiseBank, spec: AugmentSpec, n: int, batch: int, device: str, seconds: float,
                          base: tuple[str, float]) -> BenchResult:
    """The device half of device augmentation: batched noise + FFT reverb on `device`."""
    dev = torch.device(device)
    device_bank = DeviceBank(bank, dev)
    rng = np.random.default_rng(0)
    wave = torch.randn(batch, n, device=dev) * 0.1
    plans = stack_plans([draw_plan(rng, spec, bank, n) for _ in range(batch)])  # read on the host by design
    augment_batch(wave, plans, device_bank)  # warm-up (cuFFT plans, allocator)
    _sync(dev)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        augment_batch(wave, plans, device_bank)
        count += batch
    _sync(dev)
    sps = count / (time.perf_counter() - start)
    name = f"batched augmentation on {dev} (batch {batch})"
    log.info("%-48s %9.0f samples/s  x%.1f", name, sps, sps / base[1])
    return BenchResult(name, sps, sps, base[0], sps / base[1], [sps])


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _ensure_store(utts: list[Utterance], store_dir: str, workers: int) -> PackedStore:
    if not is_store(store_dir):
        log.info("packing %d utterances into %s", len(utts), store_dir)
        pack_store(utts, store_dir, workers=max(workers, 1))
    return PackedStore(store_dir)


def format_results(results: list[BenchResult], as_json: bool) -> str:
    if as_json:
        return json.dumps([r.__dict__ for r in results], indent=2)
    lines = [f"{'configuration':<50} {'samples/s':>10} {'per worker':>11} {'speedup':>8}"]
    for r in results:
        lines.append(f"{r.name:<50} {r.samples_per_s:>10.0f} {r.per_worker:>11.0f} {r.speedup:>7.1f}x")
    return "\n".join(lines)
