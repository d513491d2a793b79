"""A BatchNorm-free toy task for trainer tests, importable by subprocesses (SIGKILL resume, DDP)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxfast.config import TrainConfig
from voxfast.train.distributed import DistInfo, env_info, init_distributed, shutdown
from voxfast.train.task import Task
from voxfast.train.trainer import Trainer

WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 3.0])


class ToyTask(Task):
    """Linear regression on 4 features, shuffled per epoch by (seed, epoch); rank r takes every world-th sample.

    Each global batch of `global_batch` samples is the same whatever the number of processes, so DDP runs
    and single-process runs optimise the same objective step by step.
    """

    def __init__(self, micro: int, global_batch: int, n: int = 64, dist: DistInfo | None = None,
                 dropout: float = 0.0, nan_steps: tuple[int, ...] = (), oom_above: int = 0, sleep: float = 0.0,
                 hook=None) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ WEIGHTS + 0.1 * torch.randn(n, generator=g)
        self.micro, self.global_batch = micro, global_batch
        self.dist = dist or DistInfo()
        self.dropout = dropout
        self.nan_steps, self.oom_above, self.sleep, self.hook = nan_steps, oom_above, sleep, hook
        self.calls = 0
        self.steps_seen = 0

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(4, 1))

    def train_batches(self, epoch: int, skip: int = 0) -> list[dict]:
        order = np.random.default_rng([7, epoch]).permutation(len(self.x))
        batches = []
        for g0 in range(0, len(order) - self.global_batch + 1, self.global_batch):
            mine = order[g0 : g0 + self.global_batch][self.dist.rank :: self.dist.world]
            for m0 in range(0, len(mine), self.micro):
                idx = torch.from_numpy(mine[m0 : m0 + self.micro])
                batches.append({"x": self.x[idx], "label": self.y[idx]})
        return batches[skip:]

    def on_step(self, model: nn.Module, progress: float) -> dict[str, float]:
        self.steps_seen += 1
        if self.hook is not None:
            self.hook(self.steps_seen)
        if self.sleep:
            time.sleep(self.sleep)
        return {}

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> dict:
        self.calls += 1
        if self.oom_above and len(batch["label"]) > self.oom_above:
            raise torch.OutOfMemoryError("toy: CUDA out of memory")
        pred = model(batch["x"].to(device)).squeeze(1)
        loss = ((pred - batch["label"].to(device)) ** 2).mean()
        if self.steps_seen in self.nan_steps:
            loss = loss * float("nan")
        return {"loss": loss, "output": pred, "n": len(batch["label"])}

    def evaluate(self, model: nn.Module, device: torch.device, out_dir: Path) -> dict:
        return {}


def toy_config(**kw) -> TrainConfig:
    base = dict(epochs=3, global_batch=8, micro_batch=8, lr=0.05, weight_decay=0.0, warmup_epochs=0.0,
                clip_grad_norm=0.0, precision="fp32", device="cpu", log_every=1000, tensorboard=False,
                optimizer="adamw", cudnn_benchmark=False)
    base.update(kw)
    return TrainConfig(**base)


def run(out: str, spec: dict) -> None:
    """Entry point for subprocess tests: train a toy run described by `spec`, write final weights as JSON."""
    info = init_distributed("cpu") if spec.get("ddp") else env_info()
    cfg = toy_config(**spec["cfg"])
    task = ToyTask(cfg.micro_batch, cfg.global_batch, dist=info, sleep=spec.get("sleep", 0.0))
    trainer = Trainer(task, cfg, out, dist_info=info)
    if spec.get("resume"):
        trainer.load(Path(out) / "checkpoints" / "last.pt")
    summary = trainer.fit()
    if info.is_main:
        weights = [p.detach().tolist() for p in trainer.module.parameters()]
        Path(out, "final.json").write_text(json.dumps({"weights": weights, "steps": summary["steps"]}))
    shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], json.loads(sys.argv[2]))
    os._exit(0)
