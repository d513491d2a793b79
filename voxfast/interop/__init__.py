"""Published speaker models as voxfast checkpoints: voxceleb_trainer, WeSpeaker and SpeechBrain.

`voxfast import FORMAT SRC --out CKPT` reads a checkpoint of another toolkit, maps its tensors onto the voxfast
model of the same architecture, and writes a normal voxfast checkpoint (config, embedder weights, no training
head). Each format module exposes ``convert(src, config) -> Imported``: the voxfast config whose model (and front
end: features decide the embedding as much as weights do) reproduces the source, and the embedder's state dict
under voxfast's names. This module checks that state against the built model key by key and shape by shape,
so nothing is ever loaded partially, and writes the checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from voxfast.config import Config, config_to_dict
from voxfast.errors import VoxfastError
from voxfast.interop.common import load_exact
from voxfast.tasks.speaker import build_embedder
from voxfast.train.checkpoint import save_checkpoint

# format name -> module with convert(); imported on use, so one format's optional needs never load for another
FORMATS = {
    "vct": "voxfast.interop.vct",
    "wespeaker": "voxfast.interop.wespeaker",
    "speechbrain": "voxfast.interop.speechbrain",
}


@dataclass
class Imported:
    """What a format's converter returns."""

    config: Config  # model (name, n_mels, embed_dim, pooling, frontend) and data.sample_rate of the source
    state: dict[str, torch.Tensor]  # the embedder's state dict under voxfast's names
    files: list[Path]  # the files read, recorded with their sha256 in the checkpoint
    description: str  # e.g. "WeSpeaker ResNet34 (config.yaml: model ResNet34, embed_dim 256)"
    notes: list[str] = field(default_factory=list)  # what the source did that voxfast does differently, if any


@dataclass
class ImportSummary:
    out: Path
    description: str
    tensors: int
    parameters: int
    notes: list[str]


def import_model(fmt: str, src: str | Path, out: str | Path, config: str | Path | None = None) -> ImportSummary:
    """Convert checkpoint `src` of toolkit `fmt` (with its config file `config` where the format has one) into the
    voxfast checkpoint `out`."""
    if fmt not in FORMATS:
        raise VoxfastError(f"unknown import format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src = Path(src)
    if not src.exists():
        raise VoxfastError(f"{src}: not found (pass the {fmt} checkpoint file or its folder)")
    converter = importlib.import_module(FORMATS[fmt])
    imported: Imported = converter.convert(src, None if config is None else Path(config))
    embedder = build_embedder(imported.config)
    load_exact(embedder, imported.state, src)
    state: dict[str, Any] = {
        "task": "speaker",
        "config": config_to_dict(imported.config),
        "model": {f"embedder.{k}": v.detach().clone().contiguous() for k, v in embedder.state_dict().items()},
        "imported": {"format": fmt, "description": imported.description,
                     "files": {str(f.resolve()): _sha256(f) for f in imported.files}, "notes": list(imported.notes)},
    }
    save_checkpoint(state, out)
    n_params = sum(p.numel() for p in embedder.parameters())
    return ImportSummary(Path(out), imported.description, len(imported.state), n_params, imported.notes)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
