"""EER / minDCF against a brute-force reference written from the definition in plain Python.

The reference enumerates every candidate threshold t (each distinct score, plus -inf and +inf), accepts
a trial iff score >= t, and counts misses and false alarms with exact fractions; EER is the crossing of
the linear interpolation between consecutive operating points, minDCF the minimum over them.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
from fractions import Fraction

import numpy as np
import pytest

from voxfast.cli import main
from voxfast.errors import VoxfastError
from voxfast.eval.det import det_curve, plot_det
from voxfast.eval.metrics import compute_eer, compute_min_dcf, error_rates, verification_metrics

# --------------------------------------------------------------------------------------------------
# Reference implementation (plain Python, exact arithmetic, O(trials x thresholds)).


def ref_points(scores, labels):
    """[(t, P_miss, P_fa)] for t in -inf, sorted distinct scores, +inf; accept iff score >= t."""
    tar = [s for s, lab in zip(scores, labels, strict=True) if lab]
    non = [s for s, lab in zip(scores, labels, strict=True) if not lab]
    points = []
    for t in [-math.inf, *sorted(set(scores)), math.inf]:
        p_miss = Fraction(sum(1 for s in tar if s < t), len(tar))
        p_fa = Fraction(sum(1 for s in non if s >= t), len(non))
        points.append((t, p_miss, p_fa))
    return points


def ref_rates_at(scores, labels, t):
    """(P_miss, P_fa) when accepting score >= t."""
    tar = [s for s, lab in zip(scores, labels, strict=True) if lab]
    non = [s for s, lab in zip(scores, labels, strict=True) if not lab]
    return Fraction(sum(s < t for s in tar), len(tar)), Fraction(sum(s >= t for s in non), len(non))


def ref_eer(scores, labels):
    """(EER, score of the group whose rejection crosses the curves) by scanning consecutive points."""
    points = ref_points(scores, labels)
    for (t0, m0, f0), (_, m1, f1) in itertools.pairwise(points):
        if m1 >= f1:
            # m0 + a (m1 - m0) == f0 + a (f1 - f0)
            a = (f0 - m0) / ((m1 - m0) - (f1 - f0))
            return m0 + a * (m1 - m0), t0
    raise AssertionError("curves never cross")


def ref_dcf(p_miss, p_fa, p, c_miss=1.0, c_fa=1.0):
    return (c_miss * float(p_miss) * p + c_fa * float(p_fa) * (1 - p)) / min(c_miss * p, c_fa * (1 - p))


def ref_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    return min(ref_dcf(m, f, p, c_miss, c_fa) for _, m, f in ref_points(scores, labels))


def ref_min_dcf_threshold(scores, labels, p, c_miss=1.0, c_fa=1.0):
    """Threshold of the first (lowest) operating point with the minimal (unnormalised) cost."""
    points = ref_points(scores, labels)
    costs = [c_miss * float(m) * p + c_fa * float(f) * (1 - p) for _, m, f in points]
    t = points[costs.index(min(costs))][0]
    if t == -math.inf:  # accepting everything: the same point as the lowest score
        return min(scores)
    return float(np.nextafter(max(scores), np.inf)) if t == math.inf else t


def check_against_reference(scores, labels):
    scores_arr, labels_arr = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    eer, thr = compute_eer(scores_arr, labels_arr)
    want_eer, want_thr = ref_eer(scores, labels)
    assert eer == pytest.approx(float(want_eer), abs=1e-12)
    assert thr == want_thr
    # Documented meaning of the EER threshold: accepting >= thr leaves P_miss <= EER <= P_fa.
    m, f = ref_rates_at(scores, labels, thr)
    assert float(m) - 1e-12 <= eer <= float(f) + 1e-12
    for p, c_miss, c_fa in [(0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.5, 1.0, 1.0), (0.01, 10.0, 1.0), (0.3, 1.0, 5.0)]:
        dcf, dcf_thr = compute_min_dcf(scores_arr, labels_arr, p, c_miss, c_fa)
        want = ref_min_dcf(scores, labels, p, c_miss, c_fa)
        assert dcf == pytest.approx(want, rel=1e-12, abs=1e-12)
        # The returned threshold is the lowest operating point attaining the minimum.
        assert dcf_thr == ref_min_dcf_threshold(scores, labels, p, c_miss, c_fa)


def random_trials(rng: random.Random, n: int, decimals: int, p_target: float = 0.5):
    labels = [int(rng.random() < p_target) for _ in range(n)]
    labels[0], labels[1] = 1, 0  # both classes present
    scores = [round(rng.gauss(0.0, 1.0) + 0.8 * lab, decimals) for lab in labels]
    return scores, labels


# --------------------------------------------------------------------------------------------------
# Agreement with the reference.


@pytest.mark.parametrize("seed", range(25))
def test_matches_reference_with_heavy_ties(seed):
    rng = random.Random(seed)
    scores, labels = random_trials(rng, rng.randint(2, 150), decimals=1, p_target=rng.uniform(0.1, 0.9))
    assert len(set(scores)) < len(scores) or len(scores) < 15  # ties really occur
    check_against_reference(scores, labels)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_without_ties(seed):
    rng = random.Random(100 + seed)
    scores, labels = random_trials(rng, 120, decimals=9)
    check_against_reference(scores, labels)


@pytest.mark.parametrize(
    ("scores", "labels"),
    [
        ([0.3, 0.5], [1, 0]),
        ([0.5, 0.3], [1, 0]),
        ([0.4, 0.4], [1, 0]),
        ([0.1, 0.2, 0.3], [1, 0, 1]),
        ([0.1, 0.2, 0.3], [0, 1, 0]),
        ([0.2, 0.2, 0.3], [1, 0, 0]),
        ([0.2, 0.2, 0.2], [1, 0, 1]),
    ],
)
def test_tiny_lists(scores, labels):
    check_against_reference(scores, labels)


def test_heavy_imbalance_one_target():
    rng = random.Random(7)
    non = [round(rng.gauss(0, 1), 2) for _ in range(1000)]
    for target_score in (-5.0, non[3], 0.0, 1.5, 5.0):
        check_against_reference([target_score, *non], [1] + [0] * 1000)


def float_reference(scores, labels):
    """(EER, EER threshold, {p: minDCF}) by a Python loop over every distinct score, counting in float64.

    The same definition as :func:`ref_points`, with numpy counts per threshold so that 10 000 trials take
    a fraction of a second.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    tar, non = scores[labels], scores[~labels]
    points = []
    for t in [*np.unique(scores), np.inf]:
        points.append((t, np.count_nonzero(tar < t) / tar.size, np.count_nonzero(non >= t) / non.size))
    dcf = {p: min(m * p + f * (1 - p) for _, m, f in points) / min(p, 1 - p) for p in (0.01, 0.05)}
    for (t0, m0, f0), (_, m1, f1) in itertools.pairwise(points):
        if m1 >= f1:
            return m0 + (f0 - m0) / ((m1 - m0) - (f1 - f0)) * (m1 - m0), t0, dcf
    raise AssertionError("curves never cross")


