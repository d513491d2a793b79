"""Speaker datasets: random training crops and full evaluation utterances.

Crop randomness is a function of (seed, epoch, position in the epoch) carried by the sampler, not
of worker state, so the crops of a run are the same whatever the number of workers, and differ
between epochs and between draws of the same utterance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from voxfast.audio.io import read_audio, read_random_crop
from voxfast.data.manifest import Utterance
from voxfast.errors import AudioLoadError, VoxfastError

log = logging.getLogger(__name__)


class TrainCrops(Dataset):
    """Random fixed-length crops with speaker labels; unreadable files are skipped and counted.

    Items are keyed by (index, draw_seed) pairs from :class:`EpochSampler`. A failed read returns None
    (dropped by :func:`collate_crops`); `max_consecutive_failures` failures in a row in one worker mean
    the data itself is broken, and raise.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        spk_index: dict[str, int],
        num_samples: int,
        sample_rate: int = 16000,
        max_consecutive_failures: int = 20,
    ) -> None:
        self.paths = [u.path for u in utts]
        self.labels = np.array([spk_index[u.spk] for u in utts], dtype=np.int64)
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, int] | None:
        index, draw_seed = key
        try:
            rng = np.random.default_rng(draw_seed)
            wave = read_random_crop(self.paths[index], self.num_samples, rng, self.sample_rate)
        except AudioLoadError as exc:
            self._consecutive += 1
            log.warning("skipping unreadable file (%d in a row): %s", self._consecutive, exc)
            if self._consecutive >= self.max_consecutive_failures:
                raise VoxfastError(
                    f"{self._consecutive} audio files in a row failed to load, last: {exc} "
                    "(check the list's paths and root; raise data.max_consecutive_failures to tolerate more)"
                ) from exc
            return None
        self._consecutive = 0
        return wave, int(self.labels[index])


def collate_crops(items: list[tuple[np.ndarray, int] | None]) -> dict[str, Any]:
    """Stack crops into a (B, samples) float32 batch; skipped items are dropped and counted."""
    good = [it for it in items if it is not None]
    if not good:
        return {"wave": torch.empty(0), "label": torch.empty(0, dtype=torch.long), "failed": len(items)}
    wave = torch.from_numpy(np.stack([w for w, _ in good]))
    label = torch.tensor([lab for _, lab in good], dtype=torch.long)
    return {"wave": wave, "label": label, "failed": len(items) - len(good)}


class EpochSampler(Sampler):
    """A fresh permutation every epoch, each position paired with its own crop seed."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)
        draw_seeds = rng.integers(0, 2**62, size=self.n)
        return iter(zip(order.tolist(), draw_seeds.tolist(), strict=True))


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
