"""The Task protocol: everything the trainer needs to know about a problem, and nothing more.

The trainer owns the optimisation loop (precision, accumulation, clipping, checkpoints, logging);
a task owns the model, the data and what a batch means. Speaker, image and EEG tasks implement it,
so every speed switch of the loop is written once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class Task(Protocol):
    def build_model(self) -> nn.Module:
        """The module that is optimised (for a speaker task: embedding network plus margin head)."""
        ...

    def train_batches(self, epoch: int) -> Iterable[dict[str, Any]]:
        """The micro-batches of one epoch; `len()` must be defined for progress and scheduling."""
        ...

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """Move the batch to `device`, run the model and return {"loss", "output", "n"} (n = samples)."""
        ...

    def on_step(self, model: nn.Module, progress: float) -> dict[str, float]:
        """Before each optimizer step, at `progress` epochs: set schedules (e.g. a margin); values are logged.

        Optional: the trainer skips tasks that do not define it.
        """
        ...

    def evaluate(self, model: nn.Module, device: torch.device, out_dir: Path) -> dict[str, float]:
        """Validation figures (for a speaker task: EER and minDCF on the trial list)."""
        ...
