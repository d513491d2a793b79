"""float32 audio reads with soundfile: a whole file or only the frame range a crop needs.

Reading only the crop (soundfile seeks, then decodes `frames` samples) is what makes random 2 s crops
of long files cheap. Every read is validated: a wrong sample rate, an empty file or non-finite
samples raise :class:`AudioLoadError` naming the file, so the loader can skip and count it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

from voxfast.errors import AudioLoadError

log = logging.getLogger(__name__)
_warned_multichannel = False


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
    path: str | Path,
    num_samples: int,
    rng: np.random.Generator,
    sample_rate: int | None = None,
    resample_mismatch: bool = False,
    dtype: str = "float32",
) -> np.ndarray:
    """A random `num_samples` crop, reading only those samples; shorter files are wrap-padded.

    One open serves both the length query and the read, so a crop costs one seek and one partial
    decode. A file at another rate is rejected, or with `resample_mismatch` read at its own rate
    (the matching span) and resampled. `dtype="int16"` decodes 16-bit PCM straight to int16 (half the
    bytes to move between processes); float files still go through float32 so their NaNs are caught.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            rate, total = f.samplerate, f.frames
            if rate != sample_rate and sample_rate is not None and resample_mismatch:
                need = int(np.ceil(num_samples * rate / sample_rate)) + 1
            else:
                need = num_samples
            if total > need:
                f.seek(int(rng.integers(0, total - need + 1)))
            # Float files are read as float so NaNs are caught (libsndfile's int16 conversion zeroes them).
            as_float = need != num_samples or f.subtype in ("FLOAT", "DOUBLE") or dtype == "float32"
            data = f.read(min(total, need), dtype="float32" if as_float else "int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioLoadError(f"cannot read audio {path}: {exc}") from exc
    if sample_rate is not None and rate != sample_rate and resample_mismatch:
        data = resample(data[:, 0] if data.shape[1] == 1 else data.mean(axis=1), rate, sample_rate)[:num_samples, None]
        rate = sample_rate
    wave = _validated(path, data, rate, sample_rate)
    if dtype == "int16" and wave.dtype != np.int16:
        wave = np.clip(np.rint(wave * 32768.0), -32768, 32767).astype(np.int16)
    if len(wave) < num_samples:
        wave = np.pad(wave, (0, num_samples - len(wave)), mode="wrap")
    return wave


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling of float32 audio from rate `src` to `dst` (any integer ratio)."""
    if src == dst:
        return x
    g = math.gcd(int(src), int(dst))
    return scipy.signal.resample_poly(x, dst // g, src // g).astype(np.float32, copy=False)


def _validated(path: str | Path, data: np.ndarray, rate: int, sample_rate: int | None) -> np.ndarray:
    """Mono samples in the dtype read, or AudioLoadError naming the file and the problem."""
    if sample_rate is not None and rate != sample_rate:
        raise AudioLoadError(
            f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (pack the list with `voxfast pack`, which "
            "resamples, or set data.resample=true)"
        )
    if data.shape[0] == 0:
        raise AudioLoadError(f"{path}: no samples (empty or truncated file)")
    if data.shape[1] > 1:
        _warn_multichannel(path, data.shape[1])
        data = data.mean(axis=1, keepdims=True, dtype=np.float32).astype(data.dtype)
    wave = data[:, 0]
    if wave.dtype.kind == "f" and not np.isfinite(wave).all():
        raise AudioLoadError(f"{path}: contains NaN or infinite samples (re-encode or remove the file)")
    return np.ascontiguousarray(wave)


def _warn_multichannel(path: str | Path, channels: int) -> None:
    global _warned_multichannel
    if not _warned_multichannel:
        log.warning("%s has %d channels; multi-channel audio is averaged to mono (warned once)", path, channels)
        _warned_multichannel = True
