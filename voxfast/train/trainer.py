"""The training loop, written once for every task: precision, accumulation, DDP, robustness, checkpoints, logs.

Speed rules kept here: one autocast context (GradScaler only for fp16), gradients set to None, `no_sync()`
on non-final micro-steps under DDP, fused optimizers that skip a non-finite step on the device, and the loss
read back from the device only every `log_every` steps, so no step waits for the GPU. Data-wait time is
measured apart from compute, so a slow loader shows in every log line.

Robustness: a non-finite step is skipped and counted (`max_nonfinite` in a row abort), CUDA out-of-memory
halves the micro-batch and doubles accumulation (global batch kept), SIGINT/SIGTERM write `last.pt` and stop
after the current step, and `last.pt` holds the full state (sampler position, RNG per rank) so a resumed run
continues exactly where the killed one stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from voxfast.config import TrainConfig
from voxfast.errors import ConfigError, VoxfastError
from voxfast.progress import progress_bar
from voxfast.runtime import autocast_for, configure_backends, resolve_precision, seed_everything
from voxfast.train.budget import BudgetClock
from voxfast.train.checkpoint import BestTracker, load_checkpoint, prune_checkpoints, save_checkpoint
from voxfast.train.distributed import DistInfo, any_rank, rank_device
from voxfast.train.lock import run_folder_lock
from voxfast.train.optim import build_optimizer, step_skipping_nonfinite
from voxfast.train.schedule import lr_factor, peak_lr
from voxfast.train.task import Task

log = logging.getLogger(__name__)


def accumulation_steps(cfg: TrainConfig, world: int) -> int:
    """Micro-steps per optimizer step: global_batch / (micro_batch x processes), which must divide evenly."""
    per_step = cfg.micro_batch * world
    if cfg.global_batch % per_step:
        raise ConfigError(f"train.global_batch ({cfg.global_batch}) must be a multiple of train.micro_batch x "
                          f"processes ({cfg.micro_batch} x {world} = {per_step})")
    return cfg.global_batch // per_step


class Trainer:
    """Optimises `task.build_model()` under the settings of a TrainConfig, on one process or under torchrun."""

    def __init__(self, task: Task, cfg: TrainConfig, out_dir: str | Path, dist_info: DistInfo | None = None,
                 profile: tuple[int, int] | None = None) -> None:
        self.task, self.cfg, self.out_dir = task, cfg, Path(out_dir)
        self.extra_state = task.checkpoint_extra()  # config, names, statistics: saved beside the weights
        self.dist = dist_info or DistInfo()
        self.device = rank_device(cfg.device, self.dist)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.accum = accumulation_steps(cfg, self.dist.world)
        configure_backends(cfg)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.module = task.build_model().to(self.device)  # the plain module: what checkpoints hold
        if cfg.init_from:  # a resume loads its own weights over these afterwards
            log.info(task.initialise(self.module, load_checkpoint(cfg.init_from), cfg.init_from))
        if cfg.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.model = self._wrap(self.module)  # what the forward runs: compiled, then DDP
        if self.dist.enabled:
            seed_everything(cfg.seed + 1_000_003 * self.dist.rank)  # per-rank randomness (dropout, etc.)
        self.optimizer = build_optimizer(self.module, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch = self.step = self.batch_in_epoch = 0  # batch_in_epoch: micro-batches done in this epoch
        self.split = 1  # each micro-batch runs as `split` pieces after out-of-memory errors
        self.skipped_files = 0
        self.train_seconds = 0.0  # wall-clock seconds spent training (validation excluded), kept across resumes
        self._epoch_batches = 0  # micro-batches of the current epoch
        self.clock = BudgetClock(cfg.budget_minutes * 60.0) if cfg.budget_minutes > 0 else None
        self._mark = time.perf_counter()
        metric, mode = task.best_metric if cfg.validate_every else ("train_loss", "min")
        self.best = BestTracker(mode, metric)  # best.pt: the task's validation metric, else the training loss
        self.validation: dict[str, Any] = {}  # figures of the latest validation, saved in checkpoints
        zero = torch.zeros((), device=self.device)
        self._bad = {"total": zero.clone(), "run": zero.clone(), "max_run": zero.clone()}  # non-finite steps
        self._signal_seen: str | None = None  # by this process
        self._stop_signal: str | None = None  # agreed by all ranks: the loop stops after this step
        self._profile = profile
        self._profiler: torch.profiler.profile | None = None
        self._tb: Any = None
        self.metrics_file = self.out_dir / "metrics.jsonl"

    # ------------------------------------------------------------------------------------------- setup

    def _wrap(self, module: nn.Module) -> nn.Module:
        model = torch.compile(module) if self.cfg.compile else module  # compile before DDP, as DDP expects
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # parameters frozen for a while (train.freeze_epochs) get no gradient: DDP must look for them
            model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=self.cfg.freeze_epochs > 0)
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_for(self.precision, self.device)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    # ------------------------------------------------------------------------------------------- loop

    def fit(self, max_steps: int | None = None) -> dict[str, Any]:
        """Train to `cfg.epochs` (or `max_steps` more steps); returns throughput, counts and how it ended.

        Rank 0 holds the run folder's lock meanwhile: a second run into the same folder is refused."""
        with run_folder_lock(self.out_dir) if self.dist.is_main else contextlib.nullcontext():
            return self._fit(max_steps)

    def _fit(self, max_steps: int | None) -> dict[str, Any]:
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._tb = _tensorboard(self.out_dir) if self.cfg.tensorboard else None
        length = f"{self.cfg.budget_minutes:g} minutes" if self.clock else f"{self.cfg.epochs} epochs"
        log.info("training on %s x %d, precision %s, %s, steps of %d samples (%d x %d x %d processes)",
                 self.device, self.dist.world, self.precision, length, self.cfg.global_batch,
                 self.cfg.micro_batch, self.accum, self.dist.world)
        start, samples, wait, stop_at = time.perf_counter(), 0, 0.0, None
        if max_steps is not None:
            stop_at = self.step + max_steps
        with _stop_on_signals(self):
            while (self.clock is not None or self.epoch < self.cfg.epochs) and not self._stopping(stop_at):
                done, waited = self._train_epoch(stop_at)
                samples, wait = samples + done, wait + waited
                if self.batch_in_epoch == 0:  # the epoch ran to its end
                    self._end_epoch()
        if self.clock is not None and self.clock.expired and not self._stop_signal:
            self.save(self.checkpoint_dir / "last.pt")  # mid-epoch: the epoch checkpoint will not come
            log.info("training budget of %g minutes reached after step %d (epoch %d)", self.cfg.budget_minutes,
                     self.step, self.epoch + 1)
        if self._stop_signal:
            self.save(self.checkpoint_dir / "last.pt")
            log.warning("stopped by %s after step %d; resume with --resume %s", self._stop_signal, self.step,
                        self.checkpoint_dir / "last.pt")
        self._close()
        seconds = max(time.perf_counter() - start, 1e-9)
        return {"train_minutes": seconds / 60, "train_samples_per_s": samples * self.dist.world / seconds,
                "data_wait_pct": 100.0 * wait / seconds, "steps": self.step, "skipped_files": self.skipped_files,
                "nonfinite_steps": int(self._bad["total"].item()), "micro_batch": self.cfg.micro_batch // self.split,
                "epochs_done": self.epoch + (self.batch_in_epoch / self._epoch_batches if self._epoch_batches else 0.0),
                "interrupted": self._stop_signal}

    def _stopping(self, stop_at: int | None) -> bool:
        budget_spent = self.clock is not None and self.clock.expired
        return self._stop_signal is not None or budget_spent or (stop_at is not None and self.step >= stop_at)

    def _train_epoch(self, stop_at: int | None) -> tuple[int, float]:
        """One epoch from micro-batch `batch_in_epoch`; the LR follows fractional epochs (epochs differ in length)."""
        self.model.train()
        skip = self.batch_in_epoch
        batches = self.task.train_batches(self.epoch, skip)
        steps = max((skip + len(batches)) // self.accum, 1)
        self._epoch_batches = skip + len(batches)
        self._mark = time.perf_counter()  # validation and epoch checkpoints do not count as training time
        window, epoch_samples, micro = _Window(self.device, self.epoch + skip / self.accum / steps), 0, []
        epoch_loss = _Window(self.device, 0.0)  # totals of the whole epoch, for best.pt
        started, wait_total, skipped_before = time.perf_counter(), 0.0, self.skipped_files
        bar = progress_bar(steps - skip // self.accum, f"epoch {self._epoch_label()}", self.dist.is_main)
        for batch, waited in _timed(batches):
            window.wait, wait_total = window.wait + waited, wait_total + waited
            self.skipped_files += int(batch.get("failed", 0))
            micro.append(batch)
            if len(micro) < self.accum:
                continue
            progress = self.epoch + min(self.batch_in_epoch // self.accum + 1, steps) / steps  # epochs after step
            if self.clock is not None:  # the schedules stretched over the budget: epochs x elapsed / budget
                progress = self.cfg.epochs * self.clock.fraction(self.step + 1)
            window.extra = self._before_step(progress)
            result = self.train_step(micro)
            self.batch_in_epoch += len(micro)
            micro = []
            self.step += 1
            window.add(*result, progress)
            epoch_loss.add(*result, progress)
            epoch_samples += result.samples
            bar.update(1)
            self._after_step(window)
            if self.step % self.cfg.log_every == 0:
                window = _Window(self.device, progress)
            if self._stopping(stop_at):
                bar.close()
                return epoch_samples, wait_total
        bar.close()
        if self.clock is not None and self.batch_in_epoch < self.accum:
            raise VoxfastError(f"an epoch of {self.batch_in_epoch} micro-batches fills no optimizer step of "
                               f"{self.accum}: a budget run would never advance (lower train.global_batch)")
        self.batch_in_epoch = 0
        seconds = time.perf_counter() - started
        log.info("epoch %s: %d samples in %.0f s (%.1f samples/s), %d non-finite steps skipped in the run, "
                 "%d unreadable files skipped", self._epoch_label(), epoch_samples, seconds,
                 epoch_samples * self.dist.world / max(seconds, 1e-9), int(self._bad["total"].item()),
                 self.skipped_files - skipped_before)
        self._epoch_loss = (epoch_loss.loss_total, epoch_loss.n_total)
        return epoch_samples, wait_total

    def _epoch_label(self) -> str:
        """`3/18`, or `3` in a budget run (which ends when its time is up, not after train.epochs)."""
        return f"{self.epoch + 1}" if self.clock is not None else f"{self.epoch + 1}/{self.cfg.epochs}"

    def _before_step(self, progress: float) -> dict[str, float]:
        """LR and task schedules (margin) for the coming step; starts the profiler at its first step."""
        lr = peak_lr(self.cfg) * lr_factor(self.cfg, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self._profile and self.step + 1 == self._profile[0]:
            self._profiler = _start_profiler(self.device)
        return self.task.on_step(self.module, progress)

    def _after_step(self, window: _Window) -> None:
        now = time.perf_counter()
        self.train_seconds, self._mark = self.train_seconds + now - self._mark, now
        if self.clock is not None and (not self.dist.enabled or BudgetClock.agrees_at(self.step, self.cfg.log_every)):
            self.clock.agree(self.step, self._agreed_seconds())
        if not self.dist.enabled:
            self._stop_signal = self._signal_seen
        if self._profiler is not None and self._profile and self.step >= self._profile[1]:
            self._stop_profiler()
        if self.step % self.cfg.log_every == 0:
            self._check_nonfinite()
            self._log(window)
            # Ranks must stop at the same step: they agree on a signal every log_every steps.
            if self.dist.enabled and any_rank(self._signal_seen is not None, self.dist, self.device):
                self._stop_signal = self._signal_seen or "a signal on another rank"
        if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
            self.save(self.checkpoint_dir / "last.pt")

    def _agreed_seconds(self) -> float:
        """Training seconds so far, the same on every rank (the slowest rank's: a collective under DDP)."""
        if not self.dist.enabled:
            return self.train_seconds
        t = torch.tensor([self.train_seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def train_step(self, micro_batches: list[dict[str, Any]]) -> _StepResult:
        """One optimizer step over accumulated micro-batches, retried in smaller pieces after out-of-memory.

        Returns a :class:`_StepResult`: device tensors except the sample count, so nothing here waits for the
        device.
        """
        while True:
            try:
                return self._step(micro_batches)
            except torch.OutOfMemoryError:
                self._halve_micro_batch(micro_batches)

    def _step(self, micro_batches: list[dict[str, Any]]) -> _StepResult:
        pieces = [p for b in micro_batches for p in self._pieces(b)]
        pieces = [p for p in pieces if len(p["label"])]
        n_total = sum(len(p["label"]) for p in pieces)
        loss_sum = torch.zeros((), device=self.device)
        correct: torch.Tensor | None = None
        self.optimizer.zero_grad(set_to_none=True)
        for i, piece in enumerate(pieces):
            with self._sync_grads(i == len(pieces) - 1):
                with self.autocast():
                    out = self.task.training_step(self.model, piece, self.device)
                # Weight by the piece's share so accumulation equals one large batch.
                self.scaler.scale(out["loss"] * (out["n"] / n_total)).backward()
            loss_sum += out["loss"].detach().float() * out["n"]
            if "correct" in out:
                correct = out["correct"].detach() + (0 if correct is None else correct)
        found_inf = self._clip_and_check()
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips non-finite steps itself, and lowers the scale
            self.scaler.update()
        else:
            step_skipping_nonfinite(self.optimizer, found_inf)
        self.optimizer.zero_grad(set_to_none=True)
        ok = 1.0 - found_inf
        self._count_nonfinite(found_inf)
        return _StepResult(torch.where(ok > 0, loss_sum, 0.0), ok * n_total, n_total, correct)

    def _pieces(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if self.split == 1:
            return [batch]
        return self.task.split_batch(batch, self.split)

    def _sync_grads(self, final: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients on the final micro-step only; earlier ones accumulate locally."""
        if self.dist.enabled and not final:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _clip_and_check(self) -> torch.Tensor:
        """Unscale (fp16), clip, and flag a non-finite gradient norm as a 0-d float tensor (1.0) on the device.

        The norm is taken after DDP's all-reduce, so every rank reaches the same verdict.
        """
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.cfg.clip_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad_norm, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        return (~torch.isfinite(norm)).float().reshape(())

    def _count_nonfinite(self, found_inf: torch.Tensor) -> None:
        bad = self._bad
        bad["total"] += found_inf
        bad["run"] = (bad["run"] + found_inf) * found_inf
        bad["max_run"] = torch.maximum(bad["max_run"], bad["run"])

    def _check_nonfinite(self) -> None:
        """Abort when `max_nonfinite` steps in a row were non-finite (read every log_every steps)."""
        worst = int(self._bad["max_run"].item())
        self._bad["max_run"] = self._bad["run"].clone()
        if worst >= self.cfg.max_nonfinite:
            raise VoxfastError(
                f"{worst} optimizer steps in a row had a non-finite loss or gradient (by step {self.step}); "
                "training diverged: lower train.lr, keep train.clip_grad_norm > 0, prefer bf16 to fp16, and check "
                "the data for NaN audio"
            )

    def _halve_micro_batch(self, micro_batches: list[dict[str, Any]]) -> None:
        """Out of memory: run every micro-batch as twice as many pieces from now on (global batch unchanged)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        smallest = min(len(b["label"]) for b in micro_batches)
        if self.dist.enabled or smallest < 2 * self.split:
            why = "under DDP the ranks cannot re-split in step" if self.dist.enabled else "at 1 sample per piece"
            raise VoxfastError(f"out of memory with micro-batch {smallest // self.split} ({why}); lower "
                               "train.micro_batch or run `voxfast tune` to find one that fits")
        self.split *= 2
        log.warning("out of memory: micro-batch %d -> %d, accumulation %d -> %d (global batch %d kept)",
                    self.cfg.micro_batch // (self.split // 2), self.cfg.micro_batch // self.split,
                    self.accum * self.split // 2, self.accum * self.split, self.cfg.global_batch)

    # ------------------------------------------------------------------------------------------- epochs

    def _end_epoch(self) -> None:
        """Epoch checkpoint, last.pt and best.pt, then prune to keep_last.

        With `validate_every`, best.pt is the checkpoint of the best validation figure (the task's
        `best_metric`, EER for speakers), judged on validation epochs only; without, the lowest mean loss.
        """
        value = self._epoch_figure()
        self.epoch += 1
        if self.cfg.validate_every:
            value = self._validate() if self.epoch % self.cfg.validate_every == 0 else None
        better = value is not None and self.best.is_better(value)
        self.save(self.checkpoint_dir / f"epoch_{self.epoch:03d}.pt", aliases=("last.pt", *(("best.pt",) * better)))
        if self.dist.is_main:
            prune_checkpoints(self.checkpoint_dir, self.cfg.keep_last)

    def _epoch_figure(self) -> float | None:
        """Mean training loss of the epoch over all ranks (every rank reaches the same best.pt verdict)."""
        total, n = self._epoch_loss
        sums = torch.stack([total, n])
        if self.dist.enabled:
            dist.all_reduce(sums)
        return float(sums[0] / sums[1]) if sums[1] > 0 else None  # an epoch resumed at its very end trained nothing

    def _validate(self) -> float | None:
        """Rank 0 evaluates (e.g. EER on the trial list); every rank receives the figures."""
        result: list[Any] = [self.evaluate() if self.dist.is_main else None]
        if self.dist.enabled:
            dist.broadcast_object_list(result, src=0)
        self.validation = dict(result[0])
        figures = {k: v for k, v in self.validation.items() if isinstance(v, int | float)}
        log.info("validation after epoch %d: %s", self.epoch, " ".join(f"{k} {v:.4g}" for k, v in figures.items()))
        if self.dist.is_main:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps({"step": self.step, "epoch": self.epoch, "validation": figures}) + "\n")
            if self._tb is not None:
                for key, value in figures.items():
                    self._tb.add_scalar(f"validation/{key}", value, self.step)
        value = self.validation.get(self.best.metric)
        return float(value) if isinstance(value, int | float) else None

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            return self.task.evaluate(self.module, self.device, self.out_dir)

    # ------------------------------------------------------------------------------------------- state

    def save(self, path: str | Path, aliases: tuple[str, ...] = ()) -> None:
        """Write the full training state (rank 0), plus hard-linked aliases (last.pt, best.pt) beside it.

        Collective under DDP: every rank contributes its RNG state, so a resumed run draws as before.
        """
        rng = [_rng_state()]
        if self.dist.enabled:
            rng = [None] * self.dist.world
            dist.all_gather_object(rng, _rng_state())
        if not self.dist.is_main:
            return
        state = {
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
            "batch_in_epoch": self.batch_in_epoch, "split": self.split, "skipped_files": self.skipped_files,
            "nonfinite": {k: v.cpu() for k, v in self._bad.items()}, "best": self.best.state_dict(),
            "rng": rng, "world": self.dist.world, "train_config": asdict(self.cfg), "validation": self.validation,
            "train_seconds": self.train_seconds,
            **self.extra_state,
        }
        path = Path(path)
        save_checkpoint(state, path)
        for alias in aliases:
            _link(path, path.with_name(alias))

    def load(self, path: str | Path) -> None:
        """Continue exactly from a checkpoint written by :meth:`save` (weights, optimizer, position, RNG)."""
        state = load_checkpoint(path, self.device)
        problem = self.task.resume_problem(state)
        try:
            if problem is None:
                self.module.load_state_dict(state["model"])
        except RuntimeError as exc:
            problem = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        if problem is not None:
            raise VoxfastError(f"cannot resume from {path}: {problem}; resume with the config the run started with, "
                               "or start a new run (another train.out_dir; train.init_from=CKPT to fine-tune from it)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.batch_in_epoch = state.get("batch_in_epoch", 0)
        self.split = state.get("split", 1)
        self.skipped_files = state.get("skipped_files", 0)
        self._bad = {k: v.to(self.device) for k, v in state.get("nonfinite", self._bad).items()}
        if "best" in state:
            self.best.load_state_dict(state["best"])
        self.validation = state.get("validation", {})
        self.train_seconds = state.get("train_seconds", 0.0)
        if self.clock is not None:
            self.clock.agree(self.step, self.train_seconds)
        rng = state.get("rng")
        if rng:
            if len(rng) != self.dist.world:
                log.warning("%s was written by %d processes, this run has %d: RNG streams restart per rank", path,
                            len(rng), self.dist.world)
            _set_rng_state(rng[self.dist.rank % len(rng)])
        log.info("resumed from %s: epoch %d, step %d, micro-batch %d of the epoch", path, self.epoch + 1, self.step,
                 self.batch_in_epoch)

    # ------------------------------------------------------------------------------------------- logs

    def _log(self, window: _Window) -> None:
        if not self.dist.is_main:
            return
        loss = float(window.loss_total) / max(float(window.n_total), 1.0)  # the one host sync per log_every steps
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        sps = window.samples * self.dist.world / elapsed
        eta = (self.cfg.epochs - window.progress) * elapsed / max(window.progress - window.start_progress, 1e-9)
        if self.clock is not None:
            eta = self.clock.remaining_s()
        lr = self.optimizer.param_groups[0]["lr"]
        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch + 1, "loss": loss}
        if window.has_correct:
            record["acc"] = float(window.correct) / max(window.samples, 1)
        record.update({"lr": lr, **window.extra, "samples_per_s": sps,
                       "data_wait_pct": 100.0 * window.wait / elapsed, "eta_s": eta,
                       "nonfinite_steps": int(self._bad["total"].item())})
        if self.device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        log.info("step %d (epoch %s) %s eta %s", self.step, self._epoch_label(),
                 " ".join(f"{_LABELS.get(k, k)} {_fmt(k, v)}" for k, v in record.items()
                          if k not in ("step", "epoch", "eta_s")), _fmt_eta(eta))
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch"):
                    self._tb.add_scalar(f"train/{key}", value, self.step)

    def _stop_profiler(self) -> None:
        assert self._profiler is not None and self._profile is not None
        self._profiler.__exit__(None, None, None)
        name = f"profile_steps_{self._profile[0]}-{self._profile[1]}_rank{self.dist.rank}.json"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._profiler.export_chrome_trace(str(self.out_dir / name))
        log.info("profiler trace of steps %d-%d: %s (open in chrome://tracing or Perfetto)", *self._profile,
                 self.out_dir / name)
        self._profiler = None

    def _close(self) -> None:
        if self._profiler is not None:
            self._stop_profiler()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class _StepResult(NamedTuple):
    """One optimizer step's figures for the running totals, in the order :meth:`_Window.add` takes them."""

    loss_sum: torch.Tensor  # sum of loss x samples over the step's pieces, 0 when the step was not finite
    finite_samples: torch.Tensor  # samples in loss_sum: the step's samples, or 0 when it was skipped
    samples: int  # samples the step saw, skipped or not
    correct: torch.Tensor | None  # top-1 hits, when the task reports them


class _Window:
    """Running totals between two log lines; the loss stays on the device until the line is written."""

    def __init__(self, device: torch.device, progress: float) -> None:
        self.start = time.perf_counter()
        self.start_progress = self.progress = progress  # in epochs
        self.wait = 0.0
        self.samples = 0
        self.extra: dict[str, float] = {}  # task schedule values (e.g. margin) at the latest step
        self.loss_total = torch.zeros((), device=device)  # over finite steps only
        self.n_total = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.has_correct = False

    def add(self, loss_sum: torch.Tensor, n_ok: torch.Tensor, n: int, correct: torch.Tensor | None,
            progress: float) -> None:
        self.loss_total += loss_sum
        self.n_total += n_ok
        if correct is not None:
            self.correct += correct
            self.has_correct = True
        self.samples += n
        self.progress = progress


def _timed(batches: Any) -> Iterator[tuple[dict[str, Any], float]]:
    """Each batch with the seconds spent waiting for it (the loader's share of the step time)."""
    it = iter(batches)
    while True:
        started = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            return
        yield batch, time.perf_counter() - started


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT interrupts at once."""
    def request(signum: int, frame: Any) -> None:
        if trainer._signal_seen is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer._signal_seen = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, then writing a checkpoint", trainer._signal_seen)

    try:
        previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _start_profiler(device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities, record_shapes=True)
    profiler.__enter__()
    return profiler


def _tensorboard(out_dir: Path) -> Any:
    """A SummaryWriter in <run>/tensorboard when tensorboard is installed; None (silently) otherwise."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (numpy's key array as a tensor: checkpoints load with
    weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # a tensor, or an array in older files
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _link(target: Path, alias: Path) -> None:
    """Point `alias` at `target`'s file atomically: a hard link where the file system allows, else a copy."""
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.tmp")  # one temp name per writer process
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        tmp.write_bytes(target.read_bytes())
    os.replace(tmp, alias)


_LABELS = {"samples_per_s": "samples/s", "data_wait_pct": "data-wait", "nonfinite_steps": "skipped-steps",
           "gpu_mem_gb": "gpu-mem"}


def _fmt(key: str, value: float) -> str:
    if key == "lr":
        return f"{value:.2e}"
    if key == "data_wait_pct":
        return f"{value:.0f}%"
    if key == "gpu_mem_gb":
        return f"{value:.1f}GB"
    if key in ("samples_per_s", "nonfinite_steps"):
        return f"{value:.0f}"
    return f"{value:.3g}" if key != "loss" else f"{value:.3f}"


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"
