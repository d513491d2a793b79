"""ECAPA-TDNN (Desplanques et al., 2020) speaker-embedding networks, built by one shared builder.

The layout follows SpeechBrain's ``ECAPA_TDNN`` with ``channels=[C, C, C, C, 1536]``: a k=5 TDNN stem, three
SE-Res2Blocks (k=3, dilations 2/3/4, scale 8, SE bottleneck 128), multi-layer feature aggregation to 1536
channels, channel- and context-dependent attentive statistics pooling (bottleneck 128), BN and a linear layer to
the embedding (no BN after it). Every conv is Conv1d -> ReLU -> BN, as in SpeechBrain and WeSpeaker. The MFA width
stays 1536 for C=1024 too, which is what gives the 14.65 M figure (WeSpeaker's 3*C would give 20.8 M).

The attentive pooling lives here rather than in ``voxfast.models.pooling`` because its attention sees the
utterance's global mean and std (the "context" of the paper) and predicts one weight per channel, so it is part
of this architecture, not a drop-in temporal pooling. ``pooling="astp"`` takes WeSpeaker's variant of it instead
(``ECAPA_TDNN_GLOB_*``: no ReLU and BN in the attention, unbiased global std, eps 1e-7), which
`voxfast import wespeaker` needs to reproduce WeSpeaker's published ECAPA-TDNN models.

SpeechBrain's ECAPA-TDNN (``voxfast.models.ecapa_sb``) is built from these classes: their ``padding_mode``
("reflect", SpeechBrain's "same" padding) and the pooling's ``eps`` are its settings, and every default here is
voxfast's ECAPA (zero padding, eps 1e-5).
"""

from __future__ import annotations

import torch
from torch import nn

from voxfast.audio.features import KaldiFbank
from voxfast.models.pooling import ASTP
from voxfast.models.registry import register_model

POOLINGS = ("ecapa", "astp")


class TDNNBlock(nn.Module):
    """Conv1d -> ReLU -> BN; "same" padding so every block keeps the frame count and residuals line up.

    `padding_mode` is torch's ("zeros", or "reflect" as SpeechBrain pads); a 1x1 conv pads nothing and stays
    "zeros" whatever is asked, because an empty reflection pad still copies its input.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"TDNNBlock: kernel_size must be odd for 'same' padding, got {kernel_size}")
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation, padding=pad,
                              padding_mode=padding_mode if pad else "zeros")
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, in_ch, T) -> (B, out_ch, T)
        return self.bn(self.relu(self.conv(x)))


class Res2Block(nn.Module):
    """Res2Net hierarchy over `scale` channel groups: many receptive fields in one layer for few parameters.

    Group 0 passes through; group i>0 is convolved after adding the previous group's output, so later groups
    see progressively wider context. The loop is over a fixed number of channel groups, never over time.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        self.scale = scale
        width = channels // scale
        self.convs = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation, padding_mode)
                                   for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> scale x (B, C/scale, T) -> (B, C, T)
        groups = torch.chunk(x, self.scale, dim=1)
        outs = [groups[0]]
        y = groups[0]
        for i, conv in enumerate(self.convs, start=1):
            y = conv(groups[i]) if i == 1 else conv(groups[i] + y)
            outs.append(y)
        return torch.cat(outs, dim=1)


class SEBlock1d(nn.Module):
    """Squeeze-excitation over time: rescale channels by a gate from their utterance mean (global context)."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Conv1d(channels, bottleneck, 1), nn.ReLU(inplace=True), nn.Conv1d(bottleneck, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> gate (B, C, 1) -> (B, C, T)
        return x * self.gate(x.mean(dim=-1, keepdim=True))


class SERes2Block(nn.Module):
    """1x1 TDNN, dilated Res2 block, 1x1 TDNN, SE gate, plus an identity residual (in and out widths are equal)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_bottleneck: int,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.body = nn.Sequential(
            TDNNBlock(channels, channels, 1),
            Res2Block(channels, kernel_size, dilation, scale, padding_mode),
            TDNNBlock(channels, channels, 1),
            SEBlock1d(channels, se_bottleneck),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, C, T)
        return x + self.body(x)


