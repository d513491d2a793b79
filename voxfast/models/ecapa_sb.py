"""SpeechBrain's ECAPA-TDNN (``speechbrain.lobes.models.ECAPA_TDNN``), so its published models run in voxfast.

``voxfast import speechbrain`` converts ``spkrec-ecapa-voxceleb`` into this model; it also trains like any other
registered embedder. It is ``voxfast.models.ecapa.ECAPATDNN`` built with SpeechBrain's settings, so the TDNN,
Res2, squeeze-excitation and SE-Res2 blocks and the context attentive statistics pooling are that module's
classes (their maths is SpeechBrain's: Conv1d -> ReLU -> BN, a mean over time -> conv -> ReLU -> conv -> sigmoid
gate, the pooling's attention over [h; mean; std]). Where SpeechBrain differs, and an imported checkpoint would
notice, it is a setting or, for the last layer, an override here:

- every convolution pads "same" by reflection (SpeechBrain's ``Conv1d`` default), not with zeros, so the edge frames
  of the TDNN stem (k=5) and of the dilated Res2 convolutions (k=3, d=2..4) differ: ``padding_mode="reflect"``;
- the multi-layer aggregation is 3 x C wide (3072 for C=1024), where voxfast's ``ecapa_tdnn_c1024`` keeps 1536:
  ``mfa_channels``;
- the attentive pooling floors variances at 1e-12 (voxfast's ECAPA: 1e-5, which changes the std of near-constant
  channels): ``pool_eps``;
- the front end is SpeechBrain's Fbank with sentence mean normalisation (``SpeechBrainFbank``);
- the embedding layer is a 1x1 ``Conv1d`` over the pooled (B, 2C, 1) statistics (same maths as a linear layer, kept
  as a convolution so its weight has SpeechBrain's shape and the importer's shape check covers it).

Tensor names are therefore ``ECAPATDNN``'s (``stem``, ``blocks.0-2.body.*``, ``mfa``, ``pool``, ``pool_bn``,
``embed``); ``voxfast.interop.speechbrain`` maps SpeechBrain's names (``blocks.0`` the stem, ``blocks.1-3`` the
SE-Res2Net blocks, ``asp``, ``asp_bn``, ``fc``, each torch module inside a ``conv`` / ``norm`` wrapper) onto them.

SpeechBrain masks padded frames by relative lengths in its SE means and pooling; voxfast gives a model whole
utterances or equal-length crops, i.e. every relative length 1.0, which is what this forward computes.
"""

from __future__ import annotations

import torch
from torch import nn

from voxfast.audio.frontends_speechbrain import SpeechBrainFbank
from voxfast.models.ecapa import ECAPATDNN
from voxfast.models.registry import register_model

POOLINGS = ("ecapa",)


class SpeechBrainECAPA(ECAPATDNN):
    """Waveform in, embedding out: SpeechBrain's Fbank + sentence mean norm, ECAPA-TDNN, pooling, BN, 1x1 conv.

    SpeechBrain's ``channels=[C, C, C, C, mfa]``, ``kernel_sizes=[5, 3, 3, 3, 1]``, ``dilations=[1, 2, 3, 4, 1]``,
    ``res2net_scale=8``, ``se_channels=128``, ``attention_channels=128`` (``ECAPATDNN``'s defaults).
    `front` is a parameter-free (B, T) -> (B, n_mels, frames) module like every voxfast embedder's.
    """

    def __init__(self, channels: int = 1024, n_mels: int = 80, embed_dim: int = 192, pooling: str = "ecapa",
                 mfa_channels: int = 3072) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} for SpeechBrain's ECAPA-TDNN; available: "
                             f"{', '.join(POOLINGS)}")
        super().__init__(channels, n_mels, embed_dim, pooling, mfa_channels, padding_mode="reflect", pool_eps=1e-12,
                         front=SpeechBrainFbank(n_mels))
        self.embed = nn.Conv1d(self.pool.out_dim, embed_dim, 1)  # SpeechBrain's fc: (embed_dim, 2 mfa, 1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # (B, T) -> (B, 2 mfa, 1) -> (B, embed_dim)
        return self.embed(self.pooled(wave).unsqueeze(2)).squeeze(2)


@register_model
def ecapa_tdnn_sb(n_mels: int = 80, embed_dim: int = 192, pooling: str = "ecapa") -> SpeechBrainECAPA:
    """SpeechBrain's ECAPA-TDNN as published in spkrec-ecapa-voxceleb: C=1024, 3072-wide MFA (20.8 M parameters)."""
    return SpeechBrainECAPA(1024, n_mels, embed_dim, pooling)
