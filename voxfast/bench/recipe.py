"""`voxfast bench-recipe`: training recipes compared at the same wall-clock budget on one data set.

Each config trains for `budget` minutes (train.budget_minutes) on the same training list and is scored on the
same trials; the table reports EER, minDCF, steps, samples/s and the last logged training accuracy. Beside them
stands the untrained floor (cosine of standardised MFCC statistics, voxfast.eval.floor) on the same trials: a
recipe whose EER is above it has learnt nothing a spectrum summary does not give, and is flagged as a failure,
as is one whose training accuracy stayed near zero (it never fitted its data).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voxfast.config import load_config
from voxfast.data.manifest import read_trials
from voxfast.eval.floor import floor_scores
from voxfast.eval.metrics import verification_metrics
from voxfast.tasks.run import train_and_score

FLOOR = "untrained floor (MFCC statistics)"


@dataclass
class RecipeResult:
    name: str
    eer: float
    min_dcf_01: float  # p_target 0.01
    min_dcf_05: float  # p_target 0.05
    steps: int = 0
    samples_per_s: float = 0.0
    epochs: float = 0.0
    train_acc: float | None = None  # the last logged training accuracy
    verdict: str = ""


def floor_metrics(trials_path: str, root: str | None, sample_rate: int) -> RecipeResult:
    """The untrained floor on a trial list, timed (it needs no training, so no budget)."""
    trials = read_trials(trials_path)
    scores = floor_scores(trials, root or Path(trials_path).parent, sample_rate)
    m = verification_metrics(scores, np.array([t.label for t in trials]))
    return RecipeResult(FLOOR, m["eer"], m["min_dcf_0.01"], m["min_dcf_0.05"], verdict="reference")


def run_recipe_bench(configs: Sequence[str], overrides: Sequence[str], budget_minutes: float, out_dir: str | Path,
                     presets: Sequence[str] = ()) -> list[RecipeResult]:
    """Train every config for `budget_minutes` under the same overrides (data, trials), then the floor; rows in
    the order given, the floor last, verdicts against it."""
    out_dir = Path(out_dir)
    results = []
    for config in configs:
        name = Path(config).stem
        cfg = load_config(config, [*overrides, f"train.budget_minutes={budget_minutes}",
                                   f"train.out_dir={out_dir / name}"], presets)
        summary, metrics = train_and_score(cfg, out_dir / name)
        results.append(RecipeResult(name, metrics["eer"], metrics["min_dcf_0.01"], metrics["min_dcf_0.05"],
                                    summary["steps"], summary["train_samples_per_s"], summary["epochs_done"],
                                    _last_accuracy(out_dir / name / "metrics.jsonl")))
    floor = floor_metrics(cfg.eval.trials, cfg.eval.root, cfg.data.sample_rate)
    for r in results:
        r.verdict = _verdict(r, floor)
    return [*results, floor]


def _last_accuracy(metrics_file: Path) -> float | None:
    accuracy = None
    for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else []:
        accuracy = json.loads(line).get("acc", accuracy)
    return accuracy


def _verdict(r: RecipeResult, floor: RecipeResult) -> str:
    if r.train_acc is not None and r.train_acc < 0.05:
        return "FAIL: never fitted (training accuracy < 5 %)"
    if r.eer >= floor.eer:
        return "FAIL: above the untrained floor"
    return f"ok ({r.eer / floor.eer:.2f} x the floor's EER)"


def format_recipe_results(results: list[RecipeResult], budget_minutes: float, as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(r) for r in results], indent=2)
    lines = [f"voxfast bench-recipe: {budget_minutes:g} minutes of training each ({time.strftime('%Y-%m-%d')})",
             f"{'recipe':<34} {'EER %':>6} {'minDCF.01':>9} {'minDCF.05':>9} {'steps':>6} {'epochs':>6} "
             f"{'samples/s':>9} {'train acc':>9}  verdict"]
    for r in results:
        acc = f"{r.train_acc:.3f}" if r.train_acc is not None else "-"
        lines.append(f"{r.name:<34} {r.eer:>6.2f} {r.min_dcf_01:>9.4f} {r.min_dcf_05:>9.4f} {r.steps:>6} "
                     f"{r.epochs:>6.1f} {r.samples_per_s:>9.1f} {acc:>9}  {r.verdict}")
    return "\n".join(lines)