def check_against_float_reference(scores, labels):
    eer, thr, dcf = float_reference(scores, labels)
    out = verification_metrics(np.asarray(scores), np.asarray(labels))
    assert out["eer"] == pytest.approx(100 * eer, abs=1e-10)
    assert out["eer_threshold"] == thr
    for p in (0.01, 0.05):
        assert out[f"min_dcf_{p:g}"] == pytest.approx(dcf[p], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("target_is_single", [True, False])
def test_heavy_imbalance_one_against_ten_thousand(target_is_single):
    rng = np.random.default_rng(8)
    many = np.round(rng.normal(size=10_000), 2)
    for single in (-5.0, many[3], 0.0, 1.5, 5.0):
        scores = np.append(single, many)
        labels = np.zeros(10_001, dtype=np.int64)
        labels[0] = 1
        check_against_float_reference(scores, labels if target_is_single else 1 - labels)


@pytest.mark.parametrize("target_fraction", [0.02, 0.5, 0.98])
def test_large_tied_lists_match_float_reference(target_fraction):
    rng = np.random.default_rng(int(target_fraction * 100))
    labels = (rng.random(5000) < target_fraction).astype(np.int64)
    scores = np.round(rng.normal(size=5000) + 1.5 * labels, 2)
    check_against_float_reference(scores, labels)


def test_float32_scores_give_the_float64_result():
    rng = np.random.default_rng(9)
    labels = rng.random(20_000) < 0.3
    scores = (np.round(rng.normal(size=20_000), 3) + labels).astype(np.float32)
    assert verification_metrics(scores, labels) == verification_metrics(scores.astype(np.float64), labels)


@pytest.mark.parametrize("target_fraction", [0.01, 0.5, 0.9])
def test_eer_agrees_with_sklearn_roc_curve_without_ties(target_fraction):
    roc_curve = pytest.importorskip("sklearn.metrics").roc_curve
    brentq = pytest.importorskip("scipy.optimize").brentq
    rng = np.random.default_rng(10)
    labels = (rng.random(50_000) < target_fraction).astype(np.int64)
    scores = rng.normal(size=50_000) + 2.0 * labels
    assert np.unique(scores).size == scores.size
    fpr, tpr, _ = roc_curve(labels, scores)
    # The usual ROC-based EER: where the piecewise-linear ROC meets the line P_fa = P_miss.
    want = brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0)
    assert verification_metrics(scores, labels)["eer"] == pytest.approx(100 * want, abs=1e-4)


