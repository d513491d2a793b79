"""`voxfast bench-eval`: evaluation at VoxCeleb scale, timed in one run on synthetic data.

Three measurements:

* metrics: EER + minDCF (p = 0.01 and 0.05) of ``trials`` synthetic float32 scores, by voxfast's
  :func:`~voxfast.eval.metrics.verification_metrics` and by the route voxceleb_trainer takes
  (``tuneThresholdfromScore`` with ``sklearn.metrics.roc_curve`` for the EER, then ``ComputeErrorRates``
  and ``ComputeMinDcf`` once per prior), re-implemented here line for line and given the Python lists it
  builds in ``evaluateFromList``. Both run on the same scores, so their ratio is this machine's speedup.
  Scores are Gaussian, targets N(0.5, 0.1) and non-targets N(0.05, 0.1) (EER about 1.2 %), with 50 %
  targets by default, the ratio of the VoxCeleb1-O/E/H lists.
* cosine scoring of ``score_trials`` random pairs over a table of L2-normalised embeddings.
* AS-norm (top-N cohort statistics per utterance) of ``asnorm_trials`` trials drawn over
  ``asnorm_utterances`` utterances (100 k trials over 25 k utterances: each utterance in about 8 trials,
  as in VoxCeleb1-O) against a cohort of L2-normalised embeddings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from voxfast.errors import VoxfastError
from voxfast.eval.metrics import verification_metrics

METRICS_TARGET_S = 3.0  # EER + both minDCFs of 10 M trials on a 2-core machine
METRICS_MIN_SPEEDUP = 5.0
ASNORM_TARGET_S = 10.0  # 100 k trials over 25 k utterances vs a 20 k cohort, top-300
COSINE_TARGET_S = 2.0  # 1 M trials over 50 k x 256 embeddings


@dataclass
class EvalBenchRow:
    """One timed task; ``target_s`` / ``min_speedup`` are None where the task has no target."""

    name: str
    seconds: float
    target_s: float | None = None
    speedup: float | None = None
    min_speedup: float | None = None
    detail: dict[str, Any] | None = None

    @property
    def passed(self) -> bool | None:
        if self.target_s is None and self.min_speedup is None:
            return None
        fast = self.target_s is None or self.seconds <= self.target_s
        return fast and (self.min_speedup is None or (self.speedup or 0.0) >= self.min_speedup)


# --------------------------------------------------------------------------------------------------
# The voxceleb_trainer route (clovaai/voxceleb_trainer, tuneThreshold.py), kept as it is written there.


def _vt_eer(scores: list[float], labels: list[int]) -> float:
    """tuneThresholdfromScore's EER: the ROC point where |FNR - FPR| is smallest (percent)."""
    from sklearn import metrics

    fpr, tpr, _ = metrics.roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    idx = np.nanargmin(np.absolute(fnr - fpr))
    return float(max(fpr[idx], fnr[idx]) * 100)


def _vt_error_rates(scores: list[float], labels: list[int]) -> tuple[list[float], list[float], tuple[float, ...]]:
    """ComputeErrorRates: a Python sort of (index, score) pairs, then cumulative counts in a Python loop."""
    sorted_indexes, thresholds = zip(
        *sorted([(index, threshold) for index, threshold in enumerate(scores)], key=itemgetter(1)), strict=True
    )
    labels = [labels[i] for i in sorted_indexes]
    fnrs: list[float] = []
    fprs: list[float] = []
    for i in range(len(labels)):
        if i == 0:
            fnrs.append(labels[i])
            fprs.append(1 - labels[i])
        else:
            fnrs.append(fnrs[i - 1] + labels[i])
            fprs.append(fprs[i - 1] + 1 - labels[i])
    fnrs_norm = sum(labels)
    fprs_norm = len(labels) - fnrs_norm
    return [x / float(fnrs_norm) for x in fnrs], [1 - x / float(fprs_norm) for x in fprs], thresholds


def _vt_min_dcf(
    fnrs: list[float], fprs: list[float], thresholds: Sequence[float], p_target: float, c_miss: float, c_fa: float
) -> tuple[float, float]:
    """ComputeMinDcf: a Python loop over every trial, keeping the threshold of the minimum."""
    min_c_det = float("inf")
    min_c_det_threshold = thresholds[0]
    for i in range(len(fnrs)):
        c_det = c_miss * fnrs[i] * p_target + c_fa * fprs[i] * (1 - p_target)
        if c_det < min_c_det:
            min_c_det = c_det
            min_c_det_threshold = thresholds[i]
    return min_c_det / min(c_miss * p_target, c_fa * (1 - p_target)), min_c_det_threshold


def voxceleb_trainer_metrics(scores: list[float], labels: list[int]) -> dict[str, float]:
    """EER (percent) and minDCF at p = 0.01 and 0.05 the way voxceleb_trainer's evaluation computes them."""
    eer = _vt_eer(scores, labels)
    rates = _vt_error_rates(scores, labels)
    return {f"min_dcf_{p:g}": _vt_min_dcf(*rates, p, 1, 1)[0] for p in (0.01, 0.05)} | {"eer": eer}


