"""float32 audio reads: a whole file or only the frame range a crop needs.

Reading only the crop (soundfile seeks, then decodes `frames` samples) is what makes random 2 s crops
of long files cheap; 16-bit PCM WAV files skip libsndfile altogether (:mod:`voxfast.audio.wav`: no cffi calls per
crop, the same samples). MP4 audio (VoxCeleb2's ``.m4a``) is decoded by PyAV (:mod:`voxfast.audio.av_decode`,
the ``m4a`` extra) into the (frames, channels) float32 soundfile would give, then takes the same path; it cannot
seek cheaply, so its crops decode the whole file. Every read is validated: a wrong sample rate, an empty file or
non-finite samples raise :class:`AudioLoadError` naming the file, so the loader can skip and count it.

This module is also the one home of the small audio conventions every layer shares: the int16 scale
(:data:`PCM16_SCALE`), the int16 <-> float32 conversions, the resampler and the audio file suffixes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import soundfile as sf

from voxfast.audio import av_decode
from voxfast.audio.wav import Pcm16Wav
from voxfast.errors import AudioLoadError

log = logging.getLogger(__name__)
_warned_multichannel = False
_warned_compressed_crops = False

# int16 full scale: float = int16 / PCM16_SCALE, libsndfile's convention. A power of two, so the division (or
# the product with its float32 reciprocal) is exact both ways; every int16 <-> float conversion uses this one.
PCM16_SCALE = 32768.0
# Suffixes of the audio files a folder is searched for (noise banks, `voxfast extract FOLDER`, `voxfast pack`).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", *av_decode.PYAV_SUFFIXES)
# The suffixes as prose, for messages: ".wav, .flac, .ogg, .m4a or .mp4".
AUDIO_SUFFIXES_TEXT = ", ".join(AUDIO_SUFFIXES[:-1]) + " or " + AUDIO_SUFFIXES[-1]


def find_audio_files(folder: Path | str) -> list[Path]:
    """Every regular file below `folder` (recursively) whose lower-cased suffix is in AUDIO_SUFFIXES, sorted
    by path: sorted so a seed picks the same file on every machine, whatever order the file system lists."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def audio_info(path: str | Path) -> tuple[int, int]:
    """(frames, sample rate) of any file voxfast reads, from its header (no decoding), or AudioLoadError."""
    try:
        if av_decode.is_pyav_file(path):
            return av_decode.info(path)
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, AudioLoadError) as exc:
        raise _read_error(path, exc) from exc
    return info.frames, info.samplerate


def _read_error(path: str | Path, exc: Exception) -> AudioLoadError:
    """The AudioLoadError for a failed open or read: "not found" when the path does not exist (libsndfile's own
    words for that are "System error"), else the reader's reason, naming the file either way.

    The path is looked at only after a failure, so the reads that succeed (every training crop) pay no extra stat.
    """
    if not Path(path).exists():
        return AudioLoadError(f"cannot read audio {path}: file not found")
    return AudioLoadError(str(exc) if isinstance(exc, AudioLoadError) else f"cannot read audio {path}: {exc}")


def read_audio(path: str | Path, start: int = 0, frames: int = -1, sample_rate: int | None = None) -> np.ndarray:
    """Read `frames` samples from `start` (all with -1) as float32 in [-1, 1], mono.

    Multi-channel files are averaged to mono with one warning per process.
    """
    try:
        wav = Pcm16Wav.open(path) if start >= 0 else None
        if av_decode.is_pyav_file(path):
            data, rate = av_decode.decode(path, start, frames)
        elif wav is not None:
            with wav:
                data, rate = to_float32(wav.read(start, wav.frames if frames < 0 else frames)), wav.samplerate
        else:
            data, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, AudioLoadError) as exc:
        raise _read_error(path, exc) from exc
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
    `dtype="native"` gives 16-bit mono PCM as int16 and anything else as float32, losslessly: a caller that
    converts into its own buffer saves a temporary array and a NaN scan of integer samples.
    """
    if dtype not in ("float32", "int16", "native"):
        raise ValueError(f"dtype must be 'float32', 'int16' or 'native', got {dtype!r}")
    try:
        fast = _pcm16_crop(path, num_samples, rng, sample_rate)
        if fast is not None:
            data, rate = fast
            data = to_float32(data) if dtype == "float32" else data
        elif av_decode.is_pyav_file(path):
            data, rate = _pyav_crop(path, num_samples, rng, sample_rate, resample_mismatch)
        else:
            data, rate = _soundfile_crop(path, num_samples, rng, sample_rate, resample_mismatch, dtype)
    except (sf.LibsndfileError, RuntimeError, OSError, AudioLoadError) as exc:
        raise _read_error(path, exc) from exc
    if dtype == "native" and data.dtype == np.int16 and data.shape[1] > 1:
        data = to_float32(data)  # the downmix of int16 would round: average in float, as the float32 read does
    if sample_rate is not None and rate != sample_rate and resample_mismatch:
        data = resample(data[:, 0] if data.shape[1] == 1 else data.mean(axis=1), rate, sample_rate)[:num_samples, None]
        rate = sample_rate
    wave = _validated(path, data, rate, sample_rate)
    if dtype == "int16" and wave.dtype != np.int16:
        wave = to_int16(wave)
    if len(wave) < num_samples:
        wave = np.pad(wave, (0, num_samples - len(wave)), mode="wrap")
    return wave


def _pcm16_crop(
    path: str | Path, num_samples: int, rng: np.random.Generator, sample_rate: int | None
) -> tuple[np.ndarray, int] | None:
    """int16 crop and rate of a 16-bit PCM WAV at the expected rate; None (nothing drawn) for soundfile's path."""
    wav = Pcm16Wav.open(path)
    if wav is None:
        return None
    with wav:
        if sample_rate is not None and wav.samplerate != sample_rate:
            return None  # soundfile's path resamples or rejects it
        return wav.read(_crop_start(wav.frames, num_samples, rng), num_samples), wav.samplerate


