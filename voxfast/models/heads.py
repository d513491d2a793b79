"""Classification heads used only for training; kept apart so the embedding network exports alone.

All margin heads compute cosines in float32: under fp16 autocast the margin arithmetic near
cos = ±1 loses the precision that makes the margin meaningful.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from voxfast.errors import VoxfastError


class SoftmaxHead(nn.Module):
    """Plain linear classifier with cross-entropy."""

    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, n_classes)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, D), (B,) -> loss (), logits (B, n_classes)
        logits = self.fc(emb.float())
        return F.cross_entropy(logits, labels), logits


class MarginHead(nn.Module):
    """Cosine classifier with an additive (AM-softmax) or angular (AAM / ArcFace) margin on the target.

    The margin is an attribute so that a schedule can raise it during training.
    """

    def __init__(self, embed_dim: int, n_classes: int, margin: float, scale: float, angular: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, embed_dim))
        nn.init.xavier_normal_(self.weight)
        self.margin = margin
        self.scale = scale
        self.angular = angular

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, D), (B,) -> loss (), logits (B, n_classes)
        cosine = F.linear(F.normalize(emb.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)
        target = cosine.gather(1, labels[:, None])
        if self.angular:
            m = self.margin
            sine = torch.sqrt((1.0 - target * target).clamp(min=0.0))
            phi = target * math.cos(m) - sine * math.sin(m)  # cos(theta + m)
            # Past theta = pi - m, cos(theta + m) stops decreasing; use the linear fallback of ArcFace.
            phi = torch.where(target > math.cos(math.pi - m), phi, target - math.sin(math.pi - m) * m)
        else:
            phi = target - self.margin
        logits = cosine.scatter(1, labels[:, None], phi) * self.scale
        return F.cross_entropy(logits, labels), logits


def create_head(name: str, embed_dim: int, n_classes: int, margin: float = 0.2, scale: float = 30.0) -> nn.Module:
    if name == "softmax":
        return SoftmaxHead(embed_dim, n_classes)
    if name in ("am", "aam"):
        return MarginHead(embed_dim, n_classes, margin, scale, angular=name == "aam")
    raise VoxfastError(f"unknown head {name!r}; available: softmax, am, aam (set head.name)")
