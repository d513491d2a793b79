"""`voxfast tune`: the micro-batch and loader worker count for this machine, written into a config.

A recipe fixes the global batch (it shapes the optimisation); how it is cut into micro-batches and how many
processes feed it depend only on the device and the cores, so they are measured rather than guessed:

- micro-batch: candidates n_per_speaker x 2^k (powers of two for the usual n_per_speaker of 1 or 2), then
  the global batch itself, each tried with one forward + backward of a real batch under the config's
  precision, until CUDA runs out of memory. On a GPU the largest that fits wins (fewer, larger kernels);
  a CPU never runs out, so there each candidate is also timed and the fastest wins.
- workers: the loader alone, for a fixed number of batches after the first (worker start-up); the smallest
  count within 5 % of the best wins, since every extra worker costs memory and competes for cores.

The probe runs the model eagerly (no torch.compile), whose peak memory is at least the compiled model's.
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from voxfast.config import Config
from voxfast.errors import VoxfastError
from voxfast.runtime import autocast_for

log = logging.getLogger(__name__)
# No 0 by default: the loader is timed alone, and in-process loading (0 workers) would look fast there while
# it cannot overlap the training step; ask for it explicitly with --workers 0,1,2.
DEFAULT_WORKERS = (1, 2, 4, 8)
WORKER_TOLERANCE = 0.05  # a worker count within 5 % of the best throughput is as good


@dataclass
class MicroProbe:
    micro_batch: int
    fits: bool
    usable: bool  # divides train.global_batch and is a multiple of data.n_per_speaker
    samples_per_s: float | None = None  # timed forward + backward after the probe (None: did not fit)
    peak_mem_gb: float | None = None  # CUDA only
    note: str = ""


@dataclass
class WorkerProbe:
    workers: int
    batches_per_s: float
    samples_per_s: float


@dataclass
class TuneResult:
    device: str
    precision: str
    micro_probes: list[MicroProbe]
    micro_batch: int
    micro_rule: str
    worker_probes: list[WorkerProbe] = field(default_factory=list)
    num_workers: int = 0


# ------------------------------------------------------------------------------------------- micro-batch


def micro_candidates(global_batch: int, n_per_speaker: int, max_micro: int) -> list[int]:
    """n_per_speaker x 2^k from the smallest of at least 2 (BatchNorm needs two samples), then the global batch.

    Capped at min(max_micro, global_batch): a micro-batch larger than the step itself is never useful.
    """
    cap = min(max_micro, global_batch)
    sizes, size = [], n_per_speaker
    while size < 2:
        size *= 2
    while size <= cap:
        sizes.append(size)
        size *= 2
    if global_batch <= cap and global_batch not in sizes:
        sizes.append(global_batch)
    return sizes


def usable_micro(micro: int, global_batch: int, n_per_speaker: int) -> bool:
    """What the config accepts: whole accumulation steps, and whole speaker groups per batch."""
    return global_batch % micro == 0 and micro % n_per_speaker == 0


def probe_micro_batches(cfg: Config, device: torch.device, candidates: Sequence[int], repeats: int = 2
                        ) -> list[MicroProbe]:
    """Try each candidate in ascending order; stop at the first out-of-memory (larger ones would fail too).

    Each candidate is one untimed forward + backward (the memory probe, also the warm-up) and `repeats`
    timed ones. A candidate that the training list cannot fill (too few speakers) also ends the search.
    """
    from voxfast.runtime import resolve_precision

    precision = resolve_precision(cfg.train.precision, device)
    model: nn.Module | None = None
    probes = []
    for micro in candidates:
        usable = usable_micro(micro, cfg.train.global_batch, cfg.data.n_per_speaker)
        try:
            task = _probe_task(cfg, micro)
        except VoxfastError as exc:
            probes.append(MicroProbe(micro, False, usable, note=f"data: {exc}"))
            break
        if model is None:
            model = _probe_model(task, cfg, device)
        probe = _probe_one(task, model, device, precision, micro, repeats)
        probe.usable = usable
        probes.append(probe)
        del task
        if not probe.fits:
            break
    return probes


def _probe_task(cfg: Config, micro: int) -> Any:
    """A SpeakerTask cut into `micro`-sized batches, loading in this process (one batch is all it needs)."""
    from voxfast.tasks.speaker import SpeakerTask

    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.train.micro_batch = micro
    probe_cfg.data.num_workers = 0
    return SpeakerTask(probe_cfg)


def _probe_model(task: Any, cfg: Config, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.train.seed)
    model = task.build_model().to(device).train()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _probe_one(task: Any, model: nn.Module, device: torch.device, precision: str, micro: int, repeats: int
               ) -> MicroProbe:
    batch = next(iter(task.train_batches(0)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fits = _fits(task, model, batch, device, precision)
    if not fits:
        return MicroProbe(micro, False, False, note="out of memory")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    start = time.perf_counter()
    for _ in range(repeats):
        _forward_backward(task, model, batch, device, precision)
    _sync(device)
    sps = micro * repeats / max(time.perf_counter() - start, 1e-9) if repeats else None
    log.info("micro-batch %d fits: %s samples/s", micro, f"{sps:.1f}" if sps else "?")
    return MicroProbe(micro, True, False, sps, peak)


def _fits(task: Any, model: nn.Module, batch: dict[str, Any], device: torch.device, precision: str) -> bool:
    """One forward + backward; False after an out-of-memory error, with the memory handed back."""
    try:
        _forward_backward(task, model, batch, device, precision)
        _sync(device)
        return True
    except torch.OutOfMemoryError:
        pass
    # Outside the except block, so the traceback (and the tensors its frames hold) is already released.
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("micro-batch %d: out of memory", len(batch["label"]))
    return False


def _forward_backward(task: Any, model: nn.Module, batch: dict[str, Any], device: torch.device,
                      precision: str) -> None:
    with autocast_for(precision, device):
        out = task.training_step(model, batch, device)
    out["loss"].backward()
    model.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_micro_batch(probes: Sequence[MicroProbe], fastest: bool) -> MicroProbe:
    """The largest usable probe that fit, or with `fastest` (CPU) the one with the best samples/s."""
    fitting = [p for p in probes if p.fits and p.usable]
    if not fitting:
        tried = ", ".join(f"{p.micro_batch} ({p.note or 'not usable'})" for p in probes) or "none"
        raise VoxfastError(f"no micro-batch fits and divides the global batch (tried: {tried}); lower "
                           "train.global_batch, data.num_frames or the model size")
    if fastest:
        return max(fitting, key=lambda p: p.samples_per_s or 0.0)
    return max(fitting, key=lambda p: p.micro_batch)


# ------------------------------------------------------------------------------------------- workers


def choose_workers(rates: Mapping[int, float], tolerance: float = WORKER_TOLERANCE) -> int:
    """The fewest workers whose throughput is within `tolerance` of the best one's."""
    if not rates:
        raise ValueError("no worker counts were measured")
    best = max(rates.values())
    return min(w for w, rate in rates.items() if rate >= (1.0 - tolerance) * best)


