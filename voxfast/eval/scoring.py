"""Trial scoring over an embedding table, vectorised (no Python loop per trial)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxfast.data.manifest import Trial
from voxfast.errors import VoxfastError


def trial_indices(trials: Sequence[Trial], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of each trial's enroll and test utterance; missing ids fail with a count and examples."""
    missing = sorted({u for t in trials for u in (t.enroll, t.test) if u not in index})
    if missing:
        raise VoxfastError(
            f"{len(missing)} utterance(s) in the trial list have no embedding, first {min(10, len(missing))}: "
            f"{', '.join(missing[:10])} (extract embeddings for the same list, or check eval.root)"
        )
    enroll = np.fromiter((index[t.enroll] for t in trials), dtype=np.int64, count=len(trials))
    test = np.fromiter((index[t.test] for t in trials), dtype=np.int64, count=len(trials))
    return enroll, test


def cosine_scores(emb: np.ndarray, enroll: np.ndarray, test: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Cosine similarity of row pairs of L2-normalised `emb`, in chunks to bound memory."""
    out = np.empty(len(enroll), dtype=np.float32)
    for start in range(0, len(enroll), chunk):
        sl = slice(start, start + chunk)
        out[sl] = np.einsum("ij,ij->i", emb[enroll[sl]], emb[test[sl]])
    return out