class ContextAttentiveStatsPool(nn.Module):
    """ECAPA's attentive statistics pooling: per-channel attention over time that also sees global statistics.

    For frames h_t (B, C, T), the attention input is [h_t; mean(h); std(h)] (B, 3C, T), so a frame's weight
    can depend on how it compares with the whole utterance (robust to noise/short segments). Scores
    e = W2 tanh(BN(ReLU(W1 . + b1))) + b2 are (B, C, T): one softmax over time per channel. The output is the
    weighted mean and weighted std, (B, 2C). Statistics are computed in at least float32 because variances of
    fp16/bf16 activations under autocast lose the small differences that carry speaker information.
    """

    def __init__(self, channels: int, bottleneck: int = 128, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.tdnn = TDNNBlock(3 * channels, bottleneck, 1)
        self.tanh = nn.Tanh()
        self.score = nn.Conv1d(bottleneck, channels, 1)
        self.out_dim = 2 * channels

    def _stats(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, C, T), w (B, C|1, T) summing to 1 over T -> mean, std (B, C, 1)
        mean = (w * x).sum(dim=-1, keepdim=True)
        var = (w * (x - mean).pow(2)).sum(dim=-1, keepdim=True)
        return mean, var.clamp(min=self.eps).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, 2C)
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        frames = x.shape[-1]
        uniform = torch.full_like(xs[:, :1], 1.0 / frames)  # (B, 1, T)
        g_mean, g_std = self._stats(xs, uniform)  # (B, C, 1) each
        ctx = torch.cat([xs, g_mean.expand_as(xs), g_std.expand_as(xs)], dim=1).to(x.dtype)  # (B, 3C, T)
        scores = self.score(self.tanh(self.tdnn(ctx)))  # (B, C, T)
        w = torch.softmax(scores.to(xs.dtype), dim=-1)  # (B, C, T), sums to 1 over T
        mean, std = self._stats(xs, w)
        return torch.cat([mean, std], dim=1).squeeze(-1)  # (B, 2C)


class ECAPATDNN(nn.Module):
    """Waveform in, speaker embedding out: front end, ECAPA-TDNN frame layers, attentive pooling, projection.

    `front` is a plain attribute holding a parameter-free (B, T) -> (B, n_mels, frames) module, so a different
    front end (e.g. Kaldi fbank) can be swapped in without touching the rest; `front` None is n_mels-bin Kaldi fbank.
    `padding_mode` pads the k=5 stem and the dilated Res2 convolutions ("zeros", or SpeechBrain's "reflect"),
    `pool_eps` floors the "ecapa" pooling's variances.
    """

    def __init__(
        self,
        channels: int,
        n_mels: int = 80,
        embed_dim: int = 192,
        pooling: str = "ecapa",
        mfa_channels: int = 1536,
        scale: int = 8,
        se_bottleneck: int = 128,
        attention_bottleneck: int = 128,
        dilations: tuple[int, ...] = (2, 3, 4),
        padding_mode: str = "zeros",
        pool_eps: float = 1e-5,
        front: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} for ECAPA-TDNN; available: {', '.join(POOLINGS)}")
        # 80-d fbank with CMN, as WeSpeaker's ECAPA recipes, unless another front end is given
        self.front: nn.Module = KaldiFbank(n_mels) if front is None else front
        self.stem = TDNNBlock(n_mels, channels, 5, padding_mode=padding_mode)
        self.blocks = nn.ModuleList(SERes2Block(channels, 3, d, scale, se_bottleneck, padding_mode) for d in dilations)
        self.mfa = TDNNBlock(channels * len(dilations), mfa_channels, 1)
        self.pool: nn.Module
        if pooling == "astp":  # WeSpeaker's ASTP with global context and its eps
            self.pool = ASTP(mfa_channels, attention_bottleneck, eps=1e-7)
        else:
            self.pool = ContextAttentiveStatsPool(mfa_channels, attention_bottleneck, pool_eps)
        self.pool_bn = nn.BatchNorm1d(self.pool.out_dim)
        self.embed: nn.Module = nn.Linear(self.pool.out_dim, embed_dim)
        self.embed_dim = embed_dim

    def pooled(self, wave: torch.Tensor) -> torch.Tensor:
        """Everything before the embedding layer: (B, T) -> normalised pooled statistics (B, 2 * mfa_channels)."""
        x = self.front(wave)  # (B, n_mels, frames)
        x = self.stem(x)  # (B, C, frames)
        outs = []
        for block in self.blocks:
            x = block(x)  # (B, C, frames)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))  # (B, 3C, frames) -> (B, mfa_channels, frames)
        return self.pool_bn(self.pool(x))  # (B, 2 * mfa_channels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, embed_dim)
        return self.embed(self.pooled(wave))


@register_model
def ecapa_tdnn(n_mels: int = 80, embed_dim: int = 192, pooling: str = "ecapa") -> ECAPATDNN:
    """ECAPA-TDNN with C=512 (6.19 M parameters): the paper's small setup, cheap enough for quick experiments."""
    return ECAPATDNN(512, n_mels, embed_dim, pooling)


@register_model
def ecapa_tdnn_c1024(n_mels: int = 80, embed_dim: int = 192, pooling: str = "ecapa") -> ECAPATDNN:
    """ECAPA-TDNN with C=1024 and a 1536-wide MFA (14.65 M parameters): the larger, more accurate setup."""
    return ECAPATDNN(1024, n_mels, embed_dim, pooling)
