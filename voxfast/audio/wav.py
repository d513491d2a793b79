"""Sample ranges of 16-bit PCM WAV files read straight from the file, without libsndfile.

Why: soundfile reaches libsndfile through cffi, so opening a file, seeking and reading a 2 s crop pays cffi's
per-call overhead on every step (and, read as float32, libsndfile's scalar sample conversion): for a crop that
fixed cost, not the samples, is what a partial read spends its time on. A 16-bit PCM WAV (VoxCeleb, MUSAN, most
corpora) is a little-endian int16 array after its header: one open, two `pread`s and a `frombuffer` (a view, no
conversion) give the same samples with none of that overhead (timings in the README's measured tables). Only
files this module fully understands take the fast path; anything else (other encodings or widths, RF64,
big-endian RIFX, a data chunk past the first 4 KiB, a header that claims more bytes than the file holds) makes
:meth:`Pcm16Wav.open` return None and the caller reads it with soundfile, so the samples never depend on which
path read them (tested against soundfile bit for bit).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

HEADER_BYTES = 4096  # where the data chunk must start for the fast path (canonical headers: 44 bytes)
_PCM = 1
_EXTENSIBLE = 0xFFFE
_PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM after its first 2 bytes


class Pcm16Wav:
    """An open 16-bit PCM WAV file: `samplerate`, `channels`, `frames`, and :meth:`read` of any frame range.

    Use as a context manager; :meth:`open` returns None for files to leave to soundfile.
    """

    def __init__(self, fd: int, samplerate: int, channels: int, frames: int, data_offset: int) -> None:
        self.fd, self.samplerate, self.channels, self.frames = fd, samplerate, channels, frames
        self._data_offset = data_offset

    @classmethod
    def open(cls, path: str | Path) -> Pcm16Wav | None:
        """The file opened for reading when it is a 16-bit PCM WAV whose data is all there, else None.

        Raises OSError as `open` does (missing file, no permission): the caller reports those either way.
        """
        if not str(path).lower().endswith(".wav"):
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            layout = _layout(os.pread(fd, HEADER_BYTES, 0))
            if layout is not None:
                rate, channels, frames, offset = layout
                if frames > 0 and offset + frames * channels * 2 <= os.fstat(fd).st_size:
                    return cls(fd, rate, channels, frames, offset)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def read(self, start: int, frames: int) -> np.ndarray:
        """int16 samples of frames [start, start + frames) clipped to the file, shape (frames, channels)."""
        start = min(max(start, 0), self.frames)
        frames = min(frames, self.frames - start)
        size = frames * self.channels * 2
        raw = bytearray(size)  # writable, unlike pread's bytes, so callers (and torch.from_numpy) may write
        got = os.preadv(self.fd, [raw], self._data_offset + start * self.channels * 2)
        if got != size:  # the file shrank since open: report it like any unreadable file
            raise OSError(f"short read: {got} of {size} bytes (file truncated while open?)")
        return np.frombuffer(raw, dtype="<i2").astype(np.int16, copy=False).reshape(frames, self.channels)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Pcm16Wav:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layout(head: bytes) -> tuple[int, int, int, int] | None:
    """(rate, channels, frames, data offset) of a 16-bit PCM RIFF/WAVE header, or None when it is not one."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        body = pos + 8
        if chunk == b"fmt ":
            fmt = _pcm16_format(head[body : body + size])
            if fmt is None:
                return None
        elif chunk == b"data":
            if fmt is None or size in (0, 0xFFFFFFFF):  # no format yet, or a streamed file's unknown size
                return None
            rate, channels = fmt
            return rate, channels, size // (2 * channels), body
        pos = body + size + (size & 1)  # chunks are padded to an even length
    return None


def _pcm16_format(fmt: bytes) -> tuple[int, int] | None:
    """(rate, channels) of a fmt chunk describing 16-bit integer PCM, else None."""
    if len(fmt) < 16:
        return None
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE:
        if len(fmt) < 40 or struct.unpack_from("<H", fmt, 24)[0] != _PCM or fmt[26:40] != _PCM_GUID_TAIL:
            return None
    elif tag != _PCM:
        return None
    if bits != 16 or channels < 1 or block_align != 2 * channels or rate < 1:
        return None
    return rate, channels
