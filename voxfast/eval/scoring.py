"""Trial scoring over an embedding table, vectorised (no Python loop per trial): cosine, mean subtraction, AS-norm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numba
import numpy as np

from voxfast.columns import StringColumn, id_codes, lookup_codes
from voxfast.data.manifest import Trial
from voxfast.data.trials import PairTable, TrialTable, sorted_with_order
from voxfast.errors import VoxfastError


def trial_indices(trials: Sequence[Trial] | TrialTable, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of each trial's enroll and test utterance; missing ids fail with a count and examples.

    A TrialTable is mapped once per distinct id, and its codes give the trials' rows without a loop per trial.
    """
    if isinstance(trials, TrialTable):
        rows = np.fromiter((index.get(u, -1) for u in trials.ids), dtype=np.int64, count=len(trials.ids))
        _refuse_missing([trials.ids[k] for k in np.flatnonzero(rows < 0)])
        return rows[trials.enroll], rows[trials.test]
    _refuse_missing(sorted({u for t in trials for u in (t.enroll, t.test) if u not in index}))
    enroll = np.fromiter((index[t.enroll] for t in trials), dtype=np.int64, count=len(trials))
    test = np.fromiter((index[t.test] for t in trials), dtype=np.int64, count=len(trials))
    return enroll, test


def _refuse_missing(missing: list[str]) -> None:
    if missing:
        missing = sorted(missing)
        raise VoxfastError(
            f"{len(missing)} utterance(s) in the trial list have no embedding, first {min(10, len(missing))}: "
            f"{', '.join(missing[:10])} (extract embeddings for the same list, or check eval.root)"
        )


def embedding_rows(trial_ids: StringColumn, ids: Sequence[str] | StringColumn) -> np.ndarray:
    """The row of `ids` (an embedding table's, unique as load_embeddings checks) holding each trial id, matched by
    hash (:func:`voxfast.columns.hash_fields`): one lookup per distinct id, none per trial."""
    table_ids = ids if isinstance(ids, StringColumn) else StringColumn.from_strings(ids)
    codes = id_codes(*table_ids.hashes())
    found = lookup_codes(codes, *trial_ids.hashes())
    _refuse_missing([trial_ids[k] for k in np.flatnonzero(found < 0)])
    return codes.first[found]


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
    top_n = _check_cohort(emb, cohort, top_n)
    used, where = np.unique(np.concatenate([enroll, test]), return_inverse=True)
    return _as_norm_rows(emb[used], where[: len(enroll)], where[len(enroll) :], cohort, top_n)


def _check_cohort(emb: np.ndarray, cohort: np.ndarray, top_n: int) -> int:
    """The top-N AS-norm can use (at most the cohort size); a cohort of another dimension or too small fails."""
    if cohort.ndim != 2 or cohort.shape[1] != emb.shape[1]:
        raise VoxfastError(f"cohort embeddings of shape {cohort.shape} do not match trial embeddings of dimension "
                           f"{emb.shape[1]}; extract the cohort with the same model")
    top_n = min(top_n, len(cohort))
    if top_n < 2:
        raise VoxfastError(f"AS-norm needs at least 2 cohort scores per utterance for a std, got top-N {top_n} "
                           f"with a cohort of {len(cohort)}; use a larger cohort or --top-n")
    return top_n


def _as_norm_rows(rows: np.ndarray, e: np.ndarray, t: np.ndarray, cohort: np.ndarray, top_n: int) -> np.ndarray:
    """AS-norm of the row pairs (e[i], t[i]) of `rows`, every row used by some trial (checked cohort)."""
    rows = l2_normalise(rows)
    cohort = l2_normalise(cohort)
    mean, std = _top_n_stats(rows, cohort, top_n)
    raw = cosine_scores(rows, e, t).astype(np.float64)
    return (0.5 * ((raw - mean[e]) / std[e] + (raw - mean[t]) / std[t])).astype(np.float32)


def score_trials_from_table(
    trials: Sequence[Trial] | TrialTable,
    ids: Sequence[str] | StringColumn,
    emb: np.ndarray,
    mean: np.ndarray | None = None,
    cohort: np.ndarray | None = None,
    top_n: int = 300,
) -> np.ndarray:
    """Score trials from an embedding table: cosine, after mean subtraction if ``mean``, AS-norm if ``cohort``.

    Trial ids are matched to table rows by hash, once per distinct id (:func:`embedding_rows`). The mean is
    removed from the cohort too, so trial and cohort scores live in the same space.
    """
    table = TrialTable.from_trials(trials)
    rows = embedding_rows(table.ids, ids)
    emb = l2_normalise(emb) if mean is None else subtract_mean(emb, mean)
    if cohort is None:
        return cosine_scores(emb, rows[table.enroll], rows[table.test])
    cohort = cohort if mean is None else subtract_mean(cohort, mean)
    top_n = _check_cohort(emb, cohort, top_n)
    return _as_norm_rows(emb[rows], table.enroll, table.test, cohort, top_n)


