"""Embedding tables: one .npz of utterance ids and L2-normalised rows, written by `voxfast extract`.

Kept apart from the extraction code so `voxfast score --embeddings` reads a table with numpy alone: importing torch
for it would cost seconds and ~0.8 GB before the first trial is scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxfast.errors import VoxfastError

__all__ = ["load_embeddings", "save_embeddings"]


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
