"""Speaker datasets: random training crops and full evaluation utterances.

Crop randomness is a function of (seed, epoch, position in the epoch) carried by the sampler, not
of worker state, so the crops of a run are the same whatever the number of workers, and differ
between epochs and between draws of the same utterance. The same per-item generator draws the
crop, the speed and the augmentation plan, so CPU and device augmentation see identical draws.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from voxfast.audio.augment import (
    REVERB,
    Augmentation,
    AugmentSpec,
    NoiseBank,
    Plan,
    augment_numpy,
    draw_plan,
    reverberate_rows,
    stack_plans,
)
from voxfast.audio.io import PCM16_SCALE, read_audio, read_random_crop, resample, to_float32
from voxfast.audio.store import PackedStore
from voxfast.data.sampler import SpeakerBatchSampler as SpeakerBatchSampler  # re-exported: its old home
from voxfast.data.utterances import PathColumn
from voxfast.errors import AudioLoadError, VoxfastError

log = logging.getLogger(__name__)

SPEEDS = (1.0, 0.9, 1.1)  # speed index k relabels speaker s as s + k * n_speakers


_MASK64 = (1 << 64) - 1
_BIT_GENERATOR = np.random.PCG64(0)
_GENERATOR = np.random.Generator(_BIT_GENERATOR)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_rng(seed: int) -> np.random.Generator:
    """A generator in a state derived only from `seed`, for one item's draws.

    `np.random.default_rng(seed)` hashes the seed through a SeedSequence and builds a new bit generator on every
    call, a sizeable share of a crop's work; this sets the state of one reused PCG64 from two splitmix64 hashes
    of the seed (a few integer multiplies and shifts). Different seeds start at unrelated points of PCG64's
    2**128 period. The returned object is shared: use it for one item, then ask again.
    """
    state = (_splitmix64(seed) << 64) | _splitmix64(seed ^ 0x5851F42D4C957F2D)
    _BIT_GENERATOR.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": 0xDA3E39CB94B95BDB},
                            "has_uint32": 0, "uinteger": 0}
    return _GENERATOR


class CropSource(Protocol):
    """Where crops come from: audio files (partial reads) or a packed store (slices)."""

    def __len__(self) -> int: ...

    def random_crop(self, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """float32 crop."""
        ...

    def random_crop_int16(self, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """The same draw as int16 samples (a view where possible)."""
        ...

    def random_crop_into(self, index: int, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        """The same draw as float32 written into `out` (CPU augmentation's ring row); returns `out`."""
        ...


class FileSource:
    """Crops read straight from audio files: partial reads (pread or soundfile), but MP4 audio (``.m4a``) cannot
    seek cheaply, so each of its crops decodes the whole file (:func:`read_random_crop` warns once: pack it)."""

    def __init__(self, paths: Sequence[str], sample_rate: int, resample_mismatch: bool = False) -> None:
        # A PathColumn (a list's paths as one byte buffer) stays as it is: workers read it without writing to it,
        # where a list of str would be copied into each worker page by page as reference counts change.
        self.paths = paths if isinstance(paths, PathColumn) else list(paths)
        self.sample_rate = sample_rate
        self.resample_mismatch = resample_mismatch

    def __len__(self) -> int:
        return len(self.paths)

    def random_crop(self, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        return read_random_crop(self.paths[index], num_samples, rng, self.sample_rate, self.resample_mismatch)

    def random_crop_int16(self, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        return read_random_crop(self.paths[index], num_samples, rng, self.sample_rate, self.resample_mismatch,
                                dtype="int16")

    def random_crop_into(self, index: int, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        """:meth:`random_crop` of len(out) samples written into `out` (float32), 16-bit PCM converted in one pass."""
        crop = read_random_crop(self.paths[index], len(out), rng, self.sample_rate, self.resample_mismatch,
                                dtype="native")
        return to_float32(crop, out)


class StoreSource:
    """Crops sliced from a packed store: no decoding, and no conversion at all for int16 transport.

    `indices` restricts it to those store positions (a training list naming part of the store): item i of the
    source is store utterance indices[i]. Each utterance's samples are checked against their CRC32 the first time
    this process reads them, so a damaged store is an unreadable file, counted and skipped, not silent noise.
    """

    def __init__(self, store: PackedStore, indices: np.ndarray | None = None) -> None:
        self.store = store
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        # int32 codes into store.speaker_names, item by item (a memmap slice or a copy: no per-item objects)
        self.speaker_codes = store.speaker_codes if self.indices is None else store.speaker_codes[self.indices]

    def __len__(self) -> int:
        return len(self.store) if self.indices is None else len(self.indices)

    def _position(self, index: int) -> int:
        position = index if self.indices is None else int(self.indices[index])
        self.store.check(position)
        return position

    def random_crop(self, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        return self.store.random_crop(self._position(index), num_samples, rng)

    def random_crop_into(self, index: int, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        """:meth:`random_crop` of len(out) samples written into `out` (float32): one pass, no temporary array."""
        return to_float32(self.store.random_crop_raw(self._position(index), len(out), rng), out)

    def random_crop_int16(self, index: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        if self.store.dtype != "int16":
            raise ValueError(f"store {self.store.path} holds {self.store.dtype}, not int16")  # set up by the caller
        return self.store.random_crop_raw(self._position(index), num_samples, rng)


class BatchRing:
    """Batch slots in shared memory that loader workers fill in place.

    A DataLoader normally pickles every batch into a fresh shared-memory segment: two copies and page
    faults for each 8 MB batch, which caps one worker's crop rate however cheap the crop is.
    Workers instead write crops straight into a slot of this pre-faulted ring and send back only the slot
    number. Batch j uses slot j % slots; the DataLoader has at most workers * prefetch batches in flight
    beyond the one it returned, so `slots` = workers * prefetch + (batches the consumer keeps, e.g. the
    accumulated micro-batches) + 2 guarantees a slot is rewritten only after its batch was used.
    """

    def __init__(self, slots: int, batch: int, num_samples: int, dtype: torch.dtype) -> None:
        _check_ring_room(slots * batch * num_samples * dtype.itemsize, slots, batch, num_samples)
        self.buffer = torch.zeros((slots, batch, num_samples), dtype=dtype).share_memory_()
        self._view: np.ndarray | None = None

    @staticmethod
    def slots_for(workers: int, prefetch: int, kept: int) -> int:
        return max(workers, 1) * prefetch + kept + 2

    @property
    def slots(self) -> int:
        return self.buffer.shape[0]

    def write(self, slot: int, row: int, crop: np.ndarray) -> None:
        self.row(slot, row)[:] = crop

    def row(self, slot: int, row: int) -> np.ndarray:
        """The shared-memory row itself, for writing a crop in place (CPU augmentation writes its output here)."""
        return self.slot(slot)[row]

    def slot(self, slot: int) -> np.ndarray:
        """The (batch, samples) shared-memory array of one slot, for in-place work on several rows."""
        if self._view is None:
            self._view = self.buffer.numpy()
        return self._view[slot]

    def __getstate__(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "_view": None}  # the tensor travels as a shared-memory handle


def _check_ring_room(nbytes: int, slots: int, batch: int, num_samples: int) -> None:
    """Refuse a ring that cannot be allocated, before allocating it: a huge data.num_workers or
    data.prefetch_factor would otherwise die in the middle of zero-filling shared memory (SIGBUS) or swap."""
    free = min(_free_bytes("/dev/shm"), _available_memory())
    if nbytes > 0.8 * free:
        raise VoxfastError(
            f"the batch ring needs {nbytes / 2**30:.2f} GiB of shared memory ({slots} slots = data.num_workers x "
            f"data.prefetch_factor + the micro-batches a step keeps + 2, each {batch} crops of {num_samples} "
            f"samples) but {free / 2**30:.2f} GiB is free: lower data.num_workers, data.prefetch_factor or "
            "train.micro_batch")


def _free_bytes(folder: str) -> float:
    """Space left in `folder` (where torch puts shared memory on Linux); unlimited where there is no such folder."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return math.inf
    return st.f_bavail * st.f_frsize


def _available_memory() -> float:
    """MemAvailable of /proc/meminfo in bytes; unlimited where the kernel does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


class CropKey(NamedTuple):
    """A training item's key: which utterance, the seed of its draws, and where its crop goes in the ring.

    Named because it crosses from the sampler into loader workers and each part is used on its own there.
    """

    index: int  # utterance in the crop source
    seed: int  # crop seed (:func:`item_rng`): the crop, the speed and the augmentation plan
    slot: int  # BatchRing slot of the item's batch
    row: int  # row of the item in that slot


class CropItem(NamedTuple):
    """What a worker returns for one crop: the crop itself is already in the ring."""

    slot: int  # the batch's ring slot
    label: int  # class label, -1 when the read failed (the collate drops and counts it)
    plan: Plan | None  # augmentation plan for device placement, else None


class RingBatches(Sampler):
    """Tags each item of a batch sampler with its ring slot and row: a :class:`CropKey` per item."""

    def __init__(self, batches: Sampler, slots: int) -> None:
        self.batches = batches
        self.slots = slots
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Batches of `epoch` after its first `skip` (a run resumed mid-epoch continues with the same ones)."""
        self.batches.set_epoch(epoch)
        self.skip = skip

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)

    def __iter__(self) -> Iterator[list[CropKey]]:
        # A sampler that can start at a batch (SpeakerBatchSampler.iter_from) skips without making the batches.
        iter_from = getattr(self.batches, "iter_from", None)
        batches = iter_from(self.skip) if iter_from is not None else itertools.islice(self.batches, self.skip, None)
        for j, batch in enumerate(batches):
            yield [CropKey(index, seed, j % self.slots, row) for row, (index, seed) in enumerate(batch)]


class TrainCrops(Dataset):
    """Random fixed-length crops with speaker labels, optional speed perturbation and CPU augmentation.

    Items are keyed by a :class:`CropKey` from :class:`RingBatches` (a plain (index, seed, slot, row) tuple
    works too); the crop is written into the :class:`BatchRing` and the item is a :class:`CropItem`: its label
    (and, for device augmentation, its plan). `augment` may be an :class:`Augmentation` or a (spec, bank) pair.
    Crops travel as int16 when nothing on the CPU needs floats (no CPU augmentation, no speed
    perturbation): half the bytes, converted once on the model's device. A failed read yields label -1
    (dropped and counted by :func:`collate_crops`); `max_consecutive_failures` failures in a row in one
    worker mean the data itself is broken, and raise.
    """

    def __init__(
        self,
        source: CropSource,
        labels: Sequence[int],
        num_samples: int,
        ring: BatchRing,
        augment: Augmentation | tuple[AugmentSpec, NoiseBank] | None = None,
        augment_on_device: bool = False,
        speed_perturb: bool = False,
        max_consecutive_failures: int = 20,
    ) -> None:
        self.source = source
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_speakers = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.num_samples = num_samples
        self.ring = ring
        self.augment = Augmentation(*augment) if augment is not None else None
        self.augment_on_device = augment_on_device
        self.speed_perturb = speed_perturb
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive = 0
        self.int16 = ring.buffer.dtype == torch.int16
        if self.int16 and (speed_perturb or (augment is not None and not augment_on_device)):
            raise ValueError("int16 transport needs floats nowhere on the CPU")  # crop_dtype() decides this

    @staticmethod
    def crop_dtype(source: CropSource, augment_on_cpu: bool, speed_perturb: bool) -> torch.dtype:
        """int16 when the crop needs no float maths on the CPU and the source holds 16-bit audio."""
        floats_on_cpu = augment_on_cpu or speed_perturb
        int16_source = not isinstance(source, StoreSource) or source.store.dtype == "int16"
        return torch.int16 if int16_source and not floats_on_cpu else torch.float32

    @property
    def n_classes(self) -> int:
        return self.n_speakers * (len(SPEEDS) if self.speed_perturb else 1)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int, int]) -> CropItem:
        key = CropKey(*key)
        item, reverb = self._item(key)
        if reverb is not None:
            reverberate_rows(self.ring.slot(key.slot), [key.row], [reverb], self.augment.bank)
        return item

    def __getitems__(self, keys: list[tuple[int, int, int, int]]) -> list[CropItem]:
        """A whole batch (the DataLoader calls this when it exists): reverb crops are transformed together.

        The FFTs of a batch's reverb crops (one slot) are batched so pocketfft runs them side by side in SIMD
        lanes (:func:`~voxfast.audio.augment.reverberate_rows`).
        """
        keys = [CropKey(*key) for key in keys]
        items, rows, rirs = [], [], []
        for key in keys:
            item, reverb = self._item(key)
            items.append(item)
            if reverb is not None:
                rows.append(key.row)
                rirs.append(reverb)
        if rows:
            reverberate_rows(self.ring.slot(keys[0].slot), rows, rirs, self.augment.bank)
        return items

    def _item(self, key: CropKey) -> tuple[CropItem, int | None]:
        """Crop, label and plan of one item; CPU augmentation is applied except reverb, whose RIR is returned
        (the row then holds the clean crop) so the caller can transform a batch's reverb rows at once."""
        index, draw_seed, slot, row = key
        rng = item_rng(draw_seed)
        augment_here = self.augment is not None and not self.augment_on_device
        out = self.ring.row(slot, row) if augment_here else None  # CPU augmentation works in the ring row
        try:
            wave, label = self._crop(index, rng, out)
        except AudioLoadError as exc:
            self._failed(exc)
            return CropItem(slot, -1, None), None
        self._consecutive = 0
        if self.augment is None:
            self.ring.write(slot, row, wave)
            return CropItem(slot, label, None), None
        spec, bank = self.augment
        plan = draw_plan(rng, spec, bank, self.num_samples)
        if out is None:
            self.ring.write(slot, row, wave)
            return CropItem(slot, label, plan), None
        if plan.kind == REVERB:
            if wave is not out:
                out[:] = wave
            return CropItem(slot, label, None), plan.rir
        augment_numpy(wave, plan, bank, out=out)
        return CropItem(slot, label, None), None

    def _crop(self, index: int, rng: np.random.Generator, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The crop and its label; a store's float crop is converted straight into `out` when given."""
        label = int(self.labels[index])
        if out is not None and not self.speed_perturb:
            return self.source.random_crop_into(index, rng, out), label
        if self.int16:
            return self.source.random_crop_int16(index, self.num_samples, rng), label
        if not self.speed_perturb:
            return self.source.random_crop(index, self.num_samples, rng), label
        k = int(rng.integers(len(SPEEDS)))
        if k == 0:
            return self.source.random_crop(index, self.num_samples, rng), label
        # Speed s plays s times faster: read s * n samples, resample them to n (pitch and tempo change).
        need = int(np.ceil(self.num_samples * SPEEDS[k])) + 1
        raw = self.source.random_crop(index, need, rng)
        fast = resample(raw, round(SPEEDS[k] * 10), 10)
        return fast[: self.num_samples], label + k * self.n_speakers

    def _failed(self, exc: AudioLoadError) -> None:
        self._consecutive += 1
        log.warning("skipping unreadable file (%d in a row): %s", self._consecutive, exc)
        if self._consecutive >= self.max_consecutive_failures:
            raise VoxfastError(
                f"{self._consecutive} audio files in a row failed to load, last: {exc} "
                "(check the list's paths and root; raise data.max_consecutive_failures to tolerate more)"
            ) from exc

    def batch_wave(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's crops: a view of its ring slot, or its `rows` (failed reads removed, or a piece of a
        split batch). int16 or float32."""
        crops = self.ring.buffer[batch["slot"], : batch["size"]]
        return crops if len(batch["rows"]) == batch["size"] else crops[batch["rows"]]


def to_float_wave(wave: torch.Tensor) -> torch.Tensor:
    """int16 transport back to float32 in [-1, 1); run it on the model's device, after the copy."""
    return wave.float() * (1.0 / PCM16_SCALE) if wave.dtype == torch.int16 else wave


def collate_crops(items: list[CropItem]) -> dict[str, Any]:
    """Labels (numpy) and ring slot of one batch; skipped items are dropped and counted.

    Device-placement plans are stacked into `batch["aug"]` tensors for the batched augmentation.
    """
    labels = np.array([item.label for item in items], dtype=np.int64)
    good = np.flatnonzero(labels >= 0)
    # numpy, not tensors: small arrays cross from a worker inline, each tensor costs a shared-memory segment.
    batch: dict[str, Any] = {
        "slot": items[0].slot, "size": len(items), "failed": len(items) - len(good), "rows": good,
        "label": labels[good],
    }
    plans = [items[i].plan for i in good]
    if plans and plans[0] is not None:
        batch["aug"] = stack_plans(plans)
    return batch


class FullUtterances(Dataset):
    """Whole utterances (optionally capped to `max_samples`) for embedding extraction."""

    def __init__(self, paths: Sequence[str], sample_rate: int = 16000, max_samples: int = 0) -> None:
        self.paths = list(paths)
        self.sample_rate = sample_rate
        self.max_samples = max_samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        frames = self.max_samples if self.max_samples > 0 else -1
        return torch.from_numpy(read_audio(self.paths[index], frames=frames, sample_rate=self.sample_rate))
