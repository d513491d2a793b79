import json

import numpy as np
import pytest

import voxfast.bench.eval as bench_eval
from voxfast.bench.eval import (
    EvalBenchRow,
    format_eval_results,
    run_eval_bench,
    synthetic_trials,
    voxceleb_trainer_metrics,
)
from voxfast.cli import main
from voxfast.eval.metrics import verification_metrics

TINY = {"trials": 10_000, "score_trials": 5_000, "embeddings": 1_000, "dim": 32, "asnorm_trials": 2_000,
        "asnorm_utterances": 500, "cohort": 400, "top_n": 50}


@pytest.fixture(scope="module")
def tiny_rows():
    pytest.importorskip("sklearn")
    return run_eval_bench(**TINY)


def test_rows_cover_the_three_tasks_with_measured_ratio(tiny_rows):
    baseline, ours, cosine, asnorm = tiny_rows
    assert "voxceleb_trainer" in baseline.name and "voxfast" in ours.name
    assert "10,000 trials, 50 % targets" in ours.name
    assert all(r.seconds > 0 for r in tiny_rows)
    assert ours.speedup == pytest.approx(baseline.seconds / ours.seconds)
    assert ours.target_s == pytest.approx(3.0 * 10_000 / 10_000_000)  # 3 s per 10 M trials
    assert ours.passed == (ours.seconds <= ours.target_s and ours.speedup >= 5.0)
    assert cosine.target_s == pytest.approx(2.0 * 5_000 / 1_000_000) and cosine.passed == (cosine.seconds <= 0.01)
    assert "AS-norm top-50" in asnorm.name and "500 utts" in asnorm.name
    assert asnorm.target_s == pytest.approx(10.0 * 500 * 400 / (25_000 * 20_000))  # scales with utts x cohort
    assert asnorm.passed == (asnorm.seconds <= asnorm.target_s)
    # Both routes computed figures for the same scores.
    assert ours.detail["min_dcf_0.01"] == pytest.approx(baseline.detail["min_dcf_0.01"], abs=1e-9)


def test_table_and_json_carry_every_row(tiny_rows):
    table = format_eval_results(tiny_rows, as_json=False)
    for row in tiny_rows:
        assert row.name in table
    assert "pass" in table or "FAIL" in table
    parsed = json.loads(format_eval_results(tiny_rows, as_json=True))
    assert [r["name"] for r in parsed] == [r.name for r in tiny_rows]
    assert parsed[1]["speedup"] == tiny_rows[1].speedup and parsed[1]["passed"] == tiny_rows[1].passed
    assert parsed[0]["passed"] is None


@pytest.mark.parametrize(("seconds", "speedup", "passed"), [(1.0, 6.0, True), (4.0, 6.0, False), (1.0, 4.0, False)])
def test_a_row_passes_only_within_its_time_and_speedup_targets(seconds, speedup, passed):
    assert EvalBenchRow("x", seconds, 3.0, speedup, 5.0).passed is passed


def test_voxceleb_trainer_route_agrees_with_voxfast_without_ties():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    labels = rng.random(20_000) < 0.3
    scores = rng.normal(size=20_000) + 2.0 * labels
    theirs = voxceleb_trainer_metrics(scores.tolist(), labels.astype(int).tolist())
    ours = verification_metrics(scores, labels)
    for p in ("min_dcf_0.01", "min_dcf_0.05"):
        assert theirs[p] == pytest.approx(ours[p], rel=1e-12)
    # Their EER is the ROC point nearest the crossing, not interpolated: within one step of ours.
    assert abs(theirs["eer"] - ours["eer"]) <= 100 / labels.sum()


def test_synthetic_trials_have_the_asked_target_share():
    scores, labels = synthetic_trials(100_000, 0.01)
    assert scores.dtype == np.float32 and labels.dtype == bool
    assert labels.mean() == pytest.approx(0.01, abs=0.002)
    assert 0.5 < verification_metrics(scores, labels)["eer"] < 3.0


def test_bench_eval_command(monkeypatch, capsys):
    pytest.importorskip("sklearn")
    calls = []

    def tiny(trials, target_fraction):
        calls.append((trials, target_fraction))
        return run_eval_bench(trials, target_fraction, **{k: v for k, v in TINY.items() if k != "trials"})

    monkeypatch.setattr(bench_eval, "run_eval_bench", tiny)
    assert main(["bench-eval", "--trials", "5000", "--target-fraction", "0.1", "--json"]) == 0
    assert calls == [(5000, 0.1)]
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert main(["bench-eval", "--target-fraction", "1.5"]) == 2
    assert "--target-fraction" in capsys.readouterr().err
