"""Trial scoring from an embedding table (cosine, mean subtraction, AS-norm vs a naive loop) and `voxfast score`."""

import numpy as np
import pytest

from voxfast.cli import main
from voxfast.data.manifest import Trial, read_scores, read_trials, write_trials
from voxfast.errors import VoxfastError
from voxfast.eval.embeddings import load_embeddings, save_embeddings
from voxfast.eval.scoring import (
    as_norm_scores,
    cohort_from,
    l2_normalise,
    score_trials_from_table,
    subtract_mean,
)


def _unit(rng, n, dim=16):
    return l2_normalise(rng.standard_normal((n, dim)).astype(np.float32))


def _naive_as_norm(emb, enroll, test, cohort, top_n):
    """One trial at a time, full sort of the cohort scores: the definition, written out."""
    emb, cohort = emb.astype(np.float64), cohort.astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)

    def stats(vec):
        top = np.sort(cohort @ vec)[::-1][:top_n]
        return top.mean(), top.std()

    out = []
    for e, t in zip(enroll, test, strict=True):
        s = float(emb[e] @ emb[t])
        (mu_e, sd_e), (mu_t, sd_t) = stats(emb[e]), stats(emb[t])
        out.append(0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t))
    return np.array(out)


def test_as_norm_matches_a_naive_per_trial_loop():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16)).astype(np.float32) * 3  # not normalised: as_norm_scores normalises
    cohort = rng.standard_normal((120, 16)).astype(np.float32)
    enroll, test = rng.integers(0, 40, 200), rng.integers(0, 40, 200)
    got = as_norm_scores(emb, enroll, test, cohort, top_n=25)
    np.testing.assert_allclose(got, _naive_as_norm(emb, enroll, test, cohort, 25), atol=1e-5)


def test_top_n_above_the_cohort_size_uses_the_whole_cohort():
    rng = np.random.default_rng(1)
    emb, cohort = _unit(rng, 10), _unit(rng, 30)
    enroll, test = rng.integers(0, 10, 20), rng.integers(0, 10, 20)
    whole = as_norm_scores(emb, enroll, test, cohort, top_n=30)
    np.testing.assert_allclose(as_norm_scores(emb, enroll, test, cohort, top_n=1000), whole)
    np.testing.assert_allclose(whole, _naive_as_norm(emb, enroll, test, cohort, 30), atol=1e-5)


def test_a_cohort_too_small_for_a_std_fails_clearly():
    rng = np.random.default_rng(2)
    with pytest.raises(VoxfastError, match="at least 2 cohort scores"):
        as_norm_scores(_unit(rng, 4), np.array([0]), np.array([1]), _unit(rng, 1), top_n=300)


def test_a_cohort_of_another_dimension_fails_clearly():
    rng = np.random.default_rng(3)
    with pytest.raises(VoxfastError, match="same model"):
        as_norm_scores(_unit(rng, 4, 16), np.array([0]), np.array([1]), _unit(rng, 8, 32))


