"""The training loop, written once for every task: precision, accumulation, clipping, checkpoints, logs.

Speed rules kept here: one autocast context (GradScaler only for fp16), gradients set to None, the loss
read back from the device only every `log_every` steps (no host sync per step), and data-wait time
measured apart from compute so a slow loader shows in every log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from voxfast.config import TrainConfig
from voxfast.progress import progress_bar
from voxfast.train.checkpoint import load_checkpoint, save_checkpoint
from voxfast.train.schedule import warmup_cosine
from voxfast.train.task import Task

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` picks fp16 on CUDA, and bf16 on a CPU only when it has native bf16 (AVX512-BF16/AMX).

    On CPUs without it, bf16 autocast is emulated and slower than fp32, so auto stays in fp32 there.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    capability = torch.backends.cpu.get_cpu_capability()
    return "bf16" if ("BF16" in capability or "AMX" in capability) else "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Optimises `task.build_model()` with AdamW under the settings of a TrainConfig."""

    def __init__(self, task: Task, cfg: TrainConfig, out_dir: str | Path, extra_state: dict[str, Any] | None = None):
        self.task = task
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.extra_state = extra_state or {}
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.model = task.build_model().to(self.device)
        self.accum = cfg.global_batch // cfg.micro_batch
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch = 0
        self.step = 0
        self.skipped_files = 0
        self.metrics_file = self.out_dir / "metrics.jsonl"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def fit(self) -> dict[str, Any]:
        """Train from the current epoch to `cfg.epochs`, checkpointing after every epoch."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log.info("training on %s, precision %s, %d epochs, steps of %d samples (%d x %d accumulated)",
                 self.device, self.precision, self.cfg.epochs, self.cfg.global_batch, self.cfg.micro_batch, self.accum)
        start, samples = time.perf_counter(), 0
        while self.epoch < self.cfg.epochs:
            samples += self._train_epoch()
            self.epoch += 1
            self.save(self.out_dir / "checkpoints" / f"epoch_{self.epoch:03d}.pt")
        minutes = (time.perf_counter() - start) / 60
        return {"train_minutes": minutes, "train_samples_per_s": samples / max(minutes * 60, 1e-9),
                "steps": self.step, "skipped_files": self.skipped_files}

    def _train_epoch(self) -> int:
        """One epoch; the LR follows fractional epochs, since epochs may differ in their number of batches."""
        self.model.train()
        batches = self.task.train_batches(self.epoch)
        steps = max(len(batches) // self.accum, 1)
        window, epoch_samples, micro = _Window(self.device, self.epoch), 0, []
        started, skipped_before = time.perf_counter(), self.skipped_files
        bar = progress_bar(len(batches) // self.accum, f"epoch {self.epoch + 1}/{self.cfg.epochs}")
        it = iter(batches)
        while True:
            waited = time.perf_counter()
            batch = next(it, None)
            window.wait += time.perf_counter() - waited
            if batch is None:
                break
            self.skipped_files += int(batch.get("failed", 0))
            micro.append(batch)
            if len(micro) < self.accum:
                continue
            progress = self.epoch + min(window.steps_in_epoch + 1, steps) / steps  # epochs done after this step
            self._set_lr(warmup_cosine(progress, self.cfg.epochs, self.cfg.warmup_epochs, self.cfg.min_lr_ratio))
            hook = getattr(self.task, "on_step", None)
            window.extra = hook(self.model, progress) if hook is not None else {}
            loss, n = self.train_step(micro)
            micro = []
            window.add(loss, n, progress)
            epoch_samples += n
            self.step += 1
            bar.update(1)
            if self.step % self.cfg.log_every == 0:
                self._log(window)
                window = _Window(self.device, progress, window.steps_in_epoch)
        bar.close()
        seconds = time.perf_counter() - started
        log.info("epoch %d/%d: %d samples in %.0f s (%.1f samples/s), %d unreadable files skipped", self.epoch + 1,
                 self.cfg.epochs, epoch_samples, seconds, epoch_samples / max(seconds, 1e-9),
                 self.skipped_files - skipped_before)
        return epoch_samples

    def train_step(self, micro_batches: list[dict[str, Any]]) -> tuple[torch.Tensor, int]:
        """One optimizer step over accumulated micro-batches; returns the mean loss (on device) and samples."""
        n_total = sum(len(b["label"]) for b in micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for batch in micro_batches:
            if len(batch["label"]) == 0:
                continue
            with self.autocast():
                out = self.task.training_step(self.model, batch, self.device)
            # Weight by the micro-batch's share so accumulation equals one large batch.
            self.scaler.scale(out["loss"] * (out["n"] / n_total)).backward()
            loss_sum += out["loss"].detach() * out["n"]
        if self.cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / max(n_total, 1), n_total

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            return self.task.evaluate(self.model, self.device, self.out_dir)

    def save(self, path: str | Path) -> None:
        save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": self.epoch,
                "step": self.step,
                "train_config": asdict(self.cfg),
                "torch_rng": torch.get_rng_state(),
                **self.extra_state,
            },
            path,
        )

    def load(self, path: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model, optimizer, scaler, counters)."""
        state = load_checkpoint(path, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        torch.set_rng_state(state["torch_rng"].cpu())

    def _set_lr(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor

    def _log(self, window: _Window) -> None:
        loss = float(window.loss) / max(window.samples, 1)  # the one host sync every log_every steps
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        sps = window.samples / elapsed
        eta = (self.cfg.epochs - window.progress) * elapsed / max(window.progress - window.start_progress, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"step": self.step, "epoch": self.epoch + 1, "loss": loss, "lr": lr, **window.extra,
                  "samples_per_s": sps, "data_wait_pct": 100.0 * window.wait / elapsed, "eta_s": eta}
        extra = "".join(f" {k} {v:.3g}" for k, v in window.extra.items())
        log.info("step %d (epoch %d/%d) loss %.3f lr %.2e%s %.0f samples/s data-wait %.0f%% eta %s", self.step,
                 self.epoch + 1, self.cfg.epochs, loss, lr, extra, sps, record["data_wait_pct"], _fmt_eta(eta))
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")


class _Window:
    """Running totals between two log lines; the loss stays on the device until the line is written."""

    def __init__(self, device: torch.device, progress: float, steps_in_epoch: int = 0) -> None:
        self.start = time.perf_counter()
        self.start_progress = self.progress = progress  # in epochs
        self.steps_in_epoch = steps_in_epoch
        self.wait = 0.0
        self.samples = 0
        self.extra: dict[str, float] = {}  # task schedule values (e.g. margin) at the latest step
        self.loss = torch.zeros((), device=device)

    def add(self, mean_loss: torch.Tensor, n: int, progress: float) -> None:
        self.loss += mean_loss.detach() * n
        self.samples += n
        self.steps_in_epoch += 1
        self.progress = progress


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation parameters (1-D tensors), as is standard."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"