def worker_candidates(requested: Sequence[int] | None) -> list[int]:
    """The requested counts as given, or the defaults that do not exceed the machine's cores."""
    if requested:
        return sorted(set(requested))
    cores = os.cpu_count() or 1
    return [w for w in DEFAULT_WORKERS if w <= cores]


def time_workers(cfg: Config, candidates: Sequence[int], batches: int = 40) -> list[WorkerProbe]:
    """Loader batches/s for each worker count, over `batches` batches after the first (worker start-up)."""
    probes = []
    for workers in candidates:
        rate = _loader_rate(cfg, workers, batches)
        probes.append(WorkerProbe(workers, rate, rate * cfg.train.micro_batch))
        log.info("%d loader workers: %.1f batches/s", workers, rate)
    return probes


def _loader_rate(cfg: Config, workers: int, batches: int) -> float:
    from voxfast.data.speaker import to_float_wave
    from voxfast.tasks.speaker import SpeakerTask

    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.data.num_workers = workers
    task = SpeakerTask(probe_cfg)
    stream = _endless(task)
    next(stream)  # worker start-up
    start = time.perf_counter()
    for batch in itertools.islice(stream, batches):
        to_float_wave(task.dataset.batch_wave(batch))  # what a training step does first with a batch
    seconds = max(time.perf_counter() - start, 1e-9)
    stream.close()
    del stream, task
    gc.collect()  # stop the workers before the next count starts its own
    return batches / seconds