def test_subtract_mean_removes_the_mean_and_renormalises():
    rng = np.random.default_rng(4)
    emb = _unit(rng, 6)
    mean = emb.mean(axis=0)
    out = subtract_mean(emb, mean)
    expected = (emb - mean) / np.linalg.norm(emb - mean, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(VoxfastError, match="dimension 3"):
        subtract_mean(emb, np.zeros(3))


def test_speaker_mean_cohort_has_one_normalised_row_per_speaker_in_sorted_order():
    ids = ["a1", "b1", "a2", "c1"]
    emb = np.array([[1, 0], [0, 1], [0, 1], [1, 1]], dtype=np.float32)
    speakers = {"a1": "spkA", "a2": "spkA", "b1": "spkB", "c1": "spkC"}
    s = np.sqrt(0.5)
    np.testing.assert_allclose(cohort_from(ids, emb, speakers, speaker_means=True),
                               [[s, s], [0, 1], [s, s]], atol=1e-6)
    np.testing.assert_array_equal(cohort_from(ids, emb), emb)


def test_speaker_mean_cohort_names_ids_without_a_speaker():
    with pytest.raises(VoxfastError, match="1 cohort embedding"):
        cohort_from(["a", "b"], np.eye(2, dtype=np.float32), {"a": "s"}, speaker_means=True)
    with pytest.raises(VoxfastError, match="speaker labels"):
        cohort_from(["a"], np.eye(1, dtype=np.float32), speaker_means=True)


def test_table_scores_are_cosines_for_unlabelled_trials():
    rng = np.random.default_rng(5)
    ids = ["u0", "u1", "u2"]
    emb = rng.standard_normal((3, 8)).astype(np.float32)
    trials = [Trial("u0", "u1", None), Trial("u2", "u0", None)]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = [unit[0] @ unit[1], unit[2] @ unit[0]]
    np.testing.assert_allclose(score_trials_from_table(trials, ids, emb), expected, atol=1e-6)


def test_table_scores_with_mean_and_cohort_equal_as_norm_of_mean_subtracted_embeddings():
    rng = np.random.default_rng(6)
    ids = [f"u{i}" for i in range(12)]
    emb, cohort = _unit(rng, 12), _unit(rng, 50)
    mean = cohort.mean(axis=0)
    trials = [Trial(ids[e], ids[t], int(e % 2)) for e, t in rng.integers(0, 12, (30, 2))]
    got = score_trials_from_table(trials, ids, emb, mean=mean, cohort=cohort, top_n=10)
    enroll = [ids.index(t.enroll) for t in trials]
    test = [ids.index(t.test) for t in trials]
    expected = _naive_as_norm(emb - mean, enroll, test, cohort - mean, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = score_trials_from_table(trials, ids, emb, mean=mean)
    np.testing.assert_allclose(plain, np.einsum("ij,ij->i", *(subtract_mean(emb, mean)[i] for i in (enroll, test))),
                               atol=1e-6)


def test_trial_without_an_embedding_fails_with_the_count_and_first_ten():
    ids = ["known"]
    trials = [Trial("known", f"missing{i:02d}", None) for i in range(12)]
    with pytest.raises(VoxfastError) as info:
        score_trials_from_table(trials, ids, np.ones((1, 4), dtype=np.float32), cohort=np.eye(4, dtype=np.float32))
    message = str(info.value)
    assert message.startswith("12 utterance(s)") and "first 10: missing00" in message
    assert "missing09" in message and "missing10" not in message


@pytest.fixture
def tables(tmp_path):
    """A labelled trial list, its embedding table and a cohort table with a training list of 5 speakers."""
    rng = np.random.default_rng(7)
    ids = [f"spk{i // 3}/u{i}.wav" for i in range(12)]
    save_embeddings(tmp_path / "test.npz", ids, _unit(rng, 12))
    trials = [Trial(ids[e], ids[t], int(e // 3 == t // 3)) for e in range(12) for t in range(e + 1, 12)]
    write_trials(tmp_path / "trials.txt", trials)
    cohort_ids = [f"c{i % 5}/x{i}.wav" for i in range(40)]
    save_embeddings(tmp_path / "cohort.npz", cohort_ids, _unit(rng, 40))
    (tmp_path / "train_list.txt").write_text("".join(f"{u.split('/')[0]} {u}\n" for u in cohort_ids))
    return tmp_path


def test_score_command_writes_as_normed_scores_and_prints_metrics(tables, capsys):
    out = tables / "scores.txt"
    args = ["score", str(tables / "trials.txt"), "--embeddings", str(tables / "test.npz"),
            "--cohort", str(tables / "cohort.npz"), "--mean", "cohort", "--top-n", "20", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote 66 scores to {out}" in printed and "EER " in printed and "minDCF(0.05)" in printed
    trials = read_trials(tables / "trials.txt")
    ids, emb = load_embeddings(tables / "test.npz")
    _, cohort = load_embeddings(tables / "cohort.npz")
    expected = score_trials_from_table(trials, ids, emb, mean=cohort.mean(axis=0), cohort=cohort, top_n=20)
    pairs, scores = read_scores(out)
    assert pairs == [(t.enroll, t.test) for t in trials]
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_score_command_with_a_speaker_mean_cohort(tables):
    out = tables / "scores.txt"
    assert main(["score", str(tables / "trials.txt"), "--embeddings", str(tables / "test.npz"),
                 "--cohort", str(tables / "cohort.npz"), "--cohort-list", str(tables / "train_list.txt"),
                 "--speaker-means", "--out", str(out)]) == 0
    ids, emb = load_embeddings(tables / "test.npz")
    cohort_ids, cohort = load_embeddings(tables / "cohort.npz")
    speakers = cohort_from(cohort_ids, cohort, {u: u.split("/")[0] for u in cohort_ids}, speaker_means=True)
    assert speakers.shape == (5, 16)
    expected = score_trials_from_table(read_trials(tables / "trials.txt"), ids, emb, cohort=speakers)
    np.testing.assert_allclose(read_scores(out)[1], expected, atol=1e-6)


def test_score_command_on_unlabelled_trials_prints_no_metrics(tables, capsys):
    write_trials(tables / "pairs.txt", [Trial(t.enroll, t.test, None) for t in read_trials(tables / "trials.txt")])
    assert main(["score", str(tables / "pairs.txt"), "--embeddings", str(tables / "test.npz"),
                 "--out", str(tables / "scores.txt")]) == 0
    printed = capsys.readouterr().out
    assert "wrote 66 scores" in printed and "EER" not in printed


@pytest.mark.parametrize("flags", [["--speaker-means"], ["--mean", "cohort"]])
def test_score_command_rejects_cohort_flags_without_a_cohort(tables, capsys, flags):
    rc = main(["score", str(tables / "trials.txt"), "--embeddings", str(tables / "test.npz"), *flags])
    assert rc == 2 and "need --cohort" in capsys.readouterr().err


def test_score_command_needs_speakers_for_speaker_means(tables, capsys):
    rc = main(["score", str(tables / "trials.txt"), "--embeddings", str(tables / "test.npz"),
               "--cohort", str(tables / "cohort.npz"), "--speaker-means"])
    assert rc == 2 and "--cohort-list" in capsys.readouterr().err


def test_cosine_kernel_matches_the_numpy_reference_and_checks_indices():
    from voxfast.eval.scoring import cosine_scores, cosine_scores_numpy

    rng = np.random.default_rng(11)
    emb = rng.standard_normal((300, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    enroll, test = rng.integers(0, 300, 5000), rng.integers(0, 300, 5000)
    expected = np.einsum("ij,ij->i", emb[enroll].astype(np.float64), emb[test].astype(np.float64))
    np.testing.assert_allclose(cosine_scores(emb, enroll, test), expected, atol=1e-6)
    np.testing.assert_allclose(cosine_scores_numpy(emb, enroll, test, chunk=777), expected, atol=1e-6)
    assert cosine_scores(emb, enroll[:0], test[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r"test indices must lie in \[0, 300\)"):
        cosine_scores(emb, enroll[:2], np.array([0, 300]))


@pytest.mark.parametrize(("ids", "row", "message"), [
    (["a", "b", "a"], None, r"id 'a' appears more than once"),
    (["a", "b", "c"], np.nan, r"the embedding of 'b' is not finite \(1 such row"),
    (["a", "b", "c"], np.inf, r"the embedding of 'b' is not finite"),
    (["a", "b", "c"], 0.0, r"the embedding of 'b' is all zeros"),
])
def test_embedding_tables_that_would_score_silently_wrong_are_refused(tmp_path, ids, row, message):
    emb = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    if row is not None:
        emb[1] = row
    np.savez(tmp_path / "t.npz", ids=np.array(ids), emb=emb)  # written by hand: save_embeddings is not the only writer
    with pytest.raises(VoxfastError, match=message):
        load_embeddings(tmp_path / "t.npz")
