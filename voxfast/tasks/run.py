"""Train a task and score it: what `voxfast train`, `voxfast demo` and the recipe benchmark share."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from voxfast.config import Config, save_config
from voxfast.errors import ConfigError
from voxfast.fileio import atomic_text
from voxfast.tasks import build_task, task_class
from voxfast.train.checkpoint import record_validation
from voxfast.train.distributed import DistInfo, env_info
from voxfast.train.lock import run_folder_lock
from voxfast.train.task import Task
from voxfast.train.trainer import Trainer

log = logging.getLogger(__name__)

BASELINE_TASKS = ("eeg", "image")  # the tasks voxfast.tasks.baselines has a classical baseline for


def train_and_score(cfg: Config, out: Path, resume: str | None = None, evaluate: bool = True,
                    profile: tuple[int, int] | None = None, task_name: str = "speaker") -> tuple[dict, dict]:
    """Build the task and trainer, resume (`auto`: the run's last.pt if any), fit, then validate on rank 0.

    The EER threshold of the final evaluation is stored in last.pt, for `voxfast.load(...).verify`. With
    train.cv_folds the image and EEG tasks are cross-validated instead (`voxfast.tasks.cv.run_cv`: one run per fold
    in out/fold_K/, the table in out/cv.json and out/cv.md, returned as metrics["cv"]); train.baseline adds the
    classical baseline's figures (metrics["baseline"], out/baseline.json; per fold under cross-validation).
    """
    info = env_info()
    with run_folder_lock(out) if info.is_main else contextlib.nullcontext():
        return _train_and_score(cfg, out, info, resume, evaluate, profile, task_name)


def _train_and_score(cfg: Config, out: Path, info: DistInfo, resume: str | None, evaluate: bool,
                     profile: tuple[int, int] | None, task_name: str) -> tuple[dict, dict]:
    cls = task_class(task_name)
    cfg = cls.resolve_config(cfg)
    if cfg.train.baseline and cls.name not in BASELINE_TASKS:  # refused before hours of training, not after
        raise ConfigError(f"train.baseline: no classical baseline for the {cls.name} task (only for "
                          f"{', '.join(BASELINE_TASKS)})")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    if cfg.train.cv_folds:
        from voxfast.tasks.cv import run_cv

        return run_cv(cfg, out, task_name, info, resume, evaluate, profile)
    task = build_task(task_name, cfg, info.rank, info.world)
    trainer = Trainer(task, cfg.train, out, info, profile)
    if resume == "auto":
        last = trainer.checkpoint_dir / "last.pt"
        resume = str(last) if last.is_file() else None
        log.info("--resume auto: %s", resume or "no checkpoint yet, starting afresh")
    if resume:
        trainer.load(resume)
    summary = trainer.fit()
    metrics = trainer.evaluate() if evaluate and info.is_main and not summary["interrupted"] else {}
    if metrics.get("eer_threshold") is not None:
        record_validation(trainer.checkpoint_dir / "last.pt", metrics)
    if cfg.train.baseline and info.is_main and not summary["interrupted"]:
        metrics = {**metrics, "baseline": _baseline(task, out)}
    return summary, metrics


def _baseline(task: Task, out: Path) -> dict[str, Any]:
    """The classical baseline on the run's own split, also written to out/baseline.json."""
    from voxfast.tasks.baselines import run_baseline
    from voxfast.tasks.classification import ClassificationTask

    assert isinstance(task, ClassificationTask)  # BASELINE_TASKS are
    result = run_baseline(task)
    with atomic_text(out / "baseline.json") as f:
        f.write(json.dumps(result, indent=2))
    return result