def test_perfect_separation_gives_zero():
    scores = [0.1, 0.2, 0.2, 0.3, 0.8, 0.9, 0.9]
    labels = [0, 0, 0, 0, 1, 1, 1]
    eer, _ = compute_eer(np.array(scores), np.array(labels))
    assert eer == 0.0
    assert compute_min_dcf(np.array(scores), np.array(labels), 0.01)[0] == 0.0
    check_against_reference(scores, labels)


def test_fully_inverted_gives_hundred_percent():
    scores = [0.1, 0.2, 0.2, 0.3, 0.8, 0.9, 0.9]
    labels = [1, 1, 1, 1, 0, 0, 0]
    eer, _ = compute_eer(np.array(scores), np.array(labels))
    assert eer == 1.0
    # No threshold beats a constant decision, so the normalised cost is exactly 1.
    assert compute_min_dcf(np.array(scores), np.array(labels), 0.05)[0] == pytest.approx(1.0)
    check_against_reference(scores, labels)


def test_all_scores_tied_is_chance():
    # One tie group: the only operating points are "accept all" and "reject all", whatever the order.
    eer, thr = compute_eer(np.full(4, 0.5), np.array([1, 0, 1, 0]))
    assert eer == 0.5
    assert thr == 0.5


def test_hand_worked_example():
    target = [0.9, 0.8, 0.7]
    nontarget = [0.1, 0.2, 0.75]
    scores = np.array(target + nontarget)
    labels = np.array([1] * 3 + [0] * 3)
    # Rejecting everything up to 0.2 costs no miss and leaves one false alarm (0.75): (0, 1/3).
    # Also rejecting the 0.7 group adds one miss: (1/3, 1/3). The curves meet exactly there,
    # so EER = 1/3, reached when the 0.7 group is rejected.
    eer, thr = compute_eer(scores, labels)
    assert eer == pytest.approx(1 / 3)
    assert thr == 0.7
    # At p = 0.01 false alarms dominate: the best point accepts only >= 0.8 (one miss, no false
    # alarm), cost 1/3 * 0.01, normalised by min(0.01, 0.99) = 0.01.
    dcf, dcf_thr = compute_min_dcf(scores, labels, 0.01)
    assert dcf == pytest.approx((1 / 3 * 0.01) / 0.01)
    assert dcf_thr == 0.8
    check_against_reference(list(scores), list(labels))


