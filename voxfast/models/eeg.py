"""EEG classifiers (`voxfast train --task eeg`): EEGNet and a 1-D SE-ResNet over time.

Both variants take the same arguments (channels, window samples, classes, sampling rate), so the EEG task
builds whichever eeg.model names without knowing which it is.
"""

from __future__ import annotations

import torch
from torch import nn

from voxfast.errors import VoxfastError
from voxfast.models.registry import register_model
from voxfast.models.se_resnet import SqueezeExcite


def _odd(length: float) -> int:
    """The odd kernel length nearest `length`: "same" padding is then symmetric and needs no padded copy."""
    return 2 * round((length - 1) / 2) + 1


class EEGNet(nn.Module):
    """EEGNet-8,2 (Lawhern et al., 2018): temporal filters, depthwise spatial filters per temporal filter, then a
    separable convolution; ELU, average pooling and dropout between, a linear classifier on the flattened maps.

    Kernel lengths follow the paper in seconds (1/2 s temporal, 1/8 s separable, made odd), so they scale with the
    rate. The paper's max-norm constraints are left to weight decay; dropout 0.25 is its cross-subject setting.
    """

    def __init__(self, n_channels: int, n_samples: int, n_classes: int, sfreq: float, f1: int = 8, depth: int = 2,
                 f2: int = 16, dropout: float = 0.25) -> None:
        super().__init__()
        if n_samples < 32:
            raise VoxfastError(f"eegnet needs windows of at least 32 samples (it pools time by 32), got {n_samples}")
        f = f1 * depth
        self.features = nn.Sequential(
            nn.Conv2d(1, f1, (1, _odd(sfreq / 2)), padding="same", bias=False), nn.BatchNorm2d(f1),
            nn.Conv2d(f1, f, (n_channels, 1), groups=f1, bias=False), nn.BatchNorm2d(f), nn.ELU(),
            nn.AvgPool2d((1, 4)), nn.Dropout(dropout),
            nn.Conv2d(f, f, (1, _odd(sfreq / 8)), padding="same", groups=f, bias=False),
            nn.Conv2d(f, f2, 1, bias=False), nn.BatchNorm2d(f2), nn.ELU(),
            nn.AvgPool2d((1, 8)), nn.Dropout(dropout),
        )
        self.classify = nn.Linear(f2 * (n_samples // 32), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, channels, samples) -> (B, 1, channels, samples) -> (B, f2, 1, samples / 32) -> (B, classes)
        return self.classify(self.features(x.unsqueeze(1)).flatten(1))


class SEBlock1d(nn.Module):
    """Two k=7 convolutions over time with batch norm, voxfast's SqueezeExcite gate and a projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(in_ch, out_ch, 7, stride=stride, padding=3, bias=False), nn.BatchNorm1d(out_ch),
            nn.ReLU(inplace=True), nn.Conv1d(out_ch, out_ch, 7, padding=3, bias=False), nn.BatchNorm1d(out_ch),
        )
        self.se = SqueezeExcite(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv1d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm1d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C_in, T) -> (B, C_out, T / stride); the 2-D SE gate sees (B, C, 1, T)
        y = self.se(self.body(x).unsqueeze(2)).squeeze(2)
        return self.relu(y + self.shortcut(x))


class SEResNet1d(nn.Module):
    """A 1-D SE-ResNet over time with EEG channels as input channels: each stage halves time, then a global average
    and a linear classifier, so any window length works."""

    def __init__(self, n_channels: int, n_classes: int, widths: tuple[int, ...] = (32, 64, 128),
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(n_channels, widths[0], 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm1d(widths[0]), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(SEBlock1d(a, b, 2) for a, b in zip((widths[0], *widths), widths, strict=False)))
        self.classify = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, channels, samples) -> (B, width, samples / 2^(stages+1)) -> mean over time -> (B, classes)
        return self.classify(self.blocks(self.stem(x)).mean(dim=-1))


@register_model(task="eeg")
def eegnet(n_channels: int, n_samples: int, n_classes: int, sfreq: float, dropout: float = 0.25) -> EEGNet:
    """EEGNet-8,2 with the paper's kernel lengths in seconds (eeg.model default)."""
    return EEGNet(n_channels, n_samples, n_classes, sfreq, dropout=dropout)


@register_model(task="eeg")
def se_resnet1d(n_channels: int, n_samples: int, n_classes: int, sfreq: float, dropout: float = 0.25) -> SEResNet1d:
    """A 1-D SE-ResNet of three stages (32, 64, 128 channels); any window length and rate work."""
    return SEResNet1d(n_channels, n_classes, dropout=dropout)
