"""SpeakerBatchSampler's invariants on concrete data, and the compiled kernels against the numpy reference."""

import numpy as np
import pytest

import voxfast.data.sampler as sampler_module
from voxfast.data.sampler import NUMBA, NUMPY, build_epoch, crop_seeds, fit_batches, speaker_index, splitmix64
from voxfast.data.speaker import CropKey, RingBatches, SpeakerBatchSampler, _splitmix64


def _skewed(n_speakers=600, total=50_000, lo=5, hi=400, seed=0):
    """Lognormal utterance counts per speaker, utterances listed in a random order, labels not 0..S-1."""
    rng = np.random.default_rng(seed)
    counts = rng.lognormal(0, 0.8, n_speakers)
    counts = np.clip(counts / counts.mean() * total / n_speakers, lo, hi).astype(np.int64)
    labels = np.repeat(np.arange(n_speakers) * 3 + 7, counts)
    return labels[rng.permutation(len(labels))]


LABELS = _skewed()


def _indices(batches):
    return np.array([[i for i, _ in b] for b in batches], dtype=np.int64).reshape(len(batches), -1)


@pytest.mark.parametrize("n_per_speaker", [1, 2, 4])
def test_no_speaker_twice_in_a_batch_and_groups_side_by_side(n_per_speaker):
    s = SpeakerBatchSampler(LABELS, batch_size=64, n_per_speaker=n_per_speaker, seed=1)
    batches = list(s)
    assert len(batches) == len(s) > 0
    idx = _indices(batches)
    assert idx.shape[1] == 64
    spk = LABELS[idx].reshape(len(idx), -1, n_per_speaker)
    assert (spk == spk[:, :, :1]).all()  # a speaker's crops are consecutive rows
    firsts = spk[:, :, 0]
    assert all(len(set(row)) == len(row) for row in firsts.tolist())  # ... and no other group of it in the batch
    assert len(np.unique(idx)) == idx.size  # no utterance twice in an epoch
    assert all(isinstance(i, int) and isinstance(d, int) for i, d in batches[0])  # Python ints, not numpy


@pytest.mark.parametrize(("cap", "n_per_speaker", "most"), [(5, 1, 5), (5, 2, 4), (0, 1, None)])
def test_max_seg_per_spk_caps_each_speaker(cap, n_per_speaker, most):
    s = SpeakerBatchSampler(LABELS, batch_size=32, n_per_speaker=n_per_speaker, max_seg_per_spk=cap, seed=2)
    _, per_speaker = np.unique(LABELS[_indices(list(s))], return_counts=True)
    if most is None:  # no cap: every speaker's utterances are all there (this corpus fits whole)
        _, available = np.unique(LABELS, return_counts=True)
        assert per_speaker.sum() > 0.99 * available.sum()
    else:
        assert per_speaker.max() == most


def test_each_epoch_shuffles_each_speakers_utterances_and_capped_draws():
    s = SpeakerBatchSampler(LABELS, batch_size=32, max_seg_per_spk=4, seed=3)
    first = _indices(list(s)).ravel()
    s.set_epoch(1)
    second = _indices(list(s)).ravel()
    by_speaker = [{spk: [i for i in epoch if LABELS[i] == spk] for spk in np.unique(LABELS)[:50]}
                  for epoch in (first, second)]
    changed = sum(by_speaker[0][spk] != by_speaker[1][spk] for spk in by_speaker[0])
    assert changed >= 48  # other utterances and another order, almost always


def test_a_speakers_groups_spread_over_the_epoch():
    s = SpeakerBatchSampler(LABELS, batch_size=64, seed=4)
    idx = _indices(list(s))
    quarter = np.arange(len(idx)) * 4 // len(idx)
    spk = LABELS[idx]
    for label, k in zip(*np.unique(spk, return_counts=True), strict=True):
        if k >= 40:
            per_quarter = np.bincount(quarter[(spk == label).any(axis=1)], minlength=4)
            assert np.abs(per_quarter - k / 4).max() <= 2 + k / 16, (label, per_quarter)


