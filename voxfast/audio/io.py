"""float32 audio reads with soundfile: a whole file or only the frame range a crop needs.

Reading only the crop (soundfile seeks, then decodes `frames` samples) is what makes random 2 s crops
of long files cheap. Every read is validated: a wrong sample rate, an empty file or non-finite
samples raise :class:`AudioLoadError` naming the file, so the loader can skip and count it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from voxfast.errors import AudioLoadError

log = logging.getLogger(__name__)
_warned_multichannel = False


def audio_frames(path: str | Path, sample_rate: int | None = None) -> int:
    """Number of samples in a file (header only, no decode)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioLoadError(f"cannot read audio header of {path}: {exc}") from exc
    if sample_rate is not None and info.samplerate != sample_rate:
        raise AudioLoadError(
            f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
            "(resample the file, or set data.sample_rate)"
        )
    return int(info.frames)


def read_audio(path: str | Path, start: int = 0, frames: int = -1, sample_rate: int | None = None) -> np.ndarray:
    """Read `frames` samples from `start` (all with -1) as float32 in [-1, 1], mono.

    Multi-channel files are averaged to mono with one warning per process.
    """
    try:
        data, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioLoadError(f"cannot read audio {path}: {exc}") from exc
    return _validated(path, data, rate, sample_rate)


def read_random_crop(
    path: str | Path, num_samples: int, rng: np.random.Generator, sample_rate: int | None = None
) -> np.ndarray:
    """A random `num_samples` crop, reading only those samples; shorter files are wrap-padded.

    One open serves both the length query and the read, so a crop costs one seek and one partial decode.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            total = f.frames
            if total > num_samples:
                f.seek(int(rng.integers(0, total - num_samples + 1)))
            data = f.read(min(total, num_samples), dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioLoadError(f"cannot read audio {path}: {exc}") from exc
    wave = _validated(path, data, rate, sample_rate)
    if len(wave) < num_samples:
        wave = np.pad(wave, (0, num_samples - len(wave)), mode="wrap")
    return wave


def _validated(path: str | Path, data: np.ndarray, rate: int, sample_rate: int | None) -> np.ndarray:
    """Mono float32 samples, or AudioLoadError naming the file and the problem."""
    if sample_rate is not None and rate != sample_rate:
        raise AudioLoadError(
            f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (resample the file, or set data.sample_rate)"
        )
    if data.shape[0] == 0:
        raise AudioLoadError(f"{path}: no samples (empty or truncated file)")
    if data.shape[1] > 1:
        _warn_multichannel(path, data.shape[1])
        data = data.mean(axis=1, keepdims=True)
    wave = data[:, 0]
    if not np.isfinite(wave).all():
        raise AudioLoadError(f"{path}: contains NaN or infinite samples (re-encode or remove the file)")
    return np.ascontiguousarray(wave)


def _warn_multichannel(path: str | Path, channels: int) -> None:
    global _warned_multichannel
    if not _warned_multichannel:
        log.warning("%s has %d channels; multi-channel audio is averaged to mono (warned once)", path, channels)
        _warned_multichannel = True
