"""Acoustic front ends that run on the model's device as the first layer of the embedding network.

Computing features on the device (instead of in CPU workers) keeps the workers to slicing audio and
lets a GPU do the FFTs in batch. Features are computed in float32 even under autocast: log-mel of
fp16 power spectra loses the quiet bands that carry speaker information.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from voxfast.audio.frontends_speechbrain import SpeechBrainFbank
from voxfast.audio.frontends_vct import VCT_FRONTENDS
from voxfast.audio.io import PCM16_SCALE
from voxfast.errors import ConfigError

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
WIN = 400  # 25 ms


def crop_samples(num_frames: int) -> int:
    """Samples of a crop that yields `num_frames` feature frames (voxceleb_trainer: frames*160+240)."""
    return num_frames * HOP + WIN - HOP


class PreEmphasis(nn.Module):
    """y[n] = x[n] - coef * x[n-1], with x[-1] = x[0] (reflect-free, as voxceleb_trainer)."""

    def __init__(self, coef: float = 0.97) -> None:
        super().__init__()
        self.coef = coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, T)
        prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
        return x - self.coef * prev


class FramedPowerSpectrum(nn.Module):
    """Frames of a signal, a per-frame linear map, then |DFT|^2: (B, T) -> (B, frames, n_fft // 2 + 1).

    Normally: unfold, `frame_map` (DC removal, pre-emphasis, window...), torch.fft.rfft. For ONNX export
    (`matrix_dft = True`, set by voxfast.export) the whole chain is one strided Conv1d whose kernels are
    `frame_map` applied to the real DFT basis: torch's ONNX exporter supports neither complex FFTs nor an
    unfold of dynamic length, and a linear frame map composed with the DFT is just another linear map.
    """

    def __init__(self, frame_len: int, hop: int, frame_map: nn.Module, n_fft: int = 512) -> None:
        super().__init__()
        self.frame_len, self.hop, self.n_fft = frame_len, hop, n_fft
        self.frame_map = frame_map
        self.matrix_dft = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrix_dft:
            bins = self.n_fft // 2 + 1
            spec = F.conv1d(x[:, None], self._kernel(x), stride=self.hop)  # (B, 2 * bins, frames)
            return (spec[:, :bins].pow(2) + spec[:, bins:].pow(2)).transpose(1, 2)
        spec = torch.fft.rfft(self.frame_map(x.unfold(1, self.frame_len, self.hop)), n=self.n_fft)
        return spec.real.pow(2) + spec.imag.pow(2)

    def _kernel(self, like: torch.Tensor) -> torch.Tensor:
        """(2 * bins, 1, frame_len): rows of frame_map(identity) projected on the cos and -sin DFT bases."""
        n = torch.arange(self.frame_len, dtype=torch.float64)[:, None]
        k = torch.arange(self.n_fft // 2 + 1, dtype=torch.float64)[None, :]
        angle = 2.0 * math.pi * n * k / self.n_fft
        basis = torch.cat([angle.cos(), -angle.sin()], dim=1).to(like.dtype)  # (frame_len, 2 * bins)
        linear = self.frame_map(torch.eye(self.frame_len, dtype=like.dtype, device=like.device))  # row i: map(e_i)
        return (linear @ basis.to(like.device)).T[:, None, :]


class _Window(nn.Module):
    """Multiply each frame by a fixed window (the frame map of LogMel)."""

    def __init__(self, window: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("window", window, persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames * self.window


class _KaldiFrameMap(nn.Module):
    """Kaldi's per-frame processing: remove the DC offset, pre-emphasise with x[-1] := x[0], window."""

    def __init__(self, window: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("window", window, persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames - frames.mean(dim=-1, keepdim=True)
        shifted = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        return (frames - 0.97 * shifted) * self.window


class LogMel(nn.Module):
    """voxceleb_trainer's front end: pre-emphasis, 512-point Hamming mel spectrogram, log, mean/var norm.

    Same maths as torchaudio's MelSpectrogram (centred frames with reflect padding, periodic Hamming window
    of 400 centred in 512, HTK mel banks from 20 Hz), written out so the spectrum step can be exported.
    The per-utterance normalisation over time (InstanceNorm without affine) removes channel and level,
    which is exactly the session variability a speaker model should ignore.
    """

    def __init__(self, n_mels: int = 40, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.pre = PreEmphasis()
        window = torch.zeros(512)
        window[(512 - WIN) // 2 : (512 + WIN) // 2] = torch.hamming_window(WIN)
        self.power = FramedPowerSpectrum(512, HOP, _Window(window))
        banks = torchaudio.functional.melscale_fbanks(257, 20.0, sample_rate / 2, n_mels, sample_rate)
        self.register_buffer("banks", banks, persistent=False)  # (257, n_mels)
        self.norm = nn.InstanceNorm1d(n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames), frames = 1 + T // 160
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = F.pad(self.pre(wave.float())[:, None], (256, 256), mode="reflect")[:, 0]
            mel = self.power(x) @ self.banks + 1e-6  # (B, frames, n_mels)
            return self.norm(mel.log().transpose(1, 2))


class KaldiFbank(nn.Module):
    """Kaldi log mel filterbank (as `torchaudio.compliance.kaldi.fbank`), batched, then per-utterance CMN.

    torchaudio's Kaldi fbank takes one utterance at a time on the CPU; WeSpeaker and 3D-Speaker run it in
    their loader workers. This computes the same features for a whole (B, T) batch on the model's device:
    25 ms frames every 10 ms without padding (snip_edges), DC removal, pre-emphasis 0.97 inside each frame,
    Povey (or Hamming) window, 512-point power spectrum, Kaldi mel banks from 20 Hz, log, then the mean
    over time is subtracted per bin (WeSpeaker's CMN). Input is scaled to the int16 range like Kaldi's.
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = SAMPLE_RATE, window: str = "povey") -> None:
        super().__init__()
        if window not in ("povey", "hamming"):
            raise ValueError(f"unknown fbank window {window!r}; available: povey, hamming")
        self.n_mels = n_mels
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(n_mels, 512, float(sample_rate), 20.0, 0.0, 100.0,
                                                              -500.0, 1.0)
        self.register_buffer("banks", torch.nn.functional.pad(banks, (0, 1)).T.contiguous(), persistent=False)
        if window == "povey":
            win = torch.hann_window(WIN, periodic=False, dtype=torch.float64).pow(0.85)
        else:
            win = torch.hamming_window(WIN, periodic=False, dtype=torch.float64)
        self.power = FramedPowerSpectrum(WIN, HOP, _KaldiFrameMap(win.float()))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames), frames = 1 + (T - 400) // 160
        with torch.autocast(device_type=wave.device.type, enabled=False):
            power = self.power(wave.float() * PCM16_SCALE)  # (B, F, 257): Kaldi works on the int16 scale
            mel = (power @ self.banks).clamp(min=torch.finfo(torch.float32).eps).log()  # (B, F, n_mels)
            return (mel - mel.mean(dim=1, keepdim=True)).transpose(1, 2)


# Front ends by name, for `model.frontend`: each maps (B, T) waveforms at `sample_rate` to (B, n_mels, frames) and
# holds no weights, so a model's front end can be swapped without touching its checkpoint.
FRONTENDS: dict[str, Callable[[int, int], nn.Module]] = {
    "logmel": lambda n_mels, sample_rate: LogMel(n_mels, sample_rate),
    "kaldi_fbank": lambda n_mels, sample_rate: KaldiFbank(n_mels, sample_rate),
    **VCT_FRONTENDS,  # voxceleb_trainer's exact in-model features, for `voxfast import vct`
    "speechbrain_fbank": lambda n_mels, sample_rate: SpeechBrainFbank(n_mels, sample_rate),  # `import speechbrain`
    # WeSpeaker's compute_fbank and CLI use a Hamming window, not Kaldi's default Povey: `voxfast import wespeaker`
    "wespeaker_fbank": lambda n_mels, sample_rate: KaldiFbank(n_mels, sample_rate, window="hamming"),
}


def create_frontend(name: str, n_mels: int, sample_rate: int = SAMPLE_RATE) -> nn.Module:
    """The registered front end `name`."""
    check_frontend(name)
    return FRONTENDS[name](n_mels, sample_rate)


def check_frontend(name: str | None) -> None:
    """An unknown `model.frontend` is a ConfigError listing the choices (None: the model's own)."""
    if name is not None and name not in FRONTENDS:
        raise ConfigError(f"model.frontend: unknown front end {name!r}; available: {', '.join(sorted(FRONTENDS))}")
