"""AAC in MP4 (VoxCeleb2's ``.m4a``) decoded through PyAV, since libsndfile cannot read it.

What comes back is what soundfile gives for a WAV: float32 samples shaped (frames, channels) at the file's own
rate, so :mod:`voxfast.audio.io` and the store apply their one downmix, sample-rate rule, resampler and checks to
both. PyAV only decodes; nothing is resampled or downmixed here (libswresample's filters and stereo matrix would
give other samples than the soundfile path gives for the same audio).

Length: FFmpeg drops the encoder's priming samples (1024 for AAC) through the MP4 edit list, but decodes the last
frame whole, padding included; the samples are cut to the stream's declared duration, which gives exactly the
encoder's input length. Only MP4-family files are routed here: raw ADTS ``.aac`` carries neither the priming nor
an exact duration.

Seeking: an AAC frame needs the previous one to undo its overlap, and MP4 seeks land on packet boundaries, so a
sample-exact seek is not cheap; a frame range is decoded from the start and sliced (decoding stops at its end).

PyAV is an optional dependency (the ``m4a`` extra), imported on first use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voxfast.errors import AudioLoadError, VoxfastError

# Suffixes decoded here rather than by soundfile: containers whose demuxer trims priming and states the length.
PYAV_SUFFIXES = (".m4a", ".mp4")
INSTALL_HINT = 'pip install "voxfast[m4a]"'


def is_pyav_file(path: str | Path) -> bool:
    """Whether `path` is read through PyAV (by suffix, case-insensitive)."""
    return Path(path).suffix.lower() in PYAV_SUFFIXES


def decode(path: str | Path, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """`frames` samples from `start` (all with -1; a negative start counts from the end, as in soundfile) as
    float32 (frames, channels) clipped to [-1, 1], and the file's sample rate.

    Clipped because AAC overshoots full scale slightly where the source did not: the WAV copy
    ``ffmpeg -i x.m4a x.wav`` makes is clipped the same way. NaNs pass through for the caller's check.
    """
    stop = start + frames if start >= 0 and frames >= 0 else None
    data, rate = _decode_planar(path, stop)
    data = data[:, start:] if start >= 0 else data[:, max(data.shape[1] + start, 0) :]
    if frames >= 0:
        data = data[:, :frames]
    return np.clip(data, -1.0, 1.0, out=data).T, rate


def info(path: str | Path) -> tuple[int, int]:
    """(frames, sample rate) from the container header, or by decoding when the header states no duration."""
    av = _import_av(path)
    try:
        with av.open(str(path)) as container:
            stream = _audio_stream(container, path)
            declared = _declared_length(stream)
            rate = int(stream.rate)
    except av.FFmpegError as exc:
        raise AudioLoadError(f"cannot read audio {path}: {exc}") from exc
    if declared is None:
        declared = _decode_planar(path, None)[0].shape[1]
    return declared, rate


def _decode_planar(path: str | Path, stop: int | None) -> tuple[np.ndarray, int]:
    """(channels, frames) float32 of the first audio stream up to `stop` (None: all), cut to the declared length."""
    av = _import_av(path)
    try:
        with av.open(str(path)) as container:
            stream = _audio_stream(container, path)
            stop = min((n for n in (stop, _declared_length(stream)) if n is not None), default=None)
            return _decode_frames(av, container, stream, stop, path), int(stream.rate)
    except av.FFmpegError as exc:
        raise AudioLoadError(f"cannot read audio {path}: {exc}") from exc


def _decode_frames(av: Any, container: Any, stream: Any, stop: int | None, path: str | Path) -> np.ndarray:
    """(channels, samples) float32, decoding stopped once `stop` samples are in (None: the whole stream).

    Each frame is copied into one preallocated array (the declared length) and released at once, so FFmpeg's
    buffer pool hands the decoder the same cache-warm buffer again: holding the frames (or ``to_ndarray``'s
    per-frame vstack) and concatenating them cost a third more than the decode itself on 16 kHz mono AAC.
    """
    out = np.empty((int(stream.channels), 30 * int(stream.rate) if stop is None else stop), dtype=np.float32)
    have = 0
    for frame in _float_frames(av, container, stream):
        if len(frame.planes) != len(out):
            raise AudioLoadError(f"{path}: the channel count changes from {len(out)} to {len(frame.planes)}")
        n = frame.samples if stop is None else min(frame.samples, stop - have)
        if have + n > out.shape[1]:  # no declared length: grow
            out = np.concatenate([out, np.empty_like(out)], axis=1)
        for row, plane in zip(out, frame.planes, strict=True):
            row[have : have + n] = np.frombuffer(plane, dtype=np.float32, count=n)
        have += n
        if stop is not None and have >= stop:
            break
    return out[:, :have]


def _float_frames(av: Any, container: Any, stream: Any) -> Iterator[Any]:
    """The stream's frames as planar float32 (fltp): a pass-through for AAC, which decodes to fltp already."""
    to_float = av.AudioResampler(format="fltp")
    for frame in container.decode(stream):
        yield from to_float.resample(frame)
    yield from to_float.resample(None)  # whatever a format conversion held back


def _declared_length(stream: Any) -> int | None:
    """Samples the container says the stream holds (MP4: the edit list's span, priming excluded), if it says."""
    if stream.duration is None or stream.time_base is None:
        return None
    return round(stream.duration * stream.time_base * stream.rate)


def _audio_stream(container: Any, path: str | Path) -> Any:
    if not container.streams.audio:
        raise AudioLoadError(f"{path}: no audio stream")
    return container.streams.audio[0]


def _import_av(path: str | Path) -> Any:
    """The av module, or a VoxfastError naming the file and the fix.

    Not an AudioLoadError: the file is fine, so it must not be skipped as bad (a pack would list every m4a in
    bad.tsv and keep them out of the store even after PyAV is installed); the run stops and says what to install.
    """
    try:
        import av
    except ImportError:
        raise VoxfastError(f"cannot read {path}: {Path(path).suffix} files are decoded by PyAV, which is not "
                           f"installed; run {INSTALL_HINT}") from None
    return av
