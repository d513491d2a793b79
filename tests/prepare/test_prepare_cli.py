"""`voxfast prepare own SRC OUT` end to end: the lists load with the readers training and evaluation use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prepare.trees import own_tree, read_json
from voxfast.cli import main
from voxfast.data.manifest import read_trials, read_utterances


def test_prepare_own_from_folders_to_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = own_tree(tmp_path / "recordings", {f"speaker_{i}": {"day1": 2, "day2": 2} for i in range(6)})
    monkeypatch.chdir(tmp_path)  # relative SRC and OUT; the lists hold absolute paths
    rc = main(["prepare", "own", "recordings", "prepared", "--test-speakers", "2", "--trials", "20", "--seed", "3"])
    printed = capsys.readouterr().out
    out = tmp_path / "prepared"
    assert rc == 0
    assert f"use: data.train_list={out / 'train_list.txt'} eval.trials={out / 'trials.txt'}" in printed
    assert "same-session guard: 4 same-session pair(s) excluded" in printed
    assert "only 8 target pairs exist, fewer than the 10 asked" in printed
    monkeypatch.chdir(src)  # the lists work from anywhere
    train, trials = read_utterances(out / "train_list.txt"), read_trials(out / "trials.txt")
    assert len({u.spk for u in train}) == 4 and len(train) == 16
    assert sum(t.label for t in trials) == 8 and len(trials) == 18  # 2 x (C(4,2) - 2) target pairs exist, not 10
    report = read_json(out)
    assert set(report) == {"format", "kind", "sources", "options", "outputs", "counts", "problems", "overrides",
                           "summary"}
    assert report["kind"] == "own" and report["options"]["seed"] == 3 and report["problems"] == []
    assert report["counts"]["trials"]["own"]["same_session_pairs_excluded"] == 2 * 2  # 2 held out x 2 sessions x C(2,2)
    prepared = (out / "prepare.json").stat().st_mtime_ns
    assert prepared >= max((out / f).stat().st_mtime_ns for f in ("train_list.txt", "trials.txt"))


def test_a_user_error_is_one_line_and_leaves_no_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = own_tree(tmp_path / "recordings", {"a": {None: 2}, "b": {None: 2}})
    rc = main(["prepare", "own", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("voxfast: error: 2 speaker folder(s)") and err.count("\n") == 1
    assert not (tmp_path / "out" / "prepare.json").exists()