def _soundfile_crop(
    path: str | Path,
    num_samples: int,
    rng: np.random.Generator,
    sample_rate: int | None,
    resample_mismatch: bool,
    dtype: str,
) -> tuple[np.ndarray, int]:
    """The crop through libsndfile (any format), at the file's own rate; a mismatched rate reads the same span."""
    with sf.SoundFile(str(path)) as f:
        rate, total = f.samplerate, f.frames
        need = _span(num_samples, rate, sample_rate, resample_mismatch)
        f.seek(_crop_start(total, need, rng))
        # Float files are read as float so NaNs are caught (libsndfile's int16 conversion zeroes them).
        as_float = need != num_samples or f.subtype in ("FLOAT", "DOUBLE") or dtype == "float32"
        as_float = as_float or (dtype == "native" and f.subtype != "PCM_16")
        return f.read(min(total, need), dtype="float32" if as_float else "int16", always_2d=True), rate


def _pyav_crop(
    path: str | Path, num_samples: int, rng: np.random.Generator, sample_rate: int | None, resample_mismatch: bool
) -> tuple[np.ndarray, int]:
    """The crop of a file PyAV decodes: the whole file decoded, then the same draw and span as soundfile's path."""
    _warn_compressed_crops(path)
    data, rate = av_decode.decode(path)
    need = _span(num_samples, rate, sample_rate, resample_mismatch)
    start = _crop_start(len(data), need, rng)
    return data[start : start + need], rate


def _span(num_samples: int, rate: int, sample_rate: int | None, resample_mismatch: bool) -> int:
    """Samples to read at the file's `rate` for a `num_samples` crop at `sample_rate` (one more when resampled)."""
    if rate != sample_rate and sample_rate is not None and resample_mismatch:
        return int(np.ceil(num_samples * rate / sample_rate)) + 1
    return num_samples


def _crop_start(total: int, need: int, rng: np.random.Generator) -> int:
    """Uniform start of a `need`-sample span in `total` samples; 0 without a draw when the file is too short."""
    return int(rng.integers(0, total - need + 1)) if total > need else 0


def to_float32(samples: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Samples as float32 in [-1, 1): int16 / PCM16_SCALE (exact, libsndfile's conversion), float as is; one
    pass, into `out` when given (a ring row or a scratch buffer), so callers need no temporary array.

    Without `out`, float32 input comes back as it is (no copy); pass `out` for a writable copy.
    """
    if samples.dtype == np.int16:
        return np.multiply(samples, np.float32(1.0 / PCM16_SCALE), out=out, dtype=np.float32)
    if out is None:
        return np.asarray(samples, dtype=np.float32)
    out[:] = samples
    return out


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float samples as int16: samples * PCM16_SCALE rounded to nearest (ties to even) and clipped to the int16
    range, computed in float32 for float32 input; the exact inverse of :func:`to_float32` on its output."""
    return np.clip(np.rint(samples * np.float32(PCM16_SCALE)), -32768, 32767).astype(np.int16)


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling of float32 audio from rate `src` to `dst` (any integer ratio); float32 out.

    scipy.signal is imported on first use: it takes seconds to import, which every spawned `voxfast pack`
    worker and every CLI start would otherwise pay even when no file needs resampling.
    """
    if src == dst:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(src), int(dst))
    return resample_poly(x, dst // g, src // g).astype(np.float32, copy=False)


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


def _warn_compressed_crops(path: str | Path) -> None:
    global _warned_compressed_crops
    if not _warned_compressed_crops:
        log.warning("%s: random crops of compressed audio (%s) decode the whole file for every crop; run "
                    "`voxfast pack` once and train from the store (warned once)", path,
                    " ".join(av_decode.PYAV_SUFFIXES))
        _warned_compressed_crops = True
