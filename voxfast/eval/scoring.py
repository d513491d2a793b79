"""Trial scoring over an embedding table, vectorised (no Python loop per trial): cosine, mean subtraction, AS-norm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numba
import numpy as np

from voxfast.data.manifest import Trial, data_line
from voxfast.errors import VoxfastError


def trial_indices(trials: Sequence[Trial], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of each trial's enroll and test utterance; missing ids fail with a count and examples."""
    missing = sorted({u for t in trials for u in (t.enroll, t.test) if u not in index})
    if missing:
        raise VoxfastError(
            f"{len(missing)} utterance(s) in the trial list have no embedding, first {min(10, len(missing))}: "
            f"{', '.join(missing[:10])} (extract embeddings for the same list, or check eval.root)"
        )
    enroll = np.fromiter((index[t.enroll] for t in trials), dtype=np.int64, count=len(trials))
    test = np.fromiter((index[t.test] for t in trials), dtype=np.int64, count=len(trials))
    return enroll, test


def cosine_scores(emb: np.ndarray, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity of row pairs (enroll[i], test[i]) of L2-normalised `emb`, float32.

    A numba loop over the trials on every core reads the two rows of each trial in place: the numpy
    route (:func:`cosine_scores_numpy`) first copies both gathered row sets, which makes it memory-bound
    (timings in the README's measured tables).
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    enroll, test = np.asarray(enroll, dtype=np.int64), np.asarray(test, dtype=np.int64)
    if enroll.shape != test.shape:
        raise ValueError(f"enroll and test index arrays differ in shape: {enroll.shape} vs {test.shape}")
    for name, idx in (("enroll", enroll), ("test", test)):
        if idx.size and (idx.min() < 0 or idx.max() >= len(emb)):
            raise ValueError(f"{name} indices must lie in [0, {len(emb)})")
    out = np.empty(len(enroll), dtype=np.float32)
    _pair_dots(emb, enroll, test, out)
    return out


@numba.njit(parallel=True, fastmath=True, cache=True)
def _pair_dots(emb: np.ndarray, enroll: np.ndarray, test: np.ndarray, out: np.ndarray) -> None:
    dim = emb.shape[1]
    for i in numba.prange(len(enroll)):
        a, b = emb[enroll[i]], emb[test[i]]
        acc = np.float32(0.0)
        for k in range(dim):
            acc += a[k] * b[k]
        out[i] = acc


def cosine_scores_numpy(emb: np.ndarray, enroll: np.ndarray, test: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """The numpy reference of :func:`cosine_scores` (gathered rows, einsum), in chunks to bound memory."""
    out = np.empty(len(enroll), dtype=np.float32)
    for start in range(0, len(enroll), chunk):
        sl = slice(start, start + chunk)
        out[sl] = np.einsum("ij,ij->i", emb[enroll[sl]], emb[test[sl]])
    return out


def l2_normalise(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so a dot product is a cosine; an all-zero row stays zero."""
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norms, np.finfo(np.float32).tiny)


def subtract_mean(emb: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Remove a global mean (of training embeddings) and re-normalise, as WeSpeaker's ``mean_vec``.

    Embeddings of a network share a common offset direction that inflates every cosine alike; removing it
    spreads target and non-target scores apart, and re-normalising keeps scores cosines.
    """
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    if emb.ndim != 2 or mean.shape[0] != emb.shape[1]:
        raise VoxfastError(f"mean of dimension {mean.shape[0]} cannot be subtracted from embeddings of shape "
                           f"{emb.shape}; compute the mean from embeddings of the same model")
    return l2_normalise(np.asarray(emb, dtype=np.float32) - mean)


def cohort_from(
    ids: Sequence[str],
    emb: np.ndarray,
    speakers: Mapping[str, str] | None = None,
    speaker_means: bool = False,
) -> np.ndarray:
    """The AS-norm cohort: every embedding, or with ``speaker_means`` one L2-normalised mean per speaker.

    Speaker means (WeSpeaker's recipe) give one row per impostor identity, so a speaker with many
    utterances does not fill the top-N with near-copies of itself. ``speakers`` maps every id to its speaker.
    """
    emb = np.asarray(emb, dtype=np.float32)
    if not speaker_means:
        return emb
    if speakers is None:
        raise VoxfastError("speaker-mean cohorts need speaker labels; pass the cohort's training list")
    missing = [u for u in ids if u not in speakers]
    if missing:
        raise VoxfastError(f"{len(missing)} cohort embedding(s) have no speaker, first {min(10, len(missing))}: "
                           f"{', '.join(missing[:10])} (pass the list the cohort embeddings were extracted from)")
    _, codes = np.unique(np.array([speakers[u] for u in ids], dtype=str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    return l2_normalise(np.add.reduceat(emb[order], starts, axis=0))


def _top_n_stats(rows: np.ndarray, cohort: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's ``top_n`` highest cohort cosines, in row chunks of about 256 MB.

    One score buffer is reused across chunks and partitioned in place, so memory stays bounded and no
    per-chunk allocation is paid; np.partition finds the top N in linear time where a sort would be n log n.
    """
    size = len(cohort)
    chunk = max(1, min(len(rows), (256 << 20) // (4 * size)))
    buf = np.empty((chunk, size), dtype=np.float32)
    mean = np.empty(len(rows), dtype=np.float64)
    std = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), chunk):
        block = buf[: min(chunk, len(rows) - start)]
        np.matmul(rows[start : start + len(block)], cohort.T, out=block)
        block.partition(size - top_n, axis=1)
        top = block[:, size - top_n :].astype(np.float64)
        mean[start : start + len(block)] = top.mean(axis=1)
        std[start : start + len(block)] = top.std(axis=1)
    return mean, std


def as_norm_scores(
    emb: np.ndarray, enroll: np.ndarray, test: np.ndarray, cohort: np.ndarray, top_n: int = 300
) -> np.ndarray:
    """Adaptive symmetric normalisation (AS-norm, Matejka et al. 2017) of the cosine of row pairs of ``emb``.

    Each side's raw cosine ``s`` is standardised by the mean and std of that utterance's ``top_n`` highest
    cosines against the cohort, and the two are averaged: ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``,
    as WeSpeaker's score_norm.py. This calibrates scores per utterance, so one threshold fits all trials.
    Statistics are computed once per distinct utterance, not per trial. A ``top_n`` above the cohort size
    uses the whole cohort (S-norm), as WeSpeaker does. Rows of ``emb`` and ``cohort`` are L2-normalised here.
    """
    if cohort.ndim != 2 or cohort.shape[1] != emb.shape[1]:
        raise VoxfastError(f"cohort embeddings of shape {cohort.shape} do not match trial embeddings of dimension "
                           f"{emb.shape[1]}; extract the cohort with the same model")
    cohort = l2_normalise(cohort)
    top_n = min(top_n, len(cohort))
    if top_n < 2:
        raise VoxfastError(f"AS-norm needs at least 2 cohort scores per utterance for a std, got top-N {top_n} "
                           f"with a cohort of {len(cohort)}; use a larger cohort or --top-n")
    used, where = np.unique(np.concatenate([enroll, test]), return_inverse=True)
    rows = l2_normalise(emb[used])
    mean, std = _top_n_stats(rows, cohort, top_n)
    e, t = where[: len(enroll)], where[len(enroll) :]
    raw = cosine_scores(rows, e, t).astype(np.float64)
    return (0.5 * ((raw - mean[e]) / std[e] + (raw - mean[t]) / std[t])).astype(np.float32)


def score_trials_from_table(
    trials: Sequence[Trial],
    ids: Sequence[str],
    emb: np.ndarray,
    mean: np.ndarray | None = None,
    cohort: np.ndarray | None = None,
    top_n: int = 300,
) -> np.ndarray:
    """Score trials from an embedding table: cosine, after mean subtraction if ``mean``, AS-norm if ``cohort``.

    The mean is removed from the cohort too, so trial and cohort scores live in the same space.
    """
    enroll, test = trial_indices(trials, {u: i for i, u in enumerate(ids)})
    table = l2_normalise(emb) if mean is None else subtract_mean(emb, mean)
    if cohort is None:
        return cosine_scores(table, enroll, test)
    cohort = cohort if mean is None else subtract_mean(cohort, mean)
    return as_norm_scores(table, enroll, test, cohort, top_n)


def labels_in_score_order(score_path: str | Path, pairs: Sequence[tuple[str, str]], trial_path: str | Path,
                          trials: Sequence[Trial]) -> np.ndarray | None:
    """Each scored pair's label (None for an unlabelled list); fails at the first line that does not match.

    Score files written by voxfast follow the trial list, so an in-order comparison settles most files
    without building a dictionary of millions of pairs.
    """
    if pairs != [(t.enroll, t.test) for t in trials]:
        trials = _trials_in_score_order(score_path, pairs, trial_path, trials)
    if trials[0].label is None:  # a trial list has one format, so all or none are labelled
        return None
    return np.fromiter((t.label for t in trials), dtype=bool, count=len(trials))


def _trials_in_score_order(score_path: str | Path, pairs: Sequence[tuple[str, str]], trial_path: str | Path,
                           trials: Sequence[Trial]) -> list[Trial]:
    by_pair = {(t.enroll, t.test): t for t in trials}
    first_seen: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(pairs):
        if pair not in by_pair:
            raise VoxfastError(f"{score_path}:{data_line(score_path, i)}: pair {' '.join(pair)!r} is not in the "
                               f"trial list {trial_path} (score and evaluate with the same trial list)")
        if (first := first_seen.setdefault(pair, i)) != i:
            raise VoxfastError(f"{score_path}:{data_line(score_path, i)}: pair {' '.join(pair)!r} is scored "
                               f"twice (first on line {data_line(score_path, first)}); keep one score per trial")
    unscored = next((i for i, t in enumerate(trials) if (t.enroll, t.test) not in first_seen), None)
    if unscored is not None:
        t = trials[unscored]
        raise VoxfastError(f"{trial_path}:{data_line(trial_path, unscored)}: trial '{t.enroll} {t.test}' has no "
                           f"score in {score_path} (score and evaluate with the same trial list)")
    return [by_pair[pair] for pair in pairs]


def load_cohort(cohort: str | None, cohort_list: str | None = None, speaker_means: bool = False,
                mean: str | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The AS-norm cohort and the mean embedding that `voxfast score` asks for (None where not asked).

    `cohort`: an embedding table; with `speaker_means`, one mean row per speaker of `cohort_list`.
    `mean`: an embedding table whose mean is subtracted, or "cohort" for the cohort table's own mean.
    """
    from voxfast.data.manifest import read_utterances
    from voxfast.eval.embeddings import load_embeddings

    if cohort is None and (cohort_list or speaker_means or mean == "cohort"):
        raise VoxfastError("--cohort-list, --speaker-means and --mean cohort need --cohort COHORT.npz")
    if bool(cohort_list) != speaker_means:
        raise VoxfastError("--speaker-means and --cohort-list go together: the list names each cohort id's speaker")
    cohort_ids, cohort_emb = load_embeddings(cohort) if cohort else ([], None)
    mean_table = cohort_emb if mean == "cohort" else load_embeddings(mean)[1] if mean else None
    mean_row = None if mean_table is None else mean_table.mean(axis=0)
    if cohort_emb is None:
        return None, mean_row
    speakers = {u.utt: u.spk for u in read_utterances(cohort_list)} if cohort_list else None
    return cohort_from(cohort_ids, cohort_emb, speakers, speaker_means), mean_row
