"""Acoustic front ends that run on the model's device as the first layer of the embedding network.

Computing features on the device (instead of in CPU workers) keeps the workers to slicing audio and
lets a GPU do the FFTs in batch. Features are computed in float32 even under autocast: log-mel of
fp16 power spectra loses the quiet bands that carry speaker information.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

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


class LogMel(nn.Module):
    """voxceleb_trainer's front end: pre-emphasis, 512-point Hamming mel spectrogram, log, mean/var norm.

    The per-utterance normalisation over time (InstanceNorm without affine) removes channel and level,
    which is exactly the session variability a speaker model should ignore.
    """

    def __init__(self, n_mels: int = 40, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.pre = PreEmphasis()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=512, win_length=WIN, hop_length=HOP, window_fn=torch.hamming_window,
            n_mels=n_mels, f_min=20.0, f_max=sample_rate / 2,
        )
        self.norm = nn.InstanceNorm1d(n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames)
        device_type = wave.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            x = self.mel(self.pre(wave.float())) + 1e-6
            return self.norm(x.log())


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
        self.register_buffer("window", win.float(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames), frames = 1 + (T - 400) // 160
        with torch.autocast(device_type=wave.device.type, enabled=False):
            frames = (wave.float() * 32768.0).unfold(1, WIN, HOP)  # (B, F, 400)
            frames = frames - frames.mean(dim=-1, keepdim=True)
            shifted = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[-1] := x[0], as Kaldi
            frames = (frames - 0.97 * shifted) * self.window
            power = torch.fft.rfft(frames, n=512).abs().pow(2)  # (B, F, 257)
            mel = (power @ self.banks).clamp(min=torch.finfo(torch.float32).eps).log()  # (B, F, n_mels)
            return (mel - mel.mean(dim=1, keepdim=True)).transpose(1, 2)
