"""The untrained floor: cosine scoring of per-utterance MFCC statistics, with no learning at all.

A speaker model that scores worse than this has learnt nothing a summary of the spectrum does not already
give (on read speech recorded per speaker, channel and pitch alone separate many speakers). Every recipe
comparison reports it from the same trials, so a failing recipe cannot pass for a merely weak one.

The vector of an utterance is the mean and the standard deviation over frames of its MFCCs (Kaldi-style: 25 ms
Hamming frames every 10 ms, 40 mel bands, 20 cepstra). Each dimension is then standardised over the trial list's
utterances (dimensions otherwise weigh by their raw scale, c0 dwarfing the rest) before cosine scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchaudio

from voxfast.audio.io import PCM16_SCALE, read_audio
from voxfast.data.manifest import Trial
from voxfast.eval.scoring import cosine_scores, trial_indices

N_MFCC, N_MELS = 20, 40


def mfcc_statistics(wave: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(2 * N_MFCC,) float64: the mean and standard deviation over frames of the utterance's MFCCs."""
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).unsqueeze(0)
    mfcc = torchaudio.compliance.kaldi.mfcc(x * PCM16_SCALE, sample_frequency=float(sample_rate), num_ceps=N_MFCC,
                                            num_mel_bins=N_MELS, dither=0.0).double()  # (frames, N_MFCC)
    return torch.cat([mfcc.mean(0), mfcc.std(0, unbiased=False)]).numpy()


def statistics_table(paths: Sequence[str], sample_rate: int = 16000, threads: int = 4) -> np.ndarray:
    """(N, 2 * N_MFCC) float64 MFCC statistics of every file, standardised per dimension over the N files."""
    def one(path: str) -> np.ndarray:
        return mfcc_statistics(read_audio(path, sample_rate=sample_rate), sample_rate)

    with ThreadPoolExecutor(max_workers=threads) as pool:  # torch and libsndfile release the GIL
        table = np.stack(list(pool.map(one, paths)))
    std = table.std(axis=0)
    return (table - table.mean(axis=0)) / np.where(std > 0, std, 1.0)


def floor_scores(trials: Sequence[Trial], root: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Cosine scores of the trials on standardised MFCC statistics (float32, one per trial)."""
    names = sorted({u for t in trials for u in (t.enroll, t.test)})
    table = statistics_table([str(Path(root) / n) for n in names], sample_rate)
    table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    return cosine_scores(table.astype(np.float32), *trial_indices(trials, {n: i for i, n in enumerate(names)}))