# --------------------------------------------------------------------------------------------------
# Structure of the operating points.


def test_error_rates_match_reference_points():
    rng = random.Random(3)
    scores, labels = random_trials(rng, 80, decimals=1)
    thresholds, p_miss, p_fa = error_rates(np.array(scores), np.array(labels))
    distinct = sorted(set(scores))
    assert len(thresholds) == len(distinct) + 1
    assert list(thresholds[:-1]) == distinct
    assert thresholds[-1] > max(scores)
    for t, m, f in zip(thresholds, p_miss, p_fa, strict=True):
        want_m, want_f = ref_rates_at(scores, labels, t)
        assert m == float(want_m)
        assert f == float(want_f)
    assert (p_miss[0], p_fa[0], p_miss[-1], p_fa[-1]) == (0.0, 1.0, 1.0, 0.0)
    assert np.all(np.diff(p_miss) >= 0) and np.all(np.diff(p_fa) <= 0)


def test_order_invariance_including_ties():
    rng = np.random.default_rng(11)
    labels = (rng.random(500) < 0.3).astype(np.int64)
    scores = np.round(rng.normal(size=500) + labels, 1)
    want_eer = compute_eer(scores, labels)
    want_dcf = compute_min_dcf(scores, labels, 0.01)
    want_all = verification_metrics(scores, labels)
    for _ in range(10):
        perm = rng.permutation(500)
        assert compute_eer(scores[perm], labels[perm]) == want_eer
        assert compute_min_dcf(scores[perm], labels[perm], 0.01) == want_dcf
        assert verification_metrics(scores[perm], labels[perm]) == want_all


def test_tie_free_lists_agree_with_per_trial_nist_definition():
    # The NIST/WeSpeaker scripts place an operating point after every sorted trial; without ties
    # that is exactly our definition, so the two must agree on continuous scores.
    rng = np.random.default_rng(5)
    labels = (rng.random(20000) < 0.2).astype(np.int64)
    scores = rng.normal(size=20000) + 1.5 * labels
    order = np.argsort(scores)
    lab = labels[order]
    fnr = np.cumsum(lab) / lab.sum()
    fpr = 1 - np.cumsum(1 - lab) / (1 - lab).sum()
    x1 = np.flatnonzero(fnr - fpr >= 0)[0]
    x2 = np.flatnonzero(fnr - fpr < 0)[-1]
    a = (fnr[x1] - fpr[x1]) / (fpr[x2] - fpr[x1] - (fnr[x2] - fnr[x1]))
    eer, thr = compute_eer(scores, labels)
    assert eer == pytest.approx(fnr[x1] + a * (fnr[x2] - fnr[x1]), abs=1e-12)
    assert thr == scores[order][x1]
    fnr0, fpr0 = np.concatenate(([0.0], fnr)), np.concatenate(([1.0], fpr))
    for p in (0.01, 0.05):
        want = np.min(fnr0 * p + fpr0 * (1 - p)) / min(p, 1 - p)
        assert compute_min_dcf(scores, labels, p)[0] == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# verification_metrics and input handling.


def test_verification_metrics_combines_single_metrics():
    rng = np.random.default_rng(2)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(size=300) + labels, 2).astype(np.float32)
    out = verification_metrics(scores, labels, p_targets=(0.01, 0.05, 0.001))
    eer, thr = compute_eer(scores, labels)
    assert set(out) == {
        "eer",
        "eer_threshold",
        "min_dcf_0.01",
        "min_dcf_0.05",
        "min_dcf_0.001",
        "n_trials",
        "n_target",
        "n_nontarget",
    }
    assert out["eer"] == pytest.approx(100 * eer)
    assert out["eer_threshold"] == thr
    for p in (0.01, 0.05, 0.001):
        assert out[f"min_dcf_{p:g}"] == compute_min_dcf(scores, labels, p)[0]
    assert out["n_trials"] == 300
    assert out["n_target"] == int(labels.sum())
    assert out["n_nontarget"] == int((~labels).sum())


