"""What the image and EEG tasks share: data held in memory, seeded epoch batches, cross-entropy, accuracy.

Small classification sets (images, EEG windows) fit in memory, so there is no DataLoader: a micro-batch is one
index into the tensors, cut when the trainer reads it. Batch `b` of an epoch is rows `b*m : (b+1)*m` of a
permutation seeded by (train.seed, epoch) and goes to rank `b % world`, so every process count sees the same
global batches and a run resumed mid-epoch continues with the very batches the interrupted one would have read.
A subclass says what its inputs are (`inputs`, `eval_inputs`) and which model to build; the step, the
evaluation and the metrics are written once, here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from voxfast.config import Config, config_to_dict
from voxfast.errors import ConfigError, VoxfastError
from voxfast.train.task import Task

log = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]  # (training indices, validation indices) into a task's whole data set


class EpochBatches(Sequence[dict[str, Any]]):
    """One rank's micro-batches of one epoch, made only when read (an epoch is never copied whole)."""

    def __init__(self, make: Callable[[int], dict[str, Any]], numbers: Sequence[int]) -> None:
        self.make, self.numbers = make, numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.make(self.numbers[i])


class ClassificationTask(Task):
    """Cross-entropy classification over in-memory tensors; best.pt follows `best_metric` of the validation set.

    Subclasses set `classes`, `train_rows` (indices of the training examples in their tensors) and `val_labels`,
    call :meth:`check_batches` once their data is read, and implement `gather`, `inputs`, `eval_inputs` and
    `build_model`.
    """

    best_metric: ClassVar[tuple[str, str]] = ("accuracy", "max")
    unit: ClassVar[str] = "examples"  # how messages name the training examples ("images", "windows")
    # True where the subclass passes `split` to its constructor's super() call and takes its split through
    # `choose_split`: the cross-validation runner (voxfast.tasks.cv) refuses the others rather than train every fold
    # on the task's own split.
    takes_split: ClassVar[bool] = False
    classes: list[str]
    train_rows: np.ndarray
    val_labels: np.ndarray

    def __init__(self, cfg: Config, rank: int = 0, world: int = 1, split: Split | None = None) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world
        self.seed = cfg.train.seed % 2**32  # numpy seed sequences take no negative entropy
        self.pin = cfg.data.pin_memory and torch.cuda.is_available()
        self.batches_per_rank = 0
        self.fixed_split = split

    @classmethod
    def fold_targets(cls, cfg: Config) -> tuple[np.ndarray, np.ndarray | None]:
        """Class index (N,) and group (N,) or None of every example `split` indices point at, read without building
        the task: what cross-validation cuts its folds from. Tasks that can be cross-validated override it."""
        raise ConfigError(f"train.cv_folds: the {cls.name} task cannot be cross-validated (set train.cv_folds=0)")

    def choose_split(self, n: int, default: Callable[[], Split]) -> Split:
        """The split given to the constructor (a cross-validation fold), checked against the `n` examples read;
        else the task's own, `default()`.

        Checked here, once for every subclass: an index out of range or in both sets would train on validation
        data without any error further down.
        """
        if self.fixed_split is None:
            return default()
        train, val = (np.asarray(rows, dtype=np.int64) for rows in self.fixed_split)
        for name, rows in (("training", train), ("validation", val)):
            if rows.ndim != 1 or len(rows) == 0:
                raise VoxfastError(f"explicit split: the {name} indices must be a non-empty 1-D array, got shape "
                                   f"{rows.shape}")
            if rows.min() < 0 or rows.max() >= n:
                raise VoxfastError(f"explicit split: {name} indices must lie in [0, {n}) ({n} {self.unit} read), "
                                   f"got {rows.min()} .. {rows.max()}")
        both = np.intersect1d(train, val)
        if len(both):
            raise VoxfastError(f"explicit split: {len(both)} {self.unit} are in both training and validation "
                               f"(e.g. index {both[0]})")
        return train, val

    def check_batches(self, origin: str) -> None:
        """Every rank gets the same number of full micro-batches; none at all is a user error."""
        m = self.cfg.train.micro_batch
        self.batches_per_rank = len(self.train_rows) // m // self.world
        if self.batches_per_rank == 0:
            raise VoxfastError(f"{origin}: {len(self.train_rows)} training {self.unit} do not fill one micro-batch "
                               f"of {m} per process ({self.world}); lower train.micro_batch")

    # --------------------------------------------------------------------------------------- subclass hooks

    def gather(self, rows: np.ndarray, number: int, epoch: int) -> dict[str, Any]:
        """Micro-batch `number` of `epoch`: the examples at `rows` plus what `inputs` needs (a "label" entry)."""
        raise NotImplementedError

    def inputs(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """The batch's model input on `device`, augmented and normalised."""
        raise NotImplementedError

    def eval_inputs(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Validation examples `positions` (0 .. len(val_labels) - 1) on `device`, un-augmented."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """What the subclass adds to checkpoints (class names, normalisation statistics)."""
        return {}

    # --------------------------------------------------------------------------------------- the Task

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"task": self.name, "config": config_to_dict(self.cfg), **self.checkpoint_state()}

    def train_batches(self, epoch: int, skip: int = 0) -> EpochBatches:
        """Full micro-batches of a (seed, epoch) permutation; rank r takes every world-th, all ranks as many.

        The last partial micro-batch is dropped: batch norm on a handful of examples is noise, and fixed shapes
        keep cuDNN autotuning and torch.compile from re-tuning.
        """
        m = self.cfg.train.micro_batch
        order = self.train_rows[np.random.default_rng([self.seed, epoch]).permutation(len(self.train_rows))]
        numbers = range(self.rank, self.batches_per_rank * self.world, self.world)[skip:]
        return EpochBatches(lambda b: self.gather(order[b * m : (b + 1) * m], b, epoch), numbers)

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        x = self.inputs(batch, device)
        label = batch["label"].to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), label)
        correct = (logits.detach().argmax(1) == label).sum()
        return {"loss": loss, "output": logits, "n": len(label), "correct": correct}

    def evaluate(self, model: nn.Module, device: torch.device, out_dir: Path) -> dict[str, Any]:
        """Accuracy, balanced accuracy and per-class accuracy on the validation set; also out_dir/metrics.json."""
        n = len(self.val_labels)
        if n == 0:
            log.warning("no validation %s: set a validation fraction > 0 or separate validation data", self.unit)
            return {"n_val": 0}
        chunks = torch.arange(n).split(max(self.cfg.train.micro_batch, 256))
        predicted = torch.cat([model(self.eval_inputs(c, device)).argmax(1).cpu() for c in chunks]).numpy()
        result = classification_metrics(self.val_labels, predicted, self.classes)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(result, indent=2))
        return result


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy; balanced accuracy (mean recall over the classes present, which chance puts at 1 / classes however
    unbalanced the validation set is); per-class accuracy (None for a class without validation examples)."""
    totals = np.bincount(labels, minlength=len(classes))
    hits = np.bincount(labels[labels == predicted], minlength=len(classes))
    present = totals > 0
    return {"accuracy": float((labels == predicted).mean()),
            "balanced_accuracy": float((hits[present] / totals[present]).mean()), "n_val": len(labels),
            "classes": list(classes),
            "per_class_accuracy": [float(h / t) if t else None for h, t in zip(hits, totals, strict=True)]}


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (N, C, ...) data over every axis but the channel one (float64).

    Two passes over chunks of `chunk` examples: no full-size float64 copy of a uint8 image set, and no
    E[x^2] - mean^2 cancellation for signals with a large offset (EEG in microvolts). A flat channel gets std 1,
    so it is left unscaled.
    """
    axes = (0, *range(2, x.ndim))
    count = max(x.size // x.shape[1], 1)
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        total += x[start : start + chunk].sum(axis=axes, dtype=np.float64)
    mean = total / count
    squares = np.zeros(x.shape[1])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    for start in range(0, len(x), chunk):
        squares += np.square(x[start : start + chunk] - mean.reshape(shape)).sum(axis=axes)
    std = np.sqrt(squares / count)
    return mean, np.where(std > 0, std, 1.0)


def take(source: torch.Tensor, rows: np.ndarray | torch.Tensor, pin: bool) -> torch.Tensor:
    """source[rows], written straight into page-locked memory when pinning (one copy, an asynchronous upload)."""
    idx = torch.as_tensor(rows)
    out = torch.empty((len(idx), *source.shape[1:]), dtype=source.dtype, pin_memory=pin)
    return torch.index_select(source, 0, idx, out=out)


def epoch_generator(seed: int, epoch: int, number: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one micro-batch's augmentation draws: the same (seed, epoch, batch number) always draws the
    same, so a resumed run augments exactly as the interrupted one would have."""
    state = np.random.SeedSequence([seed, epoch, number]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))
