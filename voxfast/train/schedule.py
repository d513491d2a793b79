"""Learning-rate schedules as multipliers of the peak LR, per optimizer step."""

from __future__ import annotations

import math


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
