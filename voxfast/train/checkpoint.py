"""Atomic checkpoint files: a run killed mid-write never leaves a truncated checkpoint behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from voxfast.errors import VoxfastError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VoxfastError(f"checkpoint not found: {path} (pass a .pt file from a run's checkpoints/ folder)")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise VoxfastError(f"cannot load checkpoint {path}: {exc} (the file is damaged; use an older one)") from exc