def _endless(task: Any) -> Iterator[dict[str, Any]]:
    """Batches across epochs, as training sees them (a short list restarts with the next epoch's order)."""
    for epoch in itertools.count():
        yield from task.train_batches(epoch)


# ------------------------------------------------------------------------------------------- together


def tune(cfg: Config, device: torch.device, max_micro: int, workers: Sequence[int] | None = None,
         fastest: bool | None = None, batches: int = 40) -> TuneResult:
    """Choose train.micro_batch, then data.num_workers at that micro-batch; `fastest` defaults to a CPU device."""
    from voxfast.runtime import resolve_precision

    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    fastest = device.type == "cpu" if fastest is None else fastest
    candidates = micro_candidates(cfg.train.global_batch, cfg.data.n_per_speaker, max_micro)
    probes = probe_micro_batches(cfg, device, candidates)
    chosen = choose_micro_batch(probes, fastest)
    rule = ("fastest samples/s of those that fit; a CPU has no out-of-memory to find" if fastest
            else "largest that fits in device memory")
    result = TuneResult(str(device), resolve_precision(cfg.train.precision, device), probes, chosen.micro_batch, rule)
    timed_cfg = tuned_config(cfg, result.micro_batch, cfg.data.num_workers)
    result.worker_probes = time_workers(timed_cfg, worker_candidates(workers), batches)
    result.num_workers = choose_workers({p.workers: p.batches_per_s for p in result.worker_probes})
    return result


def tune_to_file(cfg: Config, out: str | Path, max_micro: int, workers: Sequence[int] | None = None,
                 batches: int = 40) -> TuneResult:
    """`voxfast tune`: measure on the config's device (demo corpus made when the config reads it) and write the
    tuned config to `out`."""
    from voxfast.bench.train import ensure_demo_corpus
    from voxfast.config import save_config
    from voxfast.runtime import resolve_device

    ensure_demo_corpus(cfg)
    result = tune(cfg, resolve_device(cfg.train.device), max_micro, workers, batches=batches)
    save_config(tuned_config(cfg, result.micro_batch, result.num_workers), out)
    return result


def tuned_config(cfg: Config, micro_batch: int, num_workers: int) -> Config:
    """A copy of `cfg` with the two tuned settings replaced."""
    out = copy.deepcopy(cfg)
    out.train.micro_batch = micro_batch
    out.data.num_workers = num_workers
    return out


def format_tune(result: TuneResult, out: str) -> str:
    lines = [f"voxfast tune on {result.device} (precision {result.precision})", "micro-batch (one forward + backward):",
             f"  {'micro':>6} {'fits':<5} {'usable':<6} {'samples/s':>10} {'peak GB':>8}  note"]
    for p in result.micro_probes:
        sps = f"{p.samples_per_s:.1f}" if p.samples_per_s else "-"
        mem = f"{p.peak_mem_gb:.2f}" if p.peak_mem_gb is not None else "-"
        lines.append(f"  {p.micro_batch:>6} {_yes(p.fits):<5} {_yes(p.usable):<6} {sps:>10} {mem:>8}  {p.note}")
    lines.append(f"  chosen: {result.micro_batch} ({result.micro_rule})")
    lines.append(f"loader workers (micro-batch {result.micro_batch}):")
    lines.append(f"  {'workers':>7} {'batches/s':>10} {'samples/s':>10}")
    lines += [f"  {p.workers:>7} {p.batches_per_s:>10.2f} {p.samples_per_s:>10.1f}" for p in result.worker_probes]
    lines.append(f"  chosen: {result.num_workers} (fewest within {WORKER_TOLERANCE:.0%} of the best)")
    lines.append(f"wrote {out}: train.micro_batch={result.micro_batch} data.num_workers={result.num_workers}")
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
