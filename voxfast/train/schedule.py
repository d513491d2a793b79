"""Training schedules per optimizer step: learning rate as a multiplier of the peak LR, and the head margin."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from voxfast.config import TrainConfig


def warmup_cosine(t: float, total: float, warmup: float, min_ratio: float) -> float:
    """LR factor at training progress `t` (any unit, e.g. epochs completed after this step).

    Linear warm-up to 1 over `warmup`, then cosine decay to `min_ratio` at `total`. Taking progress
    rather than a step count keeps the schedule right when epochs differ in length (speaker-balanced
    batching) and when a run resumes mid-way.
    """
    if warmup > 0 and t < warmup:
        return t / warmup
    span = max(total - warmup, 1e-12)
    progress = min(max((t - warmup) / span, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))



def warmup_exponential(t: float, total: float, warmup: float, min_ratio: float) -> float:
    """LR factor at training progress `t` (fractional epochs completed, as in :func:`warmup_cosine`).

    Linear warm-up from 0 to 1 over `warmup`, then exponential decay ``min_ratio ** p`` with ``p`` the
    fraction of ``[warmup, total]`` done: 1 right after warm-up, `min_ratio` at `total` and after.

    WeSpeaker's ExponentialDecrease instead multiplies the warm-up ramp by a decay that runs over the
    whole run (``min_ratio ** (t / total)``), so the configured peak is never reached (decaying 0.1 to
    5e-5 over 150 epochs, it is down to 0.74 of it when a 6-epoch warm-up ends). Here the decay starts
    after warm-up, as the cosine does, so `lr` is the real peak and `min_lr_ratio` is the same final
    fraction for every scheduler; the curve is otherwise WeSpeaker's (a straight line in log-LR).
    """
    if not 0.0 < min_ratio <= 1.0:  # a negative base would give complex powers, 0 a cliff to 0
        raise ValueError(f"warmup_exponential: min_ratio must be in (0, 1], got {min_ratio!r}")
    if warmup > 0 and t < warmup:
        return t / warmup
    span = max(total - warmup, 1e-12)
    progress = min(max((t - warmup) / span, 0.0), 1.0)
    return min_ratio**progress


def step_decay(t: float, warmup: float, step_epochs: float, gamma: float) -> float:
    """LR factor at training progress `t`: linear warm-up, then ``gamma`` every `step_epochs` after it.

    voxceleb_trainer's StepLR (step_size epochs, gamma per step), counted from the end of warm-up so
    the first decay comes a full `step_epochs` after the peak. No floor: the LR keeps decaying.
    """
    if step_epochs <= 0:
        raise ValueError(f"step_decay: step_epochs must be > 0, got {step_epochs!r}")
    if warmup > 0 and t < warmup:
        return t / warmup
    return gamma ** math.floor(max(t - warmup, 0.0) / step_epochs)


def lr_factor(cfg: TrainConfig, t: float) -> float:
    """Multiplier of :func:`peak_lr` at progress `t` (fractional epochs completed) under `cfg.scheduler`.

    One entry point, so the trainer sets ``lr = peak_lr(cfg) * lr_factor(cfg, t)`` whatever schedule the
    config chose, and a resumed run recomputes the same LR from its progress alone.
    """
    if cfg.scheduler == "cosine":
        return warmup_cosine(t, cfg.epochs, cfg.warmup_epochs, cfg.min_lr_ratio)
    if cfg.scheduler == "exp":
        return warmup_exponential(t, cfg.epochs, cfg.warmup_epochs, cfg.min_lr_ratio)
    if cfg.scheduler == "step":
        return step_decay(t, cfg.warmup_epochs, cfg.step_epochs, cfg.step_gamma)
    raise ValueError(f"lr_factor: unknown scheduler {cfg.scheduler!r} (expected cosine, exp or step)")


def peak_lr(cfg: TrainConfig) -> float:
    """Peak learning rate: `cfg.lr`, times ``global_batch / lr_reference_batch`` when that is set.

    The linear scaling rule (Goyal et al., 2017) lets a recipe tuned at one batch size keep working
    when the batch grows with the number of GPUs; with ``lr_reference_batch == 0`` `lr` is taken as is.
    """
    if cfg.lr_reference_batch > 0:
        return cfg.lr * cfg.global_batch / cfg.lr_reference_batch
    return cfg.lr


_EXP_FLOOR = 1e-3  # WeSpeaker's MarginScheduler: the remaining gap shrinks from 1 to 1e-3 over the ramp


def margin_schedule(t: float, final: float, start: float, ramp_end: float, increase: str = "exp") -> float:
    """Classification margin at training progress `t` (fractional epochs completed).

    Margin 0 before `start`, rising to `final` between `start` and `ramp_end`, `final` afterwards.
    A margin-based head trained from random weights with its full margin often stalls, because the
    penalised target logit is below the others for every class; starting at zero lets the classes
    separate first (WeSpeaker's MarginScheduler). Progress in epochs, as in :func:`warmup_cosine`,
    keeps the schedule right for epochs of unequal length and for resumed runs.

    ``increase="linear"`` ramps linearly. ``increase="exp"`` follows WeSpeaker:
    ``final * (1 - 1e-3 ** p)`` with ``p`` the fraction of the ramp done, so most of the margin
    arrives early and the approach to `final` is gentle; it reaches 0.999 * `final` at the end of
    the ramp and then exactly `final` (a step of 0.1 % of `final`, as in WeSpeaker).
    ``start == ramp_end`` gives a step from 0 to `final` at `start`.
    """
    for name, value in (("t", t), ("final", final), ("start", start), ("ramp_end", ramp_end)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"margin_schedule: {name} must be a finite number, got {value!r}")
    if final < 0:
        raise ValueError(f"margin_schedule: final must be >= 0, got {final!r}")
    if start < 0:
        raise ValueError(f"margin_schedule: start must be >= 0, got {start!r}")
    if ramp_end < start:
        raise ValueError(f"margin_schedule: ramp_end must be >= start ({start!r}), got {ramp_end!r}")
    if increase not in ("exp", "linear"):
        raise ValueError(f"margin_schedule: increase must be 'exp' or 'linear', got {increase!r}")
    if t >= ramp_end:
        return float(final)
    if t < start:
        return 0.0
    p = (t - start) / (ramp_end - start)
    ratio = p if increase == "linear" else 1.0 - _EXP_FLOOR**p
    return final * ratio


def set_margin(head: nn.Module, value: float) -> None:
    """Set the margin of a margin-based head; a no-op for heads without one (softmax).

    The trainer can then apply :func:`margin_schedule` whatever head the config chose.
    """
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"set_margin: value must be a finite number >= 0, got {value!r}")
    if hasattr(head, "margin"):
        head.margin = float(value)