def labels_in_score_order(score_path: str | Path, pairs: Sequence[tuple[str, str]] | PairTable,
                          trial_path: str | Path, trials: Sequence[Trial] | TrialTable) -> np.ndarray | None:
    """Each scored pair's label (None for an unlabelled list); a pair the trials lack, a pair scored twice or a
    trial without a score fails naming its line (the first in the file)."""
    table = TrialTable.from_trials(trials)
    order = score_order(score_path, pairs, trial_path, table)  # checked for an unlabelled list too
    return table.labels[order] == 1 if table.labelled else None


def score_order(score_path: str | Path, pairs: Sequence[tuple[str, str]] | PairTable, trial_path: str | Path,
                trials: TrialTable) -> np.ndarray:
    """The trial index of each score line, matched by integer pair keys: score ids are mapped to the trials'
    id codes by hash, and the two sorted key arrays must be equal. Score files written by voxfast follow the trial
    list, which one array comparison settles without sorting."""
    scored = PairTable.from_pairs(pairs)
    keys = _keys_in(scored, trials)
    if len(keys) == len(trials) and np.array_equal(keys, trials.pair_keys()):
        return np.arange(len(keys))
    sorted_keys, by_key = sorted_with_order(keys)
    sorted_trials, trials_by_key = trials.sorted_keys()
    if len(keys) == len(trials) and np.array_equal(sorted_keys, sorted_trials):
        order = np.empty(len(keys), np.int64)
        order[by_key] = trials_by_key
        return order
    raise _mismatch(score_path, scored, trial_path, trials, (sorted_keys, by_key), (sorted_trials, trials_by_key))


def _keys_in(scored: PairTable, trials: TrialTable) -> np.ndarray:
    """Pair keys of the scored pairs in the trials' key space (trials.pair_keys()); -1 where an id is not a trial
    id."""
    codes = id_codes(*trials.ids.hashes())
    found = lookup_codes(codes, *scored.ids.hashes())
    code = np.where(found >= 0, codes.first[np.maximum(found, 0)], -1).astype(np.int32)
    return _mapped_pair_keys(code, scored.enroll, scored.test, len(trials.ids))


@numba.njit(cache=True)
def _mapped_pair_keys(code: np.ndarray, enroll: np.ndarray, test: np.ndarray, n_ids: int) -> np.ndarray:
    """pair_keys of (code[enroll], code[test]) in one pass, without the 10 M-row temporaries of numpy."""
    out = np.empty(len(enroll), np.int64)
    for k in range(len(enroll)):
        e, t = code[enroll[k]], code[test[k]]
        out[k] = -1 if e < 0 or t < 0 else np.int64(e) * n_ids + t
    return out


def _mismatch(score_path: str | Path, scored: PairTable, trial_path: str | Path, trials: TrialTable,
              scores_sorted: tuple[np.ndarray, np.ndarray], trials_sorted: tuple[np.ndarray, np.ndarray]
              ) -> VoxfastError:
    """The error for the first score line that is not a trial or repeats a pair, else the first unscored trial."""
    keys, by_key = scores_sorted
    trial_keys, trials_by_key = trials_sorted
    pos = np.minimum(np.searchsorted(trial_keys, keys), max(len(trial_keys) - 1, 0))  # sorted queries: fast
    absent = (keys < 0) | (trial_keys[pos] != keys) if len(trial_keys) else np.ones(len(keys), dtype=bool)
    repeat = np.r_[False, keys[1:] == keys[:-1]]
    bad = absent | repeat
    if bad.any():
        k = int(by_key[bad].min())
        where, pair = f"{score_path}:{scored.line_no[k]}", " ".join(scored.pair(k))
        if absent[np.flatnonzero(by_key == k)[0]]:
            return VoxfastError(f"{where}: pair {pair!r} is not in the trial list {trial_path} (score and evaluate "
                                "with the same trial list)")
        run = np.flatnonzero(keys == keys[np.flatnonzero(by_key == k)[0]])
        first = int(scored.line_no[int(by_key[run].min())])
        return VoxfastError(f"{where}: pair {pair!r} is scored twice (first on line {first}); keep one score per "
                            "trial")
    pos = np.minimum(np.searchsorted(keys, trial_keys), len(keys) - 1)
    unscored = int(trials_by_key[keys[pos] != trial_keys].min())
    enroll, test = trials.pair(unscored)
    return VoxfastError(f"{trial_path}:{trials.line_no[unscored]}: trial '{enroll} {test}' has no score in "
                        f"{score_path} (score and evaluate with the same trial list)")


def load_cohort(cohort: str | None, cohort_list: str | None = None, speaker_means: bool = False,
                mean: str | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The AS-norm cohort and the mean embedding that `voxfast score` asks for (None where not asked).

    `cohort`: an embedding table; with `speaker_means`, one mean row per speaker of `cohort_list`.
    `mean`: an embedding table whose mean is subtracted, or "cohort" for the cohort table's own mean.
    """
    from voxfast.data.manifest import read_utterances
    from voxfast.eval.tables import load_embeddings

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
