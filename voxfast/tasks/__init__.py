"""Tasks the trainer drives: speaker verification here, image and EEG classification in voxfast.adapters."""

from __future__ import annotations

import importlib
from typing import Any

TASKS = ("speaker", "image", "eeg")


def build_task(name: str, cfg: Any, rank: int = 0, world: int = 1) -> Any:
    """The Task behind `--task`: the trainer, CLI, config and logs are the same for all of them."""
    if name == "speaker":
        from voxfast.tasks.speaker import SpeakerTask

        return SpeakerTask(cfg, rank, world)
    return adapter(name).task_class(cfg, rank, world)


def adapter(name: str) -> Any:
    """The adapter module of a classification task (voxfast.adapters.image / .eeg)."""
    if name not in TASKS[1:]:
        raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
    return importlib.import_module(f"voxfast.adapters.{name}")
