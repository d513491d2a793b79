"""SpeechBrain's ECAPA-TDNN (``speechbrain.lobes.models.ECAPA_TDNN``), so its published models run in voxfast.

``voxfast import speechbrain`` converts ``spkrec-ecapa-voxceleb`` into this model; it also trains like any other
registered embedder. It is a module of its own, not a setting of ``voxfast.models.ecapa``, because the maths
differs where an imported checkpoint would notice:

- every convolution pads "same" by reflection (SpeechBrain's ``Conv1d`` default), not with zeros, so the edge frames
  of each layer differ (the TDNN stem with k=5 and the dilated Res2 convolutions with k=3, d=2..4);
- the multi-layer aggregation is 3 x C wide (3072 for C=1024), where voxfast's ``ecapa_tdnn_c1024`` keeps 1536;
- the attentive pooling floors variances at 1e-12 (voxfast's ECAPA: 1e-5, which changes the std of near-constant
  channels);
- the embedding layer is a 1x1 ``Conv1d`` over the pooled (B, 2C, 1) statistics (same maths as a linear layer, kept
  as a convolution so its weight has SpeechBrain's shape and the importer's shape check covers it).

Module names mirror SpeechBrain's (``blocks.0`` is the stem, ``blocks.1-3`` the SE-Res2Net blocks, ``mfa``, ``asp``,
``asp_bn``, ``fc``) less its wrapper modules: SpeechBrain's ``Conv1d`` and ``BatchNorm1d`` hold a torch module named
``conv`` / ``norm``, so its ``blocks.0.conv.conv.weight`` is ``blocks.0.conv.weight`` here. The maths is written out
here rather than borrowed from ``voxfast.models.ecapa`` so that an edit made there for WeSpeaker's ECAPA cannot
change what an imported SpeechBrain model computes.

SpeechBrain masks padded frames by relative lengths in its SE means and pooling; voxfast gives a model whole
utterances or equal-length crops, i.e. every relative length 1.0, which is what this forward computes.
"""

from __future__ import annotations

import torch
from torch import nn

from voxfast.audio.frontends_speechbrain import SpeechBrainFbank
from voxfast.models.registry import register_model

POOLINGS = ("ecapa",)


class TDNNBlock(nn.Module):
    """Conv1d ("same" reflect padding) -> ReLU -> BN, SpeechBrain's ``TDNNBlock`` (its dropout is 0)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"TDNNBlock: kernel_size must be odd for 'same' padding, got {kernel_size}")
        pad = dilation * (kernel_size - 1) // 2
        # a 1x1 conv pads nothing: "zeros" mode skips the copy that an empty reflection pad still makes
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation, padding=pad,
                              padding_mode="reflect" if pad else "zeros")
        self.activation = nn.ReLU()
        self.norm = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, in_ch, T) -> (B, out_ch, T)
        return self.norm(self.activation(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Res2Net over `scale` channel groups: group 0 passes, group i>0 is convolved after adding group i-1's output."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> scale x (B, C/scale, T) -> (B, C, T); a loop over channel groups, never over time
        groups = torch.chunk(x, self.scale, dim=1)
        outs = [groups[0]]
        y = groups[0]
        for i, block in enumerate(self.blocks, start=1):
            y = block(groups[i]) if i == 1 else block(groups[i] + y)
            outs.append(y)
        return torch.cat(outs, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation: channels rescaled by a gate from their mean over the utterance."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, se_channels, 1)
        self.conv2 = nn.Conv1d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> gate (B, C, 1) -> (B, C, T)
        s = torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))
        return torch.sigmoid(self.conv2(s)) * x


class SERes2NetBlock(nn.Module):
    """1x1 TDNN, dilated Res2Net, 1x1 TDNN, SE, plus the identity (in and out widths are equal: no shortcut conv)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_channels: int) -> None:
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, 1)
        self.res2net_block = Res2NetBlock(channels, kernel_size, dilation, scale)
        self.tdnn2 = TDNNBlock(channels, channels, 1)
        self.se_block = SEBlock(channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, C, T)
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


