"""SE-ResNet speaker-embedding networks over a log-mel front end, built by one shared builder.

Each registered variant is a few lines that fixes depths, widths and the stem; the builder owns the
structure, so a fix or speed-up lands in every variant at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from voxfast.audio.features import LogMel
from voxfast.models.pooling import create_pooling
from voxfast.models.registry import register_model


class SqueezeExcite(nn.Module):
    """Channel attention: rescale channels by a gate computed from their global average."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SEBasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, an optional SE gate and a projection shortcut when needed."""

    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int], se: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
            SqueezeExcite(out_ch) if se else nn.Identity(),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != (1, 1) or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class SEResNet(nn.Module):
    """Waveform in, speaker embedding out: front end, 2-D SE-ResNet, temporal pooling, linear projection."""

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int],
        strides: Sequence[tuple[int, int]],
        stem_kernel: int,
        stem_stride: tuple[int, int],
        n_mels: int = 40,
        embed_dim: int = 256,
        pooling: str = "tstp",
        se: bool = True,
    ) -> None:
        super().__init__()
        self.front = LogMel(n_mels)
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for depth, width, stride in zip(layers, widths, strides, strict=True):
            for i in range(depth):
                blocks.append(SEBasicBlock(in_ch, width, stride if i == 0 else (1, 1), se))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        freq = n_mels
        for s in [stem_stride, *strides]:
            freq = (freq + s[0] - 1) // s[0]
        self.pool = create_pooling(pooling, in_ch * freq)
        self.embed = nn.Linear(self.pool.out_dim, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames) -> (B, 1, F, frames)
        x = self.front(wave).unsqueeze(1)
        x = self.blocks(self.stem(x))  # (B, C, F', T')
        x = x.flatten(1, 2)  # (B, C*F', T')
        return self.embed(self.pool(x))  # (B, embed_dim)


@register_model
def resnetse_demo(n_mels: int = 40, embed_dim: int = 256, pooling: str = "tstp") -> SEResNet:
    """A compact SE-ResNet (one block per stage) that trains to a useful EER on 2 CPU cores in minutes."""
    return SEResNet([1, 1, 1, 1], [16, 32, 64, 128], [(1, 1), (2, 2), (2, 2), (2, 2)], 3, (2, 1),
                    n_mels, embed_dim, pooling)


@register_model
def resnetse34l(n_mels: int = 40, embed_dim: int = 512, pooling: str = "sap") -> SEResNet:
    """voxceleb_trainer's "Fast ResNet-34" layout: [3,4,6,3] blocks, widths 16-128, 7x7 stride-(2,1) stem."""
    return SEResNet([3, 4, 6, 3], [16, 32, 64, 128], [(1, 1), (2, 2), (2, 2), (1, 1)], 7, (2, 1),
                    n_mels, embed_dim, pooling)
