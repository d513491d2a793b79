"""Train a task and score it: what `voxfast train`, `voxfast demo` and the recipe benchmark share."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from voxfast.config import Config, save_config
from voxfast.tasks import build_task, task_class
from voxfast.train.checkpoint import record_validation
from voxfast.train.distributed import DistInfo, env_info
from voxfast.train.lock import run_folder_lock
from voxfast.train.trainer import Trainer

log = logging.getLogger(__name__)


def train_and_score(cfg: Config, out: Path, resume: str | None = None, evaluate: bool = True,
                    profile: tuple[int, int] | None = None, task_name: str = "speaker") -> tuple[dict, dict]:
    """Build the task and trainer, resume (`auto`: the run's last.pt if any), fit, then validate on rank 0.

    The EER threshold of the final evaluation is stored in last.pt, for `voxfast.load(...).verify`.
    """
    info = env_info()
    with run_folder_lock(out) if info.is_main else contextlib.nullcontext():
        return _train_and_score(cfg, out, info, resume, evaluate, profile, task_name)


def _train_and_score(cfg: Config, out: Path, info: DistInfo, resume: str | None, evaluate: bool,
                     profile: tuple[int, int] | None, task_name: str) -> tuple[dict, dict]:
    cfg = task_class(task_name).resolve_config(cfg)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
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
    return summary, metrics