# --------------------------------------------------------------------------------------------------
# Synthetic data and timing.


def synthetic_trials(n: int, target_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 cosine-like scores, targets N(0.5, 0.1) and non-targets N(0.05, 0.1), and bool labels."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < target_fraction
    scores = rng.normal(0.05, 0.1, n).astype(np.float32)
    scores[labels] += np.float32(0.45)
    return scores, labels


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Random L2-normalised float32 rows, standing in for speaker embeddings."""
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_metrics(trials: int, target_fraction: float) -> list[EvalBenchRow]:
    """voxfast's metrics against the voxceleb_trainer route on the same scores; the ratio is measured here."""
    scores, labels = synthetic_trials(trials, target_fraction)
    verification_metrics(scores[:1000], labels[:1000])  # first-call costs stay out of the timing
    ours_s, ours = _timed(lambda: verification_metrics(scores, labels))
    as_lists = scores.tolist(), labels.astype(int).tolist()  # what evaluateFromList has built
    base_s, base = _timed(lambda: voxceleb_trainer_metrics(*as_lists))
    keys = ("eer", "min_dcf_0.01", "min_dcf_0.05")
    size = f"{trials:,} trials, {100 * target_fraction:g} % targets"
    return [
        EvalBenchRow(f"metrics, voxceleb_trainer route ({size})", base_s, detail={k: base[k] for k in keys}),
        EvalBenchRow(f"metrics, voxfast ({size})", ours_s, METRICS_TARGET_S * trials / 10_000_000, base_s / ours_s,
                     METRICS_MIN_SPEEDUP, {k: ours[k] for k in keys}),
    ]


def bench_cosine(trials: int, embeddings: int, dim: int) -> EvalBenchRow:
    """Cosine scores of random trial pairs over an embedding table."""
    from voxfast.eval.scoring import cosine_scores

    rng = np.random.default_rng(1)
    emb = unit_rows(rng, embeddings, dim)
    enroll, test = rng.integers(0, embeddings, (2, trials))
    cosine_scores(emb, enroll[:1000], test[:1000])
    seconds, _ = _timed(lambda: cosine_scores(emb, enroll, test))
    target = COSINE_TARGET_S * trials / 1_000_000
    return EvalBenchRow(f"cosine, {trials:,} trials over {embeddings:,} x {dim}", seconds, target)


def bench_asnorm(trials: int, utterances: int, cohort: int, dim: int, top_n: int) -> EvalBenchRow:
    """AS-norm of trials drawn over a set of utterances, against a cohort.

    The target (10 s for 100 k trials against a 20 k cohort) scales with utterances x cohort, the matmul
    and partition that dominate it.
    """
    from voxfast.eval.scoring import as_norm_scores

    rng = np.random.default_rng(2)
    emb, cohort_emb = unit_rows(rng, utterances, dim), unit_rows(rng, cohort, dim)
    enroll, test = rng.integers(0, utterances, (2, trials))
    as_norm_scores(emb, enroll[:100], test[:100], cohort_emb[: 2 * top_n], top_n)
    seconds, _ = _timed(lambda: as_norm_scores(emb, enroll, test, cohort_emb, top_n))
    name = f"AS-norm top-{top_n}, {trials:,} trials ({utterances:,} utts) vs {cohort:,} cohort"
    return EvalBenchRow(name, seconds, ASNORM_TARGET_S * utterances * cohort / (25_000 * 20_000))


def run_eval_bench(
    trials: int = 10_000_000,
    target_fraction: float = 0.5,
    score_trials: int = 1_000_000,
    embeddings: int = 50_000,
    dim: int = 256,
    asnorm_trials: int = 100_000,
    asnorm_utterances: int = 25_000,
    cohort: int = 20_000,
    top_n: int = 300,
) -> list[EvalBenchRow]:
    """All three measurements; targets scale linearly with the sizes when these are not the defaults."""
    if not 0.0 < target_fraction < 1.0:
        raise VoxfastError(f"--target-fraction must be strictly between 0 and 1, got {target_fraction}")
    return [
        *bench_metrics(trials, target_fraction),
        bench_cosine(score_trials, embeddings, dim),
        bench_asnorm(asnorm_trials, asnorm_utterances, cohort, dim, top_n),
    ]


def format_eval_results(rows: list[EvalBenchRow], as_json: bool) -> str:
    """A table (seconds, target, speedup, pass/fail), or JSON for scripts."""
    if as_json:
        return json.dumps([{**asdict(r), "passed": r.passed} for r in rows], indent=2)
    verdict = {True: "pass", False: "FAIL", None: "-"}
    lines = [f"{'task':<68} {'seconds':>8} {'target':>8} {'speedup':>8}  result"]
    for r in rows:
        target = f"<{r.target_s:.2f}" if r.target_s is not None else "-"
        speedup = f"{r.speedup:.1f}x" if r.speedup is not None else "-"
        lines.append(f"{r.name:<68} {r.seconds:>8.2f} {target:>8} {speedup:>8}  {verdict[r.passed]}")
    for r in rows:
        if r.detail:
            lines.append(f"  {r.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.detail.items()))
    return "\n".join(lines)
