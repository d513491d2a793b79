"""Utterance embeddings from a trained embedding network.

Utterances are embedded at full length, one per forward pass, so no padding leaks into the pooling
statistics; a DataLoader reads the next files while the model runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from voxfast.data.speaker import FullUtterances
from voxfast.progress import track


def extract_embeddings(
    model: nn.Module,
    paths: Sequence[str],
    device: torch.device,
    sample_rate: int = 16000,
    max_samples: int = 0,
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings, row i for paths[i]."""
    loader = DataLoader(FullUtterances(paths, sample_rate, max_samples), batch_size=None, num_workers=num_workers)
    rows = []
    model.eval()
    iterator = track(loader, len(paths), "embeddings") if progress else loader
    with torch.inference_mode():
        for wave in iterator:
            emb = model(wave.to(device, non_blocking=True)[None])  # (1, T) -> (1, D)
            rows.append(F.normalize(emb.float(), dim=1).cpu())
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(rows).numpy()
