"""The untrained floor: MFCC statistics against torchaudio's Kaldi MFCC, standardisation and cosine in float64."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from voxfast.data.manifest import Trial
from voxfast.eval.floor import N_MFCC, floor_scores, mfcc_statistics, statistics_table


def _write(tmp_path, n=4, seed=0):
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        t = np.arange(16000 + 1600 * i) / 16000
        wave = 0.1 * np.sin(2 * np.pi * (150 + 60 * i) * t) + 0.01 * rng.normal(size=t.size)
        sf.write(tmp_path / f"u{i}.wav", wave, 16000, subtype="PCM_16")
        names.append(f"u{i}.wav")
    return names


def test_statistics_are_the_mean_and_std_of_kaldi_mfccs(tmp_path):
    wave = sf.read(tmp_path / _write(tmp_path, 1)[0], dtype="float32")[0]
    mfcc = torchaudio.compliance.kaldi.mfcc(torch.from_numpy(wave)[None] * 32768.0, num_ceps=N_MFCC, num_mel_bins=40,
                                            dither=0.0).double().numpy()
    stats = mfcc_statistics(wave)
    np.testing.assert_allclose(stats, np.concatenate([mfcc.mean(0), mfcc.std(0)]), rtol=1e-10, atol=1e-10)


def test_floor_scores_are_cosines_of_standardised_statistics(tmp_path):
    names = _write(tmp_path)
    raw = np.stack([mfcc_statistics(sf.read(tmp_path / n, dtype="float32")[0]) for n in names])
    table = statistics_table([str(tmp_path / n) for n in names])
    np.testing.assert_allclose(table, (raw - raw.mean(0)) / raw.std(0), rtol=1e-9, atol=1e-9)
    trials = [Trial(names[0], names[1], 1), Trial(names[2], names[3], 0), Trial(names[1], names[3], None)]
    scores = floor_scores(trials, tmp_path)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    expected = [unit[0] @ unit[1], unit[2] @ unit[3], unit[1] @ unit[3]]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