class AttentiveStatisticsPooling(nn.Module):
    """SpeechBrain's attentive statistics pooling with global context: (B, C, T) -> (B, 2C).

    The attention sees each frame beside the utterance's mean and std, scores = conv(tanh(TDNN([h; mean; std]))) are
    one softmax over time per channel, and the output is the weighted mean and std. Variances are floored at 1e-12
    as SpeechBrain's; the statistics are taken in at least float32 (under autocast, fp16/bf16 variances lose the
    small differences that carry speaker information).
    """

    def __init__(self, channels: int, attention_channels: int = 128, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        self.tdnn = TDNNBlock(3 * channels, attention_channels, 1)
        self.tanh = nn.Tanh()
        self.conv = nn.Conv1d(attention_channels, channels, 1)
        self.out_dim = 2 * channels

    def _stats(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, C, T), w (B, C|1, T) summing to 1 over T -> mean, std (B, C)
        mean = (w * x).sum(dim=2)
        var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
        return mean, var.clamp(min=self.eps).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, 2C)
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        frames = x.shape[-1]
        mean, std = self._stats(xs, torch.full_like(xs[:, :1], 1.0 / frames))  # (B, C) each
        ctx = torch.cat([xs, mean.unsqueeze(2).expand_as(xs), std.unsqueeze(2).expand_as(xs)], dim=1)  # (B, 3C, T)
        scores = self.conv(self.tanh(self.tdnn(ctx.to(x.dtype))))  # (B, C, T)
        mean, std = self._stats(xs, torch.softmax(scores.to(xs.dtype), dim=2))
        return torch.cat([mean, std], dim=1)


class SpeechBrainECAPA(nn.Module):
    """Waveform in, embedding out: SpeechBrain's Fbank + sentence mean norm, ECAPA-TDNN, pooling, BN, 1x1 conv.

    SpeechBrain's ``channels=[C, C, C, C, mfa]``, ``kernel_sizes=[5, 3, 3, 3, 1]``, ``dilations=[1, 2, 3, 4, 1]``.
    `front` is a parameter-free (B, T) -> (B, n_mels, frames) module like every voxfast embedder's.
    """

    def __init__(
        self,
        channels: int = 1024,
        n_mels: int = 80,
        embed_dim: int = 192,
        pooling: str = "ecapa",
        mfa_channels: int = 3072,
        scale: int = 8,
        se_channels: int = 128,
        attention_channels: int = 128,
        dilations: tuple[int, ...] = (2, 3, 4),
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} for SpeechBrain's ECAPA-TDNN; available: "
                             f"{', '.join(POOLINGS)}")
        self.front: nn.Module = SpeechBrainFbank(n_mels)
        self.blocks = nn.ModuleList([TDNNBlock(n_mels, channels, 5)])
        self.blocks.extend(SERes2NetBlock(channels, 3, d, scale, se_channels) for d in dilations)
        self.mfa = TDNNBlock(channels * len(dilations), mfa_channels, 1)
        self.asp = AttentiveStatisticsPooling(mfa_channels, attention_channels)
        self.asp_bn = nn.BatchNorm1d(self.asp.out_dim)
        self.fc = nn.Conv1d(self.asp.out_dim, embed_dim, 1)
        self.embed_dim = embed_dim

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, n_mels, frames)
        x = self.blocks[0](self.front(wave))  # (B, C, frames)
        outs = []
        for block in self.blocks[1:]:
            x = block(x)  # (B, C, frames)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))  # (B, 3C, frames) -> (B, mfa, frames)
        x = self.asp_bn(self.asp(x))  # (B, 2 mfa)
        return self.fc(x.unsqueeze(2)).squeeze(2)  # (B, embed_dim)


@register_model
def ecapa_tdnn_sb(n_mels: int = 80, embed_dim: int = 192, pooling: str = "ecapa") -> SpeechBrainECAPA:
    """SpeechBrain's ECAPA-TDNN as published in spkrec-ecapa-voxceleb: C=1024, 3072-wide MFA (20.8 M parameters)."""
    return SpeechBrainECAPA(1024, n_mels, embed_dim, pooling)