def test_default_keys():
    out = verification_metrics(np.array([0.1, 0.9]), np.array([0, 1]))
    assert set(out) == {"eer", "eer_threshold", "min_dcf_0.01", "min_dcf_0.05", "n_trials", "n_target", "n_nontarget"}


def test_bool_and_int_labels_agree():
    scores = np.array([0.1, 0.4, 0.4, 0.6, 0.9])
    as_int = np.array([0, 1, 0, 0, 1])
    assert compute_eer(scores, as_int) == compute_eer(scores, as_int.astype(bool))
    assert compute_eer(scores, as_int) == compute_eer(scores, as_int.astype(np.uint8))


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [0, 0], "no target trials"),
        ([0.1, 0.2], [1, 1], "no non-target trials"),
        ([], [], "no target trials"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN or infinite"),
        ([0.1, float("inf"), 0.3], [0, 1, 1], "NaN or infinite"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores but 2 labels"),
        ([0.1, 0.2], [0, 2], r"0 \(non-target\) or 1 \(target\)"),
        ([0.1, 0.2], [0.0, 1.0], "0/1 integers or booleans"),
        ([0.1, 0.2], [0, None], "0/1 integers or booleans"),
    ],
)
def test_invalid_inputs_raise(scores, labels, message):
    for call in (
        lambda s, lab: compute_eer(s, lab),
        lambda s, lab: compute_min_dcf(s, lab, 0.01),
        lambda s, lab: verification_metrics(s, lab),
    ):
        with pytest.raises(VoxfastError, match=message):
            call(np.array(scores, dtype=np.float64), np.array(labels))


def test_no_target_message_explains_need_for_both_classes():
    with pytest.raises(VoxfastError, match="EER needs both target and non-target trials"):
        compute_eer(np.array([0.1, 0.2]), np.array([0, 0]))


@pytest.mark.parametrize(("p", "c_miss", "c_fa"), [(0.0, 1, 1), (1.0, 1, 1), (0.01, 0, 1), (0.01, 1, -1)])
def test_invalid_costs_raise(p, c_miss, c_fa):
    with pytest.raises(VoxfastError):
        compute_min_dcf(np.array([0.1, 0.9]), np.array([0, 1]), p, c_miss, c_fa)


def test_invalid_prior_in_verification_metrics_raises():
    with pytest.raises(VoxfastError, match="p_target"):
        verification_metrics(np.array([0.1, 0.9]), np.array([0, 1]), p_targets=(0.01, 2.0))


# --------------------------------------------------------------------------------------------------
# DET curve.


def test_det_curve_is_monotone_from_accept_all_to_reject_all():
    rng = np.random.default_rng(12)
    labels = rng.random(3000) < 0.2
    scores = np.round(rng.normal(size=3000) + 2 * labels, 2)
    p_miss, p_fa = det_curve(scores, labels)
    assert (p_miss[0], p_fa[0]) == (0.0, 1.0)
    assert (p_miss[-1], p_fa[-1]) == (1.0, 0.0)
    assert np.all(np.diff(p_miss) >= 0) and np.all(np.diff(p_fa) <= 0)
    assert p_miss.size == np.unique(scores).size + 1
    # The curve crosses the diagonal at the reported EER (between two of its points).
    eer = compute_eer(scores, labels)[0]
    j = int(np.argmax(p_miss >= p_fa))
    assert min(p_miss[j - 1], p_fa[j]) <= eer <= max(p_fa[j - 1], p_miss[j])


def test_plot_det_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(13)
    labels = rng.random(200_000) < 0.5
    curves, eers = {}, {}
    for name, shift in (("good", 4.0), ("weak", 1.0)):
        scores = (rng.normal(size=labels.size) + shift * labels).astype(np.float32)
        curves[name] = det_curve(scores, labels)
        eers[name] = verification_metrics(scores, labels)["eer"] / 100
    path = tmp_path / "det.png"
    plot_det(path, curves, eers)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000


