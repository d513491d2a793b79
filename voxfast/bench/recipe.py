"""`voxfast bench-recipe`: training recipes compared at the same wall-clock budget on one data set.

Each config trains for `budget` minutes (train.budget_minutes) on the same training list and is scored on the
same trials; the table reports EER, minDCF, steps, samples/s and the last logged training accuracy. Beside them
stands the untrained floor (cosine of standardised MFCC statistics, voxfast.eval.floor) on the same trials: a
recipe whose EER is above it has learnt nothing a spectrum summary does not give, and is flagged as a failure; a
training accuracy that stayed near zero (a recipe that never fitted its data) is pointed out beside the verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voxfast.config import Config, load_config
from voxfast.data.manifest import read_trials
from voxfast.errors import VoxfastError
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
    if any(t.label is None for t in trials):
        raise VoxfastError(f"{trials_path}: unlabelled trials; comparing recipes needs `label enroll test` lines")
    scores = floor_scores(trials, root or Path(trials_path).parent, sample_rate)
    m = verification_metrics(scores, np.array([t.label for t in trials]))
    return RecipeResult(FLOOR, m["eer"], m["min_dcf_0.01"], m["min_dcf_0.05"], verdict="reference")


def run_recipe_bench(configs: Sequence[str], overrides: Sequence[str], budget_minutes: float, out_dir: str | Path,
                     presets: Sequence[str] = ()) -> list[RecipeResult]:
    """Train every config for `budget_minutes` under the same overrides (data, trials), then the floor; rows in
    the order given, the floor last, verdicts against it."""
    out_dir = Path(out_dir)
    cfgs = {Path(c).stem: load_config(c, [*overrides, f"train.budget_minutes={budget_minutes}",
                                          f"train.out_dir={out_dir / Path(c).stem}"], presets) for c in configs}
    trial_lists = {cfg.eval.trials for cfg in cfgs.values()}
    if len(trial_lists) != 1:
        raise VoxfastError(f"the configs score different trial lists ({sorted(trial_lists)}); set eval.trials once")
    first = next(iter(cfgs.values()))
    floor = floor_metrics(first.eval.trials, first.eval.root, first.data.sample_rate)  # fails early on bad trials
    results = [_train_one(name, cfg, out_dir / name) for name, cfg in cfgs.items()]
    for r in results:
        r.verdict = _verdict(r, floor)
    return [*results, floor]


def _train_one(name: str, cfg: Config, out: Path) -> RecipeResult:
    """One recipe's row; a run that fails (diverges, runs out of memory) becomes a FAIL row, not a lost table."""
    try:
        summary, metrics = train_and_score(cfg, out)
    except (VoxfastError, RuntimeError) as exc:
        return RecipeResult(name, float("nan"), float("nan"), float("nan"), verdict=f"FAIL: {exc}")
    return RecipeResult(name, metrics["eer"], metrics["min_dcf_0.01"], metrics["min_dcf_0.05"], summary["steps"],
                        summary["train_samples_per_s"], summary["epochs_done"], _last_accuracy(out / "metrics.jsonl"))


def _last_accuracy(metrics_file: Path) -> float | None:
    accuracy = None
    for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else []:
        accuracy = json.loads(line).get("acc", accuracy)
    return accuracy


def _verdict(r: RecipeResult, floor: RecipeResult) -> str:
    if r.verdict.startswith("FAIL"):
        return r.verdict
    unfit = r.train_acc is not None and r.train_acc < 0.05
    note = "; training accuracy < 5 %: look at it" if unfit else ""
    if r.eer >= floor.eer:
        return "FAIL: above the untrained floor" + note
    return f"ok ({r.eer / floor.eer:.2f} x the floor's EER){note}"


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
