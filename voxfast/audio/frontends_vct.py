"""voxceleb_trainer's in-model front ends, exactly, for models imported from it (`voxfast import vct`).

`LogMel` is voxfast's training front end in voxceleb_trainer's style, but it is not bit-for-bit the features its
published models saw: voxceleb_trainer's mel banks start at 0 Hz (torchaudio's ``MelSpectrogram`` default, not
20 Hz), its pre-emphasis pads with ``reflect`` (x[-1] := x[1], not x[0]), and ResNetSE34L has no pre-emphasis at
all. voxceleb_trainer's ResNetSE34L of April 2020, which trained the published ``baseline_lite_ap.model``, used
torchaudio's default Hann window, and the file carries that window: voxceleb_trainer loads it with the weights,
so it still computes Hann-windowed features for that model today. A converted model is only as faithful as its
features, so the imported checkpoints name these front ends instead of `LogMel`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

N_FFT = 512
HOP = 160
WIN = 400
PRE_EMPHASIS = 0.97
WINDOWS = {"hamming": torch.hamming_window, "hann": torch.hann_window}  # periodic, as torchaudio builds them


class VctPreEmphasis(nn.Module):
    """y[n] = x[n] - 0.97 x[n-1] with x[-1] := x[1], as voxceleb_trainer's ``utils.PreEmphasis`` (reflect pad)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, T)
        prev = torch.cat([x[:, 1:2], x[:, :-1]], dim=1)
        return x - PRE_EMPHASIS * prev


class VctLogMel(nn.Module):
    """voxceleb_trainer's ResNetSE34L / ResNetSE34V2 features: [pre-emphasis], torchaudio ``MelSpectrogram``
    (n_fft 512, periodic Hamming (or Hann) of 400 centred in 512, hop 160, centred frames with reflect padding,
    power 2, HTK mel banks from 0 Hz to Nyquist, no normalisation), ``+ 1e-6``, log, ``InstanceNorm1d``.

    The spectrum is voxfast's `FramedPowerSpectrum`, so export (TorchScript, ONNX's matrix DFT) works as for
    `LogMel`; it holds no weights, like every registered front end.
    """

    def __init__(self, n_mels: int = 40, sample_rate: int = 16000, pre_emphasis: bool = True,
                 window: str = "hamming") -> None:
        super().__init__()
        # imported here: voxfast.audio.features registers this module's front ends, so a top-level import
        # would be circular
        from voxfast.audio.features import FramedPowerSpectrum, _Window

        self.n_mels = n_mels
        self.pre: nn.Module = VctPreEmphasis() if pre_emphasis else nn.Identity()
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; available: {', '.join(WINDOWS)}")
        frame = torch.zeros(N_FFT)
        frame[(N_FFT - WIN) // 2 : (N_FFT + WIN) // 2] = WINDOWS[window](WIN)  # torch.stft's centring
        self.power = FramedPowerSpectrum(N_FFT, HOP, _Window(frame), N_FFT)
        banks = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)
        self.register_buffer("banks", banks, persistent=False)  # (257, n_mels)
        self.norm = nn.InstanceNorm1d(n_mels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames), frames = 1 + T // 160
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = F.pad(self.pre(wave.float())[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[:, 0]
            mel = self.power(x) @ self.banks + 1e-6  # (B, frames, n_mels)
            return self.norm(mel.log().transpose(1, 2))


# registered in voxfast.audio.features.FRONTENDS: ResNetSE34V2 pre-emphasises, ResNetSE34L does not (and its
# April 2020 version, the published baseline_lite_ap.model, used a Hann window)
VCT_FRONTENDS: dict[str, Callable[[int, int], nn.Module]] = {
    "vct_logmel": lambda n_mels, sample_rate: VctLogMel(n_mels, sample_rate, pre_emphasis=True),
    "vct_logmel_nopreemph": lambda n_mels, sample_rate: VctLogMel(n_mels, sample_rate, pre_emphasis=False),
    "vct_logmel_hann_nopreemph": lambda n_mels, sample_rate: VctLogMel(n_mels, sample_rate, pre_emphasis=False,
                                                                        window="hann"),
}