def test_plot_det_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(VoxfastError, match=r"pip install 'voxfast\[plot\]'"):
        plot_det(tmp_path / "det.png", {"a": (np.array([0.0, 1.0]), np.array([1.0, 0.0]))})
    assert not (tmp_path / "det.png").exists()


# --------------------------------------------------------------------------------------------------
# `voxfast eval`.

TRIALS = "1 a b\n0 a c\n1 c d\n0 b d\n1 e f\n0 e a\n"
SCORES = ["a b 0.9", "a c 0.1", "c d 0.4", "b d 0.5", "e f 0.7", "e a 0.2"]


def run_eval(tmp_path, capsys, scores, trials=TRIALS, *extra):
    (tmp_path / "trials.txt").write_text(trials)
    (tmp_path / "scores.txt").write_text("\n".join(scores) + "\n")
    rc = main(["eval", str(tmp_path / "scores.txt"), "--trials", str(tmp_path / "trials.txt"), *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_matches_pairs_in_any_order_and_any_trial_format(tmp_path, capsys):
    rc, out, _ = run_eval(tmp_path, capsys, SCORES, TRIALS, "--json")
    assert rc == 0
    want = json.loads(out)
    values = np.array([float(line.split()[2]) for line in SCORES])
    labels = np.array([int(line.split()[0]) for line in TRIALS.splitlines()])
    assert want == verification_metrics(values, labels)
    kaldi = "".join(f"{e} {t} {'target' if lab == '1' else 'nontarget'}\n"
                    for lab, e, t in (line.split() for line in TRIALS.splitlines()))
    shuffled = ["# written by another toolkit", *SCORES[::-1]]
    for trials in (TRIALS, kaldi):
        rc, out, _ = run_eval(tmp_path, capsys, shuffled, trials, "--json", "--out", str(tmp_path / "run"))
        assert rc == 0 and json.loads(out) == want
        assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == want


def test_eval_prints_every_figure(tmp_path, capsys):
    rc, out, _ = run_eval(tmp_path, capsys, SCORES)
    assert rc == 0
    for text in ("EER", "minDCF (p=0.01)", "minDCF (p=0.05)", "threshold at EER", "6 (3 target, 3 non-target)"):
        assert text in out


def test_eval_of_an_unlabelled_list_counts_scores_only(tmp_path, capsys):
    unlabelled = "".join(" ".join(line.split()[1:]) + "\n" for line in TRIALS.splitlines())
    rc, out, _ = run_eval(tmp_path, capsys, SCORES, unlabelled)
    assert rc == 0 and "6 scores" in out and "no labels" in out and "%" not in out
    rc, _, err = run_eval(tmp_path, capsys, SCORES, unlabelled, "--det", str(tmp_path / "det.png"))
    assert rc == 2 and "unlabelled" in err


@pytest.mark.parametrize(
    ("scores", "where", "problem"),
    [
        (["# header", "a b 0.9", "x y 0.3", *SCORES[1:]], "scores.txt:3:", "'x y' is not in the trial list"),
        ([*SCORES, "", "c d 0.8"], "scores.txt:8:", "'c d' is scored twice (first on line 3)"),
        ([SCORES[0], *SCORES[2:]], "trials.txt:2:", "'a c' has no score"),
    ],
)
def test_eval_names_the_first_mismatching_line(tmp_path, capsys, scores, where, problem):
    rc, _, err = run_eval(tmp_path, capsys, scores)
    assert rc == 2 and where in err and problem in err


def test_eval_writes_a_det_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc, _, _ = run_eval(tmp_path, capsys, SCORES, TRIALS, "--det", str(tmp_path / "det.png"))
    assert rc == 0 and (tmp_path / "det.png").stat().st_size > 0
