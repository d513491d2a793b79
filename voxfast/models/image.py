"""Image classifiers (`voxfast train --task image`), built from the speaker models' SE basic blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from voxfast.models.registry import register_model
from voxfast.models.se_resnet import SEBasicBlock


class ImageSEResNet(nn.Module):
    """Stem conv, three stages of the speaker models' SE basic blocks (widths w, 2w, 4w), average pool, linear."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 32, blocks: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        in_ch = width
        for stage, depth in enumerate(blocks):
            out_ch = width * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(SEBasicBlock(in_ch, out_ch, (stride, stride), se=True))
                in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) normalised images -> (B, n_classes) logits
        return self.classifier(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@register_model(task="image")
def se_resnet_image(in_channels: int, n_classes: int, width: int = 32, blocks: Sequence[int] = (1, 1, 1)
                    ) -> ImageSEResNet:
    """A small SE-ResNet for CIFAR-sized images (image.model)."""
    return ImageSEResNet(in_channels, n_classes, width, blocks)
