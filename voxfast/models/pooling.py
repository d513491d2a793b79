"""Temporal pooling: frame-level features (B, C, T) to one utterance-level vector."""

from __future__ import annotations

import torch
from torch import nn


class TSTP(nn.Module):
    """Temporal statistics pooling: mean and standard deviation over time (WeSpeaker's TSTP)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, T) -> (B, 2C)
        mean = x.mean(dim=-1)
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


def create_pooling(name: str, in_dim: int) -> nn.Module:
    if name == "tstp":
        return TSTP(in_dim)
    if name == "sap":
        return SAP(in_dim)
    raise ValueError(f"unknown pooling {name!r}; available: sap, tstp")  # config validation catches this first
