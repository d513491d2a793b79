"""Cross-validation of the classification tasks: folds cut once, each trained by the one Trainer into RUN/fold_K/.

A small data set (a few subjects of EEG, a few hundred images) gives one validation figure that depends on which
examples happened to be held out; k folds give k figures, and their mean and spread say how far to trust it. The
folds are cut from labels and groups alone (`ClassificationTask.fold_targets`), before any task is built, so every
fold's task reads, filters and standardises its data exactly as a plain run does, with training statistics of its
own training indices only. Group folds never put one group (subject, run, session) on both sides: windows of one
subject are far more alike than windows of one class, so a group on both sides would measure memorisation of the
subject. `train.cv_folds=-1` holds out one group per fold (leave-one-group-out).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from voxfast.config import Config, save_config
from voxfast.errors import ConfigError, VoxfastError
from voxfast.fileio import atomic_text
from voxfast.tasks import task_class
from voxfast.tasks.classification import ClassificationTask, Split
from voxfast.train.distributed import DistInfo

log = logging.getLogger(__name__)

LEAVE_ONE_GROUP_OUT = -1


# ----------------------------------------------------------------------------------------------- folds


def group_kfold(groups: np.ndarray, k: int, seed: int) -> list[Split]:
    """k (train, validation) splits in which every group lies in exactly one validation fold.

    Groups are dealt largest first, each to the fold with the fewest examples so far (as scikit-learn's GroupKFold),
    so folds stay close in size however unequal the groups; the seed orders groups of equal size.
    """
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if k > len(names):
        raise ConfigError(f"train.cv_folds={k}: only {len(names)} groups (subjects or runs) to share among {k} "
                          f"folds; use at most {len(names)} folds, or train.cv_folds=-1 (leave one group out)")
    shuffled = np.random.default_rng(seed).permutation(len(names))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    fold_of_group, load = np.empty(len(names), dtype=np.int64), np.zeros(k, dtype=np.int64)
    for g in order:
        fold_of_group[g] = int(np.argmin(load))
        load[fold_of_group[g]] += sizes[g]
    return _splits(fold_of_group[inverse], k)


def leave_one_group_out(groups: np.ndarray) -> list[Split]:
    """One fold per group (in sorted group order), validated on that group alone."""
    names, inverse = np.unique(groups, return_inverse=True)
    if len(names) < 2:
        raise ConfigError(f"train.cv_folds=-1 (leave one group out) needs at least 2 groups, found {len(names)}")
    return _splits(inverse, len(names))


def stratified_kfold(labels: np.ndarray, k: int, seed: int) -> list[Split]:
    """k splits whose validation folds keep the class proportions (each class's examples dealt round the folds).

    Each class continues dealing at the fold after the one the previous class ended on, so fold sizes differ by at
    most one example overall. A class with fewer than k examples would be missing from some folds' validation (and,
    with one example, from a fold's training), so it is refused.
    """
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < k:
        raise ConfigError(f"train.cv_folds={k}: class {classes[np.argmin(counts)].item()!r} has only {counts.min()} "
                          f"examples, fewer than the {k} folds; use at most {counts.min()} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return _splits(fold, k)


def _splits(fold: np.ndarray, k: int) -> list[Split]:
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]


def make_folds(labels: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> list[Split]:
    """The folds of `train.cv_folds`: by group when the task gives groups, else stratified by class."""
    if folds == LEAVE_ONE_GROUP_OUT:
        if groups is None:
            raise ConfigError("train.cv_folds=-1 (leave one group out) needs groups (EEG: `groups` in the .npz or "
                              "one per EDF file, and eeg.split=group); images have none, use k >= 2 folds")
        return leave_one_group_out(groups)
    if folds < 2:
        raise ConfigError(f"train.cv_folds: 0 (off), -1 (leave one group out) or k >= 2 folds, got {folds}")
    return group_kfold(groups, folds, seed) if groups is not None else stratified_kfold(labels, folds, seed)


# ----------------------------------------------------------------------------------------------- runner


def run_cv(cfg: Config, out: Path, task_name: str, info: DistInfo, resume: str | None = None,
           evaluate: bool = True, profile: tuple[int, int] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one model per fold into out/fold_K/ with the same Trainer, validate each, write out/cv.{json,md}.

    Every rank cuts the same folds (they depend on labels, groups and train.seed only) and trains every fold; rank
    0 validates, fits the baseline (train.baseline) and writes the tables. `resume="auto"` continues each fold from
    its own last.pt (a finished fold is only validated again).
    """
    from voxfast.tasks.baselines import run_baseline
    from voxfast.train.trainer import Trainer

    cls = task_class(task_name)
    if not (isinstance(cls, type) and issubclass(cls, ClassificationTask) and cls.takes_split):
        raise ConfigError(f"train.cv_folds: the {task_name} task does not take explicit train/validation splits "
                          "(ClassificationTask.takes_split); set train.cv_folds=0")
    if resume not in (None, "auto"):
        raise ConfigError("--resume with train.cv_folds: only `auto` (each fold continues from its own last.pt)")
    if not evaluate:  # a table of folds without the model's figures would read as if the model had none
        raise ConfigError("--no-eval with train.cv_folds: cross-validation is the evaluation; drop --no-eval "
                          "(or set train.cv_folds=0)")
    if resume is None and any(out.glob("fold_*/checkpoints/*.pt")):  # never train over finished folds afresh
        raise VoxfastError(f"train.out_dir {out} already holds cross-validation folds (fold_K/checkpoints/); "
                           "--resume auto continues them, another train.out_dir starts anew")
    labels, groups = cls.fold_targets(cfg)
    folds = make_folds(labels, groups, cfg.train.cv_folds, cfg.train.seed % 2**32)
    rows, interrupted = [], None
    for k, (train, val) in enumerate(folds, start=1):
        fold_out = out / f"fold_{k}"
        fold_cfg = replace(cfg, train=replace(cfg.train, out_dir=str(fold_out)))
        if info.is_main:
            fold_out.mkdir(parents=True, exist_ok=True)
            save_config(fold_cfg, fold_out / "config.yaml")
            _write(fold_out / "split.json", json.dumps(_split_record(train, val, groups)))
        log.info("fold %d of %d: %d training and %d validation examples", k, len(folds), len(train), len(val))
        task = cls(fold_cfg, info.rank, info.world, split=(train, val))
        trainer = Trainer(task, fold_cfg.train, fold_out, info, profile)
        last = trainer.checkpoint_dir / "last.pt"
        if resume == "auto" and last.is_file():
            trainer.load(str(last))
        summary = trainer.fit()
        if summary["interrupted"]:
            interrupted = summary["interrupted"]
            break
        row: dict[str, Any] = {"fold": k, "n_train": len(train), "n_val": len(val)}
        if info.is_main:
            if groups is not None:
                row["val_groups"] = [str(g) for g in np.unique(groups[val])]
            row["model"] = trainer.evaluate()
            if cfg.train.baseline:
                row["baseline"] = run_baseline(task)
        rows.append(row)
        del trainer, task
    summary = {"folds": len(folds), "folds_done": len(rows), "interrupted": interrupted}
    if not info.is_main or interrupted:
        return summary, {}
    report = cv_report(rows, cfg.train.cv_folds)
    write_report(out, report)
    return summary, {"cv": report}


def _split_record(train: np.ndarray, val: np.ndarray, groups: np.ndarray | None) -> dict[str, Any]:
    record: dict[str, Any] = {"train": train.tolist(), "val": val.tolist()}
    if groups is not None:
        record["val_groups"] = [str(g) for g in np.unique(groups[val])]
    return record


# ----------------------------------------------------------------------------------------------- report


def scalar_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of an evaluate() result as columns: scalars as they are, per-class lists as `key/class` (None,
    a class absent from a fold's validation, as NaN, which the mean and std skip)."""
    classes = [str(c) for c in result.get("classes", [])]
    out: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
        elif isinstance(value, list) and key != "classes" and len(value) == len(classes):
            for name, v in zip(classes, value, strict=True):
                if v is None or isinstance(v, int | float):
                    out[f"{key}/{name}"] = math.nan if v is None else float(v)
    return out


def cv_report(rows: list[dict[str, Any]], folds: int) -> dict[str, Any]:
    """Per-fold figures of the model (and baseline) plus their mean and sample standard deviation (ddof 1)."""
    report: dict[str, Any] = {"cv_folds": folds, "folds": rows}
    for who in ("model", "baseline"):
        tables = [scalar_metrics(r[who]) for r in rows if who in r]
        if not tables:
            continue
        keys = list(dict.fromkeys(k for t in tables for k in t))
        values = {k: np.array([t.get(k, math.nan) for t in tables]) for k in keys}
        report[who] = {"mean": {k: _nan_to_none(_nanmean(v)) for k, v in values.items()},
                       "std": {k: _nan_to_none(_nanstd(v)) for k, v in values.items()}}
    return report


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def _nanstd(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1)) if len(v) > 1 else math.nan


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x  # JSON has no NaN


def write_report(out: Path, report: dict[str, Any]) -> None:
    """out/cv.json (everything) and out/cv.md (folds as rows, metrics as columns, then mean and std rows)."""
    _write(Path(out) / "cv.json", json.dumps(report, indent=2))
    _write(Path(out) / "cv.md", format_table(report) + "\n")


def _write(path: Path, text: str) -> None:
    with atomic_text(path) as f:
        f.write(text)


def _columns(report: dict[str, Any]) -> list[tuple[str, str]]:
    cols = []
    for who in ("model", "baseline"):
        if who in report:
            cols += [(who, k) for k in report[who]["mean"] if k != "n_val"]
    return cols


def format_table(report: dict[str, Any]) -> str:
    """The Markdown table of cv.md; baseline columns are prefixed `baseline`."""
    cols = _columns(report)
    head = ["fold", "n_train", "n_val"] + [k if who == "model" else f"baseline {k}" for who, k in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["folds"]:
        cells = [str(row["fold"]), str(row["n_train"]), str(row["n_val"])]
        cells += [_cell(scalar_metrics(row.get(who, {})).get(k)) for who, k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    for stat in ("mean", "std"):
        cells = [stat, "", ""] + [_cell(report[who][stat].get(k)) for who, k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def format_summary(report: dict[str, Any], keys: tuple[str, ...] = ("accuracy", "balanced_accuracy")) -> str:
    """What `voxfast train` prints: per fold and mean ± std of `keys`, the baseline's beside the model's."""
    lines = []
    for row in report["folds"]:
        parts = [f"fold {row['fold']} ({row['n_val']} val)"]
        for who in ("model", "baseline"):
            if who in row:
                m = row[who]
                parts.append(f"{who} " + ", ".join(f"{k} {_cell(m.get(k))}" for k in keys if k in m))
        lines.append("  ".join(parts))
    for who in ("model", "baseline"):
        if who in report:
            mean, std = report[who]["mean"], report[who]["std"]
            figures = ", ".join(f"{k} {_cell(mean.get(k))} ± {_cell(std.get(k)) or '-'}" for k in keys if k in mean)
            lines.append(f"{who} mean ± std over {len(report['folds'])} folds: {figures}")
    return "\n".join(lines)
