"""Every Task the trainer drives, in one registry: speaker verification, image and EEG classification.

A new task is one module here (a subclass of :class:`voxfast.train.task.Task`, usually of
:class:`voxfast.tasks.classification.ClassificationTask`) plus one line in TASKS. The registry names each class
by its import path and imports it on first use: commands that need no model (`voxfast eval` of a score file,
`--help`) then start without importing torch and scipy, which take seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from voxfast.errors import VoxfastError

if TYPE_CHECKING:
    from voxfast.config import Config
    from voxfast.train.task import Task

TASKS: dict[str, str] = {
    "speaker": "voxfast.tasks.speaker.SpeakerTask",
    "image": "voxfast.tasks.image.ImageTask",
    "eeg": "voxfast.tasks.eeg.EEGTask",
}


def task_class(name: str) -> type[Task]:
    """The Task class behind `--task NAME`; an unknown name lists the known ones."""
    if name not in TASKS:
        raise VoxfastError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    module, _, cls = TASKS[name].rpartition(".")
    return getattr(importlib.import_module(module), cls)


def build_task(name: str, cfg: Config, rank: int = 0, world: int = 1) -> Task:
    """The Task behind `--task`: the trainer, CLI, config and logs are the same for all of them."""
    return task_class(name)(cfg, rank, world)
