"""SpeechBrain's speaker front end (``Fbank`` then ``InputNormalization(norm_type="sentence", std_norm=False)``).

An imported SpeechBrain model (``voxfast import speechbrain``) only reproduces SpeechBrain's embeddings when it sees
SpeechBrain's features, and those differ from voxfast's other front ends in every step: centred 400-point frames
zero-padded (not reflected) at the edges, a periodic Hamming window, no pre-emphasis or DC removal, mel triangles
from 0 Hz to Nyquist built SpeechBrain's way, a log in decibels (10 log10, not ln) floored at 1e-10, then clamped to
80 dB below the utterance's loudest bin (``top_db``), and the mean over time subtracted without variance scaling.
The maths is rewritten here with torch ops so voxfast never needs speechbrain at run time, and it runs batched on
the model's device like the other front ends.

Lengths: SpeechBrain normalises with the mean over each utterance's valid frames (``wav_lens``) and its ``top_db``
floor is taken per utterance. voxfast feeds whole utterances (one per forward, or equal-length crops in training),
which is SpeechBrain's ``encode_batch`` with every relative length 1.0; padding, where there is any, is the
extractor's (repeat-padding by at most 1 %), and its frames count in the statistics as real ones would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

N_FFT = 400  # SpeechBrain's Fbank defaults (the published spkrec-ecapa-voxceleb keeps them all but n_mels)
WIN_MS = 25.0
HOP_MS = 10.0
AMIN = 1e-10  # power floor before the log
TOP_DB = 80.0  # dynamic range kept below each utterance's maximum


def speechbrain_mel_banks(n_mels: int, sample_rate: int, n_fft: int = N_FFT) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular mel filters, computed with SpeechBrain's own float32 steps.

    SpeechBrain's ``Filterbank`` places the triangles in float32 (mel points by ``torch.linspace``, bin frequencies
    on ``linspace(0, sample_rate // 2)``); repeating the same operations in the same precision gives the very same
    matrix, where a float64 construction would differ in the last bits of every weight.
    """
    f_max = sample_rate // 2
    mel = torch.linspace(0.0, 2595 * math.log10(1 + f_max / 700), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band = (hz[1:] - hz[:-1])[:-1]  # (n_mels,)
    central = hz[1:-1]  # (n_mels,)
    freqs = torch.linspace(0, f_max, n_fft // 2 + 1)  # (bins,)
    slope = (freqs[None, :] - central[:, None]) / band[:, None]  # (n_mels, bins)
    return torch.minimum(slope + 1.0, 1.0 - slope).clamp(min=0.0).T.contiguous()  # (bins, n_mels)


class SpeechBrainFbank(nn.Module):
    """SpeechBrain's ``Fbank(n_mels)`` and sentence mean normalisation for a (B, T) float waveform batch.

    Output (B, n_mels, frames) with frames = 1 + T // hop (hop 160 at 16 kHz), in float32 even under autocast.
    Matches SpeechBrain to float32 rounding (the tests allow 1e-4 dB absolute on features of tens of dB).
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000) -> None:
        super().__init__()
        # imported here: voxfast.audio.features registers this front end, so a top-level import would be circular
        from voxfast.audio.features import FramedPowerSpectrum, _Window

        self.n_mels = n_mels
        win = round(sample_rate / 1000.0 * WIN_MS)
        self.hop = round(sample_rate / 1000.0 * HOP_MS)
        if win > N_FFT:
            raise ValueError(f"speechbrain_fbank: a {WIN_MS:g} ms window at {sample_rate} Hz is {win} samples, "
                             f"longer than n_fft {N_FFT}")
        # torch.stft centres a shorter window inside the n_fft frame; at 16 kHz window and frame are both 400
        window = torch.zeros(N_FFT)
        start = (N_FFT - win) // 2
        window[start : start + win] = torch.hamming_window(win)  # periodic, SpeechBrain's window_fn default
        # the spectrum is voxfast's FramedPowerSpectrum (window only: no DC removal, no pre-emphasis), so export
        # (TorchScript, ONNX's matrix DFT) works as for the other front ends
        self.power = FramedPowerSpectrum(N_FFT, self.hop, _Window(window), n_fft=N_FFT)
        self.register_buffer("banks", speechbrain_mel_banks(n_mels, sample_rate), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames)
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = F.pad(wave.float(), (N_FFT // 2, N_FFT // 2))  # centred frames, zero padding (pad_mode "constant")
            mel = self.power(x) @ self.banks  # (B, frames, n_mels) power
            db = 10.0 * torch.log10(mel.clamp(min=AMIN))  # ref_value 1.0: no offset
            floor = db.amax(dim=(1, 2), keepdim=True) - TOP_DB  # per utterance, as SpeechBrain's top_db
            db = torch.maximum(db, floor)
            return (db - db.mean(dim=1, keepdim=True)).transpose(1, 2)  # sentence mean norm, std_norm=False
