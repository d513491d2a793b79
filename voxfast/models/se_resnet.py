"""SE-ResNet speaker-embedding networks over a log-mel front end, built by one shared builder.

Each registered variant is a few lines that fixes depths, widths and the stem; the builder owns the
structure, so a fix or speed-up lands in every variant at once. The published layouts differ in small
ways (activation before or after batch norm, a biased stem, averaging out frequency before pooling,
SE bottleneck size); those are builder switches, not separate classes, so parameter counts and
behaviour can match the references without forking the code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from voxfast.audio.features import KaldiFbank, LogMel
from voxfast.models.pooling import create_pooling
from voxfast.models.registry import register_model


def _conv_norm_act(conv: nn.Conv2d, channels: int, act_first: bool) -> list[nn.Module]:
    """Conv, batch norm, ReLU, or conv, ReLU, batch norm (voxceleb_trainer's order) when `act_first`."""
    norm, act = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
    return [conv, act, norm] if act_first else [conv, norm, act]


class SqueezeExcite(nn.Module):
    """Channel attention: rescale channels by a gate computed from their global average.

    The bottleneck is ``channels // reduction`` but at least `min_hidden`; voxceleb_trainer uses no floor
    (`min_hidden=1`), the demo keeps a floor of 4 so its 16-channel stage is not squeezed to 2 units.
    """

    def __init__(self, channels: int, reduction: int = 8, min_hidden: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, F, T) -> (B, C, F, T)
        return x * self.gate(x)


class SEBasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, an optional SE gate and a projection shortcut when needed."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: tuple[int, int],
        se: bool,
        se_reduction: int = 8,
        se_min_hidden: int = 4,
        act_first: bool = False,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm_act(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), out_ch, act_first),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
            SqueezeExcite(out_ch, se_reduction, se_min_hidden) if se else nn.Identity(),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != (1, 1) or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C_in, F, T) -> (B, C_out, F / s_f, T / s_t)
        return self.relu(self.body(x) + self.shortcut(x))


class SEResNet(nn.Module):
    """Waveform in, speaker embedding out: front end, 2-D SE-ResNet, temporal pooling, linear projection.

    `front` maps (B, T) waveforms to (B, n_mels, frames) features and defaults to ``LogMel(n_mels)``; it is
    an argument (and the attribute ``front``) so another parameter-free front end can be swapped in.
    `freq_mean` averages the last stage over frequency before pooling (ResNetSE34L: a 128-d frame vector
    instead of 1280-d, which keeps the "fast" model's pooling and projection small); otherwise channels and
    the remaining frequency bins are flattened into one frame vector (ResNetSE34V2, WeSpeaker).
    `pool_options` go to the pooling's constructor (WeSpeaker's ResNet34: TSTP with WeSpeaker's exact std).
    """

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
        *,
        se_reduction: int = 8,
        se_min_hidden: int = 4,
        act_first: bool = False,
        stem_act_first: bool = False,
        stem_bias: bool = False,
        freq_mean: bool = False,
        front: nn.Module | None = None,
        pool_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.front = front if front is not None else LogMel(n_mels)
        stem_conv = nn.Conv2d(1, widths[0], stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=stem_bias)
        self.stem = nn.Sequential(*_conv_norm_act(stem_conv, widths[0], stem_act_first))
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for depth, width, stride in zip(layers, widths, strides, strict=True):
            for i in range(depth):
                blocks.append(SEBasicBlock(in_ch, width, stride if i == 0 else (1, 1), se,
                                           se_reduction, se_min_hidden, act_first))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        freq = n_mels
        for s in [stem_stride, *strides]:
            freq = (freq + s[0] - 1) // s[0]  # every stride-s conv here maps F bins to ceil(F / s)
        self.freq_mean = freq_mean
        self.pool = create_pooling(pooling, in_ch if freq_mean else in_ch * freq, **(pool_options or {}))
        self.embed = nn.Linear(self.pool.out_dim, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames) -> (B, 1, F, frames)
        x = self.front(wave).unsqueeze(1)
        x = self.blocks(self.stem(x))  # (B, C, F', T')
        x = x.mean(dim=2) if self.freq_mean else x.flatten(1, 2)  # (B, C, T') or (B, C*F', T')
        return self.embed(self.pool(x))  # (B, embed_dim)


@register_model
def resnetse_demo(n_mels: int = 40, embed_dim: int = 256, pooling: str = "tstp") -> SEResNet:
    """A compact SE-ResNet (one block per stage), small enough to train to a useful EER on a CPU (see the README)."""
    return SEResNet([1, 1, 1, 1], [16, 32, 64, 128], [(1, 1), (2, 2), (2, 2), (2, 2)], 3, (2, 1),
                    n_mels, embed_dim, pooling)


@register_model
def resnetse34l(n_mels: int = 40, embed_dim: int = 512, pooling: str = "sap") -> SEResNet:
    """voxceleb_trainer's "Fast ResNet-34" (ResNetSE34L, 1.4 M): half-width SE blocks, frequency averaged."""
    return SEResNet([3, 4, 6, 3], [16, 32, 64, 128], [(1, 1), (2, 2), (2, 2), (1, 1)], 7, (2, 1),
                    n_mels, embed_dim, pooling, se_min_hidden=1, act_first=True, freq_mean=True)


@register_model
def resnetse34v2(n_mels: int = 64, embed_dim: int = 512, pooling: str = "asp") -> SEResNet:
    """voxceleb_trainer's ResNetSE34V2 ("H/ASP", 8.0 M): full-width SE blocks, 3x3 biased stem, ASP."""
    return SEResNet([3, 4, 6, 3], [32, 64, 128, 256], [(1, 1), (2, 2), (2, 2), (2, 2)], 3, (1, 1),
                    n_mels, embed_dim, pooling, se_min_hidden=1, act_first=True, stem_act_first=True,
                    stem_bias=True)


@register_model
def resnet34(n_mels: int = 80, embed_dim: int = 256, pooling: str = "tstp") -> SEResNet:
    """WeSpeaker's ResNet34 (6.6 M): plain basic blocks, 3x3 stem, 80-bin Kaldi fbank, TSTP, one linear embedding.

    TSTP takes WeSpeaker's standard deviation (unbiased, + 1e-7), so `voxfast import wespeaker` reproduces the
    published ResNet34 models exactly.
    """
    return SEResNet([3, 4, 6, 3], [32, 64, 128, 256], [(1, 1), (2, 2), (2, 2), (2, 2)], 3, (1, 1),
                    n_mels, embed_dim, pooling, se=False, front=KaldiFbank(n_mels),
                    pool_options={"wespeaker": True} if pooling == "tstp" else None)


@register_model
def se_resnet34(n_mels: int = 80, embed_dim: int = 256, pooling: str = "tstp") -> SEResNet:
    """WeSpeaker's ResNet34 with an SE gate (reduction 8) in every block: channel attention for ~+0.1 M."""
    return SEResNet([3, 4, 6, 3], [32, 64, 128, 256], [(1, 1), (2, 2), (2, 2), (2, 2)], 3, (1, 1),
                    n_mels, embed_dim, pooling, se_min_hidden=1, front=KaldiFbank(n_mels))