def test_ranks_split_the_world_one_epoch_in_order_with_the_same_seeds():
    full = list(SpeakerBatchSampler(LABELS, batch_size=32, n_per_speaker=2, seed=5))
    world = 3
    ranks = [SpeakerBatchSampler(LABELS, batch_size=32, n_per_speaker=2, seed=5, rank=r, world=world)
             for r in range(world)]
    per_rank = len(full) // world
    assert [len(r) for r in ranks] == [per_rank] * world
    dealt = [list(r) for r in ranks]
    interleaved = [dealt[b % world][b // world] for b in range(per_rank * world)]
    assert interleaved == full[: per_rank * world]  # indices and crop seeds alike
    assert not set(_indices(dealt[0]).ravel()) & set(_indices(dealt[1]).ravel())


def test_the_epoch_is_a_function_of_seed_and_epoch():
    def epoch(seed, e):
        s = SpeakerBatchSampler(LABELS, batch_size=32, seed=seed)
        s.set_epoch(e)
        return list(s)

    a = epoch(6, 2)
    assert a == epoch(6, 2)
    assert _indices(a).tolist() != _indices(epoch(7, 2)).tolist()
    assert _indices(a).tolist() != _indices(epoch(6, 3)).tolist()
    seeds = [d for b in a for _, d in b]
    assert len(set(seeds)) == len(seeds) and min(seeds) >= 0 and max(seeds) < 2**62


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_resume_at_batch_k_sees_the_tail_without_making_the_skipped_batches(monkeypatch, rank, world):
    s = SpeakerBatchSampler(LABELS, batch_size=32, seed=8, rank=rank, world=world)
    s.set_epoch(3)
    whole = list(s)
    k = len(whole) - 5
    made = []
    real = sampler_module.crop_seeds
    monkeypatch.setattr(sampler_module, "crop_seeds", lambda *a: made.append(a) or real(*a))
    assert list(s.iter_from(k)) == whole[k:]
    assert len(made) == 5  # the k skipped batches were never made
    assert list(s.iter_from(len(whole) + 3)) == []
    ring = RingBatches(s, slots=4)
    ring.set_epoch(3, skip=k)
    keyed = list(ring)
    assert len(ring) == 5 and len(keyed) == 5
    assert [[(key.index, key.seed) for key in b] for b in keyed] == whole[k:]
    assert all(isinstance(key, CropKey) and key.slot == j % 4 for j, b in enumerate(keyed) for key in b)


def test_a_batch_has_the_same_crop_seeds_however_it_is_reached():
    np.testing.assert_array_equal(crop_seeds(3, 1, 10, 8), crop_seeds(3, 1, 10, 8))
    assert not np.array_equal(crop_seeds(3, 1, 10, 8), crop_seeds(3, 1, 11, 8))
    assert not np.array_equal(crop_seeds(3, 1, 10, 8), crop_seeds(3, 2, 10, 8))
    one = list(SpeakerBatchSampler(LABELS, batch_size=16, seed=3))
    two = SpeakerBatchSampler(LABELS, batch_size=16, seed=3, rank=1, world=2)
    resumed = next(two.iter_from(7))  # global batch 2 * 7 + 1
    assert resumed == one[15]
    assert [d for _, d in resumed] == crop_seeds(3, 0, 15, 16).tolist()


def test_vectorised_splitmix64_is_the_scalar_one():
    values = [0, 1, 12345, 2**63 + 5, 2**64 - 1]
    assert splitmix64(np.array(values, dtype=np.uint64)).tolist() == [_splitmix64(v) for v in values]


@pytest.mark.parametrize(("batch", "n_per_speaker"), [(128, 1), (128, 2), (64, 1), (256, 2)])
def test_packing_drops_almost_nothing_on_a_skewed_corpus(batch, n_per_speaker):
    index = speaker_index(LABELS)
    slots = batch // n_per_speaker
    groups = index.counts // n_per_speaker
    for epoch in range(3):
        stats = build_epoch(index, batch, n_per_speaker, 0, seed=0, epoch=epoch).stats
        assert stats.packed + stats.over_cap + stats.partial + stats.collided == stats.groups == groups.sum()
        assert stats.over_cap == np.maximum(groups - fit_batches(groups, slots), 0).sum()  # only the unavoidable
        assert stats.partial < slots and stats.collided / stats.groups < 0.005


def test_a_speaker_with_more_groups_than_batches_loses_the_excess_only():
    labels = np.repeat(np.arange(11), [200] + [6] * 10)  # speaker 0 cannot be in every one of 200 batches
    s = SpeakerBatchSampler(labels, batch_size=4, seed=1)
    batches = _indices(list(s))
    assert fit_batches(np.array([200] + [6] * 10), 4) == 20
    stats = s.epoch_batches().stats
    assert stats.over_cap == 180 and stats.packed + stats.over_cap + stats.partial + stats.collided == 260
    assert len(batches) >= 19  # at most one batch short of the 20 any packing can make
    assert all(len(set(row)) == 4 for row in labels[batches].tolist())


def test_too_few_utterances_make_no_batch():
    s = SpeakerBatchSampler([0, 1, 2], batch_size=4)
    assert len(s) == 0 and list(s) == [] and list(s.iter_from(0)) == []
    assert len(SpeakerBatchSampler([], batch_size=4)) == 0


def test_fit_batches():
    assert fit_batches(np.array([3, 3, 3, 3]), 2) == 6
    assert fit_batches(np.array([100, 1, 1]), 2) == 2
    assert fit_batches(np.array([], dtype=np.int64), 2) == 0


@pytest.mark.parametrize(("n_per_speaker", "cap", "batch"), [(1, 0, 64), (2, 0, 32), (2, 7, 16), (1, 0, 4)])
def test_compiled_kernels_build_the_numpy_reference_epoch(n_per_speaker, cap, batch):
    labels = LABELS if batch > 4 else np.repeat(np.arange(10), [40, 3, 7, 12, 5, 9, 30, 4, 6, 8])
    fast = build_epoch(speaker_index(labels, NUMBA), batch, n_per_speaker, cap, seed=9, epoch=2, kernels=NUMBA)
    ref = build_epoch(speaker_index(labels, NUMPY), batch, n_per_speaker, cap, seed=9, epoch=2, kernels=NUMPY)
    np.testing.assert_array_equal(fast.batches, ref.batches)
    assert fast.stats == ref.stats


def test_compiled_speaker_index_is_the_reference():
    for labels in (LABELS, np.array([5, 5, 2, 9, 2, 5]), np.array([3])):
        shifted = labels - labels.min()
        for got, want in zip(NUMBA.index(shifted), NUMPY.index(shifted), strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("max_passes", [0, 1, 2, 64])
def test_compiled_cut_is_the_reference_and_never_repeats_a_speaker(max_passes):
    """Plain jittered keys (no phase) on heavy speakers collide often: the repeated passes and, when they run
    out, the whole-batch fallback are exercised on both implementations."""
    rng = np.random.default_rng(0)
    groups = np.array([30, 25, 20, 12, 9, 5, 3, 2, 1, 1, 8, 14])
    n, spk_bits, j_bits = int(groups.sum()), 4, 5
    ones = np.ones(len(groups))
    words = NUMPY.words(groups, rng.random(n), 0 * ones, ones, spk_bits, j_bits)
    np.testing.assert_array_equal(NUMBA.words(groups, rng.random(n) * 0 + 0.5, 0.1 * ones, 0.5 * ones, 4, 5),
                                  NUMPY.words(groups, rng.random(n) * 0 + 0.5, 0.1 * ones, 0.5 * ones, 4, 5))
    words.sort()
    fast = NUMBA.cut(words, groups, spk_bits, j_bits, 6, max_passes)
    ref = NUMPY.cut(words, groups, spk_bits, j_bits, 6, max_passes)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(np.sort(fast[1]), np.sort(ref[1]))
    assert fast[2] == ref[2] <= max_passes
    assert len(fast[0]) + len(fast[1]) == n
    spk_of = np.repeat(np.arange(len(groups)), groups)
    assert all(len(set(row)) == 6 for row in spk_of[fast[0]].reshape(-1, 6).tolist())
    if max_passes == 64:
        assert fast[2] >= 1  # the case does collide
