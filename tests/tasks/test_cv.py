"""Cross-validation: group folds keep groups apart, stratified folds keep class shares, the runner trains every fold
with the one Trainer and writes the per-fold table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from voxfast.config import Config, EEGConfig, ImageConfig, TrainConfig
from voxfast.errors import ConfigError, VoxfastError
from voxfast.tasks import cv, eeg, image, run
from voxfast.tasks.classification import ClassificationTask, Split
from voxfast.train.distributed import DistInfo

# ----------------------------------------------------------------------------------------------- folds

UNEQUAL = np.repeat(np.array(["s1", "s2", "s3", "s4", "s5", "s6", "s7"]), [40, 3, 17, 8, 25, 1, 12])


def _check_partition(folds: list[Split], n: int) -> None:
    """Every example validated exactly once, and training is the rest of the data."""
    seen = np.concatenate([val for _, val in folds])
    assert np.array_equal(np.sort(seen), np.arange(n))
    for train, val in folds:
        assert np.array_equal(np.sort(np.r_[train, val]), np.arange(n))


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_group_folds_never_put_a_group_on_both_sides(seed: int, k: int) -> None:
    groups = np.random.default_rng(seed).permutation(UNEQUAL)
    folds = cv.group_kfold(groups, k, seed)
    assert len(folds) == k
    _check_partition(folds, len(groups))
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])
        assert len(val) > 0
    owners = [np.flatnonzero([g in set(groups[val]) for _, val in folds]) for g in np.unique(groups)]
    assert all(len(o) == 1 for o in owners)  # each group validated in exactly one fold


def test_group_folds_balance_unequal_groups_by_examples() -> None:
    sizes = sorted(len(val) for _, val in cv.group_kfold(UNEQUAL, 3, 0))
    # 106 windows, largest group first to the emptiest fold: 40 | 25 + 8 | 17 + 12 + 3 + 1 (the 40 cannot be cut)
    assert sizes == [33, 33, 40]


def test_more_folds_than_groups_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"train.cv_folds=8: only 7 groups .* at most 7 folds"):
        cv.make_folds(np.zeros(len(UNEQUAL), dtype=int), UNEQUAL, 8, 0)


def test_leave_one_group_out_holds_out_each_group_alone() -> None:
    folds = cv.make_folds(np.zeros(len(UNEQUAL), dtype=int), UNEQUAL, cv.LEAVE_ONE_GROUP_OUT, 0)
    assert [set(UNEQUAL[val]) for _, val in folds] == [{g} for g in np.unique(UNEQUAL)]
    _check_partition(folds, len(UNEQUAL))
    with pytest.raises(ConfigError, match=r"leave one group out.*needs groups"):
        cv.make_folds(np.zeros(10, dtype=int), None, -1, 0)
    with pytest.raises(ConfigError, match=r"0 \(off\), -1 .* or k >= 2"):
        cv.make_folds(np.zeros(10, dtype=int), None, 1, 0)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_stratified_folds_keep_the_class_proportions(k: int) -> None:
    labels = np.random.default_rng(3).permutation(np.repeat([0, 1, 2], [60, 25, 10]))
    folds = cv.stratified_kfold(labels, k, seed=11)
    _check_partition(folds, len(labels))
    for _, val in folds:
        counts = np.bincount(labels[val], minlength=3)
        assert np.all(np.abs(counts - np.array([60, 25, 10]) / k) <= 1), counts
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    assert [v.tolist() for _, v in folds] == [v.tolist() for _, v in cv.stratified_kfold(labels, k, seed=11)]


def test_a_class_smaller_than_the_fold_count_is_refused() -> None:
    labels = np.repeat([0, 1], [20, 3])
    with pytest.raises(ConfigError, match="class 1 has only 3 examples, fewer than the 4 folds"):
        cv.make_folds(labels, None, 4, 0)


# ----------------------------------------------------------------------------------------------- runner

N, CHANNELS, SAMPLES = 48, 4, 32


def _tiny_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes that differ in the variance of channel 0 vs 1 (learnable from log-variances); 6 subjects."""
    rng = np.random.default_rng(0)
    y = np.arange(N) % 2
    x = rng.standard_normal((N, CHANNELS, SAMPLES))
    x[:, 0] *= np.where(y == 0, 3.0, 0.5)[:, None]
    x[:, 1] *= np.where(y == 0, 0.5, 3.0)[:, None]
    return x.astype(np.float32), y.astype(np.int64), np.repeat(np.arange(6), N // 6)


class _LogVariance(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.var(-1).log()


class TinyTask(ClassificationTask):
    """Windows in memory with EEG's attribute names (so the CSP + LDA baseline reads it), split by `choose_split`."""

    name = "eeg"
    unit = "windows"
    takes_split = True

    def __init__(self, cfg: Config, rank: int = 0, world: int = 1, split: Split | None = None) -> None:
        super().__init__(cfg, rank, world, split)
        x, y, _ = _tiny_data()
        self.train_rows, self.val_rows = self.choose_split(len(y), lambda: (np.arange(0, N, 2), np.arange(1, N, 2)))
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.val_labels, self.classes = y[self.val_rows], ["a", "b"]
        self.check_batches("tiny")

    @classmethod
    def fold_targets(cls, cfg: Config) -> tuple[np.ndarray, np.ndarray | None]:
        _, y, groups = _tiny_data()
        return y, groups

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(_LogVariance(), nn.Linear(CHANNELS, 2))

    def gather(self, rows: np.ndarray, number: int, epoch: int) -> dict[str, Any]:
        index = torch.from_numpy(rows)
        return {"x": self.x[index], "label": self.y[index]}

    def inputs(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        return batch["x"].to(device)

    def eval_inputs(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.x[torch.from_numpy(self.val_rows)[positions]].to(device)


def _config(out: Path, **train: Any) -> Config:
    fields = {"epochs": 3, "global_batch": 8, "micro_batch": 8, "lr": 0.05, "device": "cpu", "precision": "fp32",
              "tensorboard": False, "log_every": 1000, "cudnn_benchmark": False, "out_dir": str(out), **train}
    return Config(train=TrainConfig(**fields))


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (cv, run):
        monkeypatch.setattr(module, "task_class", lambda name: TinyTask)
    monkeypatch.setattr(run, "build_task", lambda name, cfg, rank=0, world=1: TinyTask(cfg, rank, world))


def test_an_explicit_split_is_used_and_checked() -> None:
    cfg = _config(Path("unused"))
    task = TinyTask(cfg, split=(np.arange(8, N), np.arange(8)))
    assert task.val_rows.tolist() == list(range(8)) and len(task.train_rows) == N - 8
    assert TinyTask(cfg).val_rows.tolist() == list(range(1, N, 2))  # no split: the task's own
    with pytest.raises(VoxfastError, match="2 windows are in both training and validation"):
        TinyTask(cfg, split=(np.arange(N), np.arange(2)))
    with pytest.raises(VoxfastError, match=r"validation indices must lie in \[0, 48\)"):
        TinyTask(cfg, split=(np.arange(8), np.array([48])))


def test_cv_trains_every_fold_and_writes_the_table(tiny: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary, metrics = run.train_and_score(_config(out, cv_folds=3, baseline=True), out, task_name="tiny")
    assert summary == {"folds": 3, "folds_done": 3, "interrupted": None}
    report = json.loads((out / "cv.json").read_text())
    assert report == json.loads(json.dumps(metrics["cv"]))
    assert [r["fold"] for r in report["folds"]] == [1, 2, 3]
    val_groups = [set(r["val_groups"]) for r in report["folds"]]
    assert set().union(*val_groups) == {str(g) for g in range(6)} and sum(map(len, val_groups)) == 6
    for k, row in enumerate(report["folds"], start=1):
        assert (out / f"fold_{k}" / "checkpoints" / "last.pt").is_file()
        split = json.loads((out / f"fold_{k}" / "split.json").read_text())
        assert len(split["val"]) == row["n_val"] == row["model"]["n_val"] == 16
        assert row["baseline"]["method"] == "csp_lda" and row["baseline"]["accuracy"] > 0.9
    accuracies = np.array([r["model"]["accuracy"] for r in report["folds"]])
    assert report["model"]["mean"]["accuracy"] == pytest.approx(accuracies.mean())
    assert report["model"]["std"]["accuracy"] == pytest.approx(accuracies.std(ddof=1))
    assert report["model"]["mean"]["accuracy"] > 0.8
    table = (out / "cv.md").read_text().splitlines()
    assert table[0].startswith("| fold | n_train | n_val | accuracy | balanced_accuracy |")
    assert "baseline balanced_accuracy" in table[0]
    assert [line.split("|")[1].strip() for line in table[2:]] == ["1", "2", "3", "mean", "std"]
    printed = cv.format_summary(report)
    assert "model mean ± std over 3 folds: accuracy" in printed and "baseline mean ± std" in printed


def test_resume_auto_only_revalidates_finished_folds(tiny: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(out, cv_folds=2, epochs=1)
    first = run.train_and_score(cfg, out, task_name="tiny")[1]["cv"]
    again = run.train_and_score(cfg, out, resume="auto", task_name="tiny")[1]["cv"]
    assert [r["model"] for r in again["folds"]] == [r["model"] for r in first["folds"]]
    with pytest.raises(ConfigError, match="only `auto`"):
        cv.run_cv(cfg, out, "tiny", DistInfo(), resume="x.pt")
    with pytest.raises(VoxfastError, match="already holds cross-validation folds"):
        run.train_and_score(cfg, out, task_name="tiny")


def test_tasks_that_take_no_split_are_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the speaker task does not take explicit train/validation splits"):
        cv.run_cv(_config(tmp_path, cv_folds=2), tmp_path, "speaker", DistInfo())


def test_no_eval_is_refused_with_cross_validation(tiny: None, tmp_path: Path) -> None:
    """A fold table without the model's figures would read as if there were none (it happened once)."""
    with pytest.raises(ConfigError, match=r"--no-eval with train\.cv_folds: cross-validation is the evaluation"):
        cv.run_cv(_config(tmp_path, cv_folds=2), tmp_path / "run", "tiny", DistInfo(), evaluate=False)


def test_report_mean_and_std_skip_classes_missing_from_a_fold() -> None:
    rows = [{"fold": 1, "n_train": 4, "n_val": 2, "model": {"accuracy": 0.5, "classes": ["a", "b"],
                                                            "per_class_accuracy": [1.0, None]}},
            {"fold": 2, "n_train": 4, "n_val": 2, "model": {"accuracy": 1.0, "classes": ["a", "b"],
                                                            "per_class_accuracy": [0.5, 1.0]}}]
    report = cv.cv_report(rows, 2)
    assert report["model"]["mean"] == {"accuracy": 0.75, "per_class_accuracy/a": 0.75, "per_class_accuracy/b": 1.0}
    assert report["model"]["std"]["per_class_accuracy/b"] is None  # one fold only: no spread
    assert "| 1 | 4 | 2 | 0.5000 | 1.0000 |  |" in cv.format_table(report)


# ----------------------------------------------------------------------------------------------- the real tasks
# They run once EEGTask and ImageTask take `split` (takes_split; the hook in voxfast/tasks/eeg.py and image.py).


@pytest.mark.skipif(not eeg.EEGTask.takes_split, reason="EEGTask does not take explicit splits yet")
def test_eeg_cv_holds_out_whole_subjects_and_runs_the_baseline(tmp_path: Path) -> None:
    data = eeg.make_demo_data(tmp_path, seed=0, subjects=2, trials_per_class=4)
    out = tmp_path / "run"
    cfg = Config(eeg=EEGConfig(data=str(data)), train=_config(out, cv_folds=-1, baseline=True, epochs=1).train)
    report = run.train_and_score(cfg, out, task_name="eeg")[1]["cv"]
    groups = np.load(data)["groups"]
    for k, row in enumerate(report["folds"], start=1):
        split = json.loads((out / f"fold_{k}" / "split.json").read_text())
        assert not set(groups[split["train"]]) & set(groups[split["val"]])
        assert row["model"]["n_val"] == row["baseline"]["n_val"] == len(split["val"]) == 16  # one subject
    assert len(report["folds"]) == 2 and {"mean", "std"} <= report["baseline"].keys()


@pytest.mark.skipif(not image.ImageTask.takes_split, reason="ImageTask does not take explicit splits yet")
def test_image_cv_folds_are_stratified_and_val_data_is_refused(tmp_path: Path) -> None:
    data = image.make_demo_data(tmp_path, seed=0, per_class=4, size=8)
    out = tmp_path / "run"
    train = _config(out, cv_folds=2, baseline=True, epochs=1).train
    cfg = Config(image=ImageConfig(data=str(data), width=8), train=train)
    report = run.train_and_score(cfg, out, task_name="image")[1]["cv"]
    assert [r["n_val"] for r in report["folds"]] == [20, 20]
    assert all(r["model"]["per_class_accuracy"].count(None) == 0 for r in report["folds"])  # every class validated
    cfg.image.val_data = str(data)
    with pytest.raises(ConfigError, match=r"image\.val_data"):
        run.train_and_score(cfg, tmp_path / "other", task_name="image")
