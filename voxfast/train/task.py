"""The Task protocol: everything the trainer needs to know about a problem, and nothing more.

The trainer owns the optimisation loop (precision, accumulation, clipping, checkpoints, logging);
a task owns the model, the data and what a batch means. Speaker, image and EEG tasks implement it,
so every speed switch of the loop is written once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from voxfast.errors import ConfigError, VoxfastError


class Task(Protocol):
    """Subclass it explicitly: the members with a body are optional and their defaults are inherited.

    Writing a task means one module in `voxfast/tasks/` and one line in `voxfast.tasks.TASKS`.
    """

    name: ClassVar[str] = "task"  # the registry name, stored in checkpoints ("task") so loaders can check the kind
    # What best.pt follows when train.validate_every is set: a key of evaluate()'s result and "min" or "max".
    best_metric: ClassVar[tuple[str, str]] = ("loss", "min")
    # The shipped config `voxfast train --task NAME` starts from without --config (None: the built-in defaults).
    default_config: ClassVar[str | None] = None

    def build_model(self) -> nn.Module:
        """The module that is optimised (for a speaker task: embedding network plus margin head)."""
        raise NotImplementedError

    def train_batches(self, epoch: int, skip: int = 0) -> Iterable[dict[str, Any]]:
        """The micro-batches of one epoch after its first `skip` (a resumed run); `len()` counts those left.

        The same epoch must give the same batches every time (seeded by the epoch), so a run resumed
        mid-epoch continues exactly as the interrupted one would have. Every batch holds a "label" entry
        whose length is its number of samples.
        """
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """Move the batch to `device`, run the model and return {"loss", "output", "n"} (n = samples).

        May add "correct" (a device tensor: top-1 hits), which the trainer logs as accuracy.
        """
        raise NotImplementedError

    def evaluate(self, model: nn.Module, device: torch.device, out_dir: Path) -> dict[str, Any]:
        """Validation figures (for a speaker task: EER and minDCF on the trial list); {} when there is nothing to
        validate on."""
        return {}

    def on_step(self, model: nn.Module, progress: float) -> dict[str, float]:
        """Before each optimizer step, at `progress` epochs: set schedules (e.g. a margin); values are logged."""
        return {}

    def split_batch(self, batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
        """`batch` as `parts` smaller batches (after out-of-memory); by default :func:`split_batch`."""
        return split_batch(batch, parts)

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the weights to use the model without the training data (the config,
        class or speaker names, normalisation statistics); the trainer stores it in every checkpoint."""
        return {"task": self.name}

    def initialise(self, model: nn.Module, checkpoint: dict[str, Any], source: str) -> str:
        """Load a trained checkpoint's weights into the freshly built model (train.init_from); returns what was
        loaded, for the log. The default demands the same layout; tasks with a per-dataset head override it."""
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:
            raise VoxfastError(f"{source}: its weights do not fit this model (train.init_from): "
                               f"{str(exc).splitlines()[0]}") from None
        return f"initialised every weight from {source}"

    def resume_problem(self, checkpoint: dict[str, Any]) -> str | None:
        """Why this run cannot continue from `checkpoint` (another model, size or label set), in the user's terms;
        None lets the trainer try, and a layout mismatch is then reported from the weights themselves."""
        return None

    @classmethod
    def resolve_config(cls, cfg: Any) -> Any:
        """The config the run uses, settled before the task is built and the config saved: a task may take
        settings from train.init_from's checkpoint (the speaker task takes its model). By default unchanged,
        and train.freeze_epochs (a speaker-task setting) is refused rather than ignored."""
        if cfg.train.freeze_epochs > 0:
            raise ConfigError(f"train.freeze_epochs: the {cls.name} task has no embedder to freeze; set it to 0")
        return cfg

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        """What `voxfast train --dry-run` prints beside the config (parameter counts, steps per epoch), found
        without training and without reading audio; the default has nothing to add."""
        return {}

    @classmethod
    def make_demo_data(cls, out: str | Path, seed: int = 0, **options: Any) -> Path:
        """Write this task's synthetic demo data under `out` and return the file or list to train on."""
        raise VoxfastError(f"the {cls.name} task has no demo data generator")


def split_batch(batch: dict[str, Any], parts: int, unit: int = 1) -> list[dict[str, Any]]:
    """Cut every per-sample entry (arrays and tensors whose first axis has the batch's length, nested dicts
    included) into `parts` nearly equal consecutive pieces, cut only at multiples of `unit` (groups of crops a
    loss compares stay whole); other entries are copied, counts ("failed") kept in the first piece only so they
    are not counted twice."""
    n = len(batch["label"])
    bounds = np.unique((np.linspace(0, n // unit, parts + 1).round() * unit).astype(int).clip(max=n))
    bounds[-1] = n
    return [_slice(batch, n, int(a), int(b), first=i == 0) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


def _slice(value: Any, n: int, a: int, b: int, first: bool) -> Any:
    if isinstance(value, dict):
        return {k: (v if first else 0) if k == "failed" else _slice(v, n, a, b, first) for k, v in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim > 0 and len(value) == n:
        return value[a:b]
    return value
