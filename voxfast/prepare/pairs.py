"""Seeded trial pairs over held-out files: uniform over the allowed pairs, no duplicates, no file with itself.

Files are numbered in path order and carry a speaker and a session number (a file outside any session folder
has a session of its own). A target pair joins two files of one speaker from different sessions (the
same-session guard: two clips of one recording share channel and room, which makes a trial easier than the
task); a non-target pair joins files of two speakers. A pair is returned as (i, j) with i < j.

Few allowed pairs (or a request for most of them) are enumerated and chosen from; otherwise pairs are drawn
and rejected in vectorised batches: a speaker with probability proportional to its files squared, then two of
its files, so every allowed pair is equally likely; the pair space is never materialised.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["PairPool", "draw_pairs"]

_ENUMERATE_BELOW = 2_000_000  # candidate pairs up to which enumerating is cheaper than rejection sampling
_BATCH = 65_536


@dataclass(frozen=True)
class PairPool:
    """Held-out files, in path order, with their speaker and session numbers (contiguous runs per speaker)."""

    speaker: np.ndarray  # int64 per file, non-decreasing
    session: np.ndarray  # int64 per file, unique across speakers

    def __post_init__(self) -> None:
        if np.any(np.diff(self.speaker) < 0):
            raise ValueError("files must be grouped by speaker (speaker numbers non-decreasing)")

    @property
    def speaker_sizes(self) -> np.ndarray:
        return np.bincount(self.speaker)

    def same_speaker_pairs(self) -> int:
        return _pairs(self.speaker_sizes)

    def same_session_pairs(self) -> int:
        return _pairs(np.unique(self.session, return_counts=True)[1])

    def available(self, target: bool) -> int:
        """Allowed pairs: same speaker, other session (target) or two speakers (non-target)."""
        if target:
            return self.same_speaker_pairs() - self.same_session_pairs()
        return _pairs(np.array([len(self.speaker)])) - self.same_speaker_pairs()


def _pairs(sizes: np.ndarray) -> int:
    sizes = sizes.astype(np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


def draw_pairs(pool: PairPool, n: int, target: bool, rng: np.random.Generator) -> np.ndarray:
    """`n` distinct allowed pairs as an (n, 2) int64 array in random order; all of them if fewer exist."""
    available = pool.available(target)
    n = min(n, available)
    if n <= 0:
        return np.empty((0, 2), dtype=np.int64)
    candidates = pool.same_speaker_pairs() if target else _pairs(np.array([len(pool.speaker)]))
    if candidates <= _ENUMERATE_BELOW or n * 2 >= available:
        every = _enumerate(pool, target)
        return every[rng.choice(len(every), size=n, replace=False)]
    return _rejection(pool, n, target, rng)


def _enumerate(pool: PairPool, target: bool) -> np.ndarray:
    """Every allowed pair, (i, j) with i < j, in index order."""
    if not target:
        i, j = np.triu_indices(len(pool.speaker), k=1)
        keep = pool.speaker[i] != pool.speaker[j]
        return np.stack([i[keep], j[keep]], axis=1).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(pool.speaker_sizes)])
    chunks = []
    for start, stop in itertools.pairwise(starts):
        i, j = np.triu_indices(int(stop - start), k=1)
        keep = pool.session[start + i] != pool.session[start + j]
        chunks.append(np.stack([start + i[keep], start + j[keep]], axis=1))
    return np.concatenate(chunks).astype(np.int64) if chunks else np.empty((0, 2), dtype=np.int64)


def _candidates(pool: PairPool, target: bool, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` uniform ordered file pairs from the space the pairs live in (one speaker, or all files)."""
    if not target:
        return rng.integers(len(pool.speaker), size=(2, size))
    sizes = pool.speaker_sizes.astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(pool.speaker_sizes)[:-1]])
    spk = rng.choice(len(sizes), size=size, p=sizes**2 / (sizes**2).sum())
    offsets = (rng.random((2, size)) * sizes[spk]).astype(np.int64)
    return starts[spk] + offsets[0], starts[spk] + offsets[1]


def _rejection(pool: PairPool, n: int, target: bool, rng: np.random.Generator) -> np.ndarray:
    """Draw batches, keep the allowed pairs not seen before, in draw order, until there are `n`.

    A pair (i, j) is the key i * files + j, so finding the first occurrences is a 1-D unique."""
    files = len(pool.speaker)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < n:
        a, b = _candidates(pool, target, rng, min(_BATCH, 4 * n + 1024))
        ok = (a != b) & (pool.session[a] != pool.session[b])
        ok &= (pool.speaker[a] == pool.speaker[b]) if target else (pool.speaker[a] != pool.speaker[b])
        merged = np.concatenate([keys, (np.minimum(a, b) * files + np.maximum(a, b))[ok]])
        keys = merged[np.sort(np.unique(merged, return_index=True)[1])]
    keys = keys[:n]
    return np.stack([keys // files, keys % files], axis=1)
