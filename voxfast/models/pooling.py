"""Temporal pooling: frame-level features (B, C, T) to one utterance-level vector.

Every pooling exposes ``out_dim`` so the embedding layer after it can be sized without a dry run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _weighted_stats(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Weighted mean and standard deviation over time, concatenated: (B, C, T), (B, C|1, T) -> (B, 2C).

    The variance is the weighted mean of squared deviations, which equals the references'
    ``sum(w x^2) - mu^2`` but cannot cancel catastrophically (and go negative) under fp16/bf16.
    """
    mean = (x * w).sum(dim=-1)  # (B, C)
    var = ((x - mean.unsqueeze(-1)).pow(2) * w).sum(dim=-1)  # (B, C)
    return torch.cat([mean, var.clamp(min=eps).sqrt()], dim=1)


def _unbiased_var(x: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over time, (B, C, T) -> (B, C), as WeSpeaker's ``torch.var``, but 0 for a single frame
    (where it divides by zero). The frame count is a tensor, so a traced export keeps it a function of the input;
    it is counted in float32, so fp16 autocast cannot overflow it on long inputs."""
    frames = torch.ones_like(x[:1, :1], dtype=torch.float32).sum(dim=-1)  # (1, 1): T
    return x.var(dim=-1, unbiased=False) * (frames / (frames - 1).clamp(min=1)).to(x.dtype)


class TSTP(nn.Module):
    """Temporal statistics pooling: mean and standard deviation over time (x-vector, WeSpeaker's TSTP).

    `wespeaker` selects WeSpeaker's exact standard deviation, sqrt(unbiased variance + 1e-7), which imported
    WeSpeaker models need: the n / (n - 1) factor depends on the utterance's length, so no weight can absorb it
    (it still gives a finite value for a single frame, where WeSpeaker divides by zero); voxfast's resnet34 uses it.
    The default, sqrt(max(biased variance, 1e-5)), is what voxfast's other models were trained with.
    """

    def __init__(self, in_dim: int, wespeaker: bool = False) -> None:
        super().__init__()
        self.out_dim = 2 * in_dim
        self.wespeaker = wespeaker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, 2C)
        mean = x.mean(dim=-1)
        if self.wespeaker:
            std = torch.sqrt(_unbiased_var(x) + 1e-7)
        else:
            std = torch.sqrt(x.var(dim=-1, unbiased=False).clamp(min=1e-5))
        return torch.cat([mean, std], dim=1)


class SAP(nn.Module):
    """Self-attentive pooling (voxceleb_trainer's SAP): a learned weighted mean over time."""

    def __init__(self, in_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(in_dim, hidden, 1), nn.Tanh(), nn.Conv1d(hidden, 1, 1))
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, C)
        w = torch.softmax(self.attention(x), dim=-1)  # (B, 1, T)
        return (x * w).sum(dim=-1)


class ASP(nn.Module):
    """Attentive statistics pooling as voxceleb_trainer's ResNetSE34V2 'ASP'.

    Each channel gets its own attention over time (1x1 conv, ReLU, batch norm, 1x1 conv, softmax over
    time), so channels that are informative in different frames are summarised by different frames; the
    weighted standard deviation keeps the spread that a weighted mean alone throws away.
    """

    def __init__(self, in_dim: int, hidden: int = 128, eps: float = 1e-5) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Conv1d(in_dim, hidden, 1), nn.ReLU(), nn.BatchNorm1d(hidden), nn.Conv1d(hidden, in_dim, 1),
        )
        self.eps = eps
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, 2C)
        w = torch.softmax(self.attention(x), dim=-1)  # (B, C, T), sums to 1 over T
        return _weighted_stats(x, w, self.eps)


class ASTP(nn.Module):
    """Attentive statistics pooling with global context (WeSpeaker's ASTP, ``global_context_att=True``).

    The attention sees each frame next to the utterance's mean and std (broadcast over time), so a frame
    is weighted by how it stands out from the whole utterance rather than by its absolute value. Tanh, not
    ReLU, in the bottleneck: WeSpeaker reports that ReLU here is hard to converge.
    """

    def __init__(self, in_dim: int, hidden: int = 128, eps: float = 1e-10) -> None:
        super().__init__()
        self.linear1 = nn.Conv1d(3 * in_dim, hidden, 1)
        self.linear2 = nn.Conv1d(hidden, in_dim, 1)
        self.eps = eps
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, 2C)
        var = _unbiased_var(x).unsqueeze(-1)  # (B, C, 1): unbiased as WeSpeaker, finite for a single frame
        mean = x.mean(dim=-1, keepdim=True).expand_as(x)  # (B, C, T)
        std = torch.sqrt(var + self.eps).expand_as(x)  # (B, C, T)
        ctx = torch.cat([x, mean, std], dim=1)  # (B, 3C, T)
        w = torch.softmax(self.linear2(torch.tanh(self.linear1(ctx))), dim=-1)  # (B, C, T)
        return _weighted_stats(x, w, self.eps)


_POOLINGS: dict[str, type[nn.Module]] = {"asp": ASP, "astp": ASTP, "sap": SAP, "tstp": TSTP}


def create_pooling(name: str, in_dim: int, **options: Any) -> nn.Module:
    """Build a pooling by config name for `in_dim` input channels (`options`: that pooling's own keyword
    arguments, e.g. TSTP's ``wespeaker``); an unknown name lists the valid ones."""
    if name not in _POOLINGS:
        # config validation catches this first; this guards direct callers
        raise ValueError(f"unknown pooling {name!r}; available: {', '.join(sorted(_POOLINGS))}")
    return _POOLINGS[name](in_dim, **options)
