"""Speaker-balanced training batches of a whole epoch, built with numpy arrays and a few numba loops.

A corpus of ten million utterances cannot afford Python objects per item: the old sampler built each epoch as
lists of (index, seed) tuples at about 6 us an item, a minute per epoch at 10 M. Here an epoch is one 64-bit
sort and a few linear passes, held as one (batches, batch_size) array of utterance indices; tuples are made
for one batch at a time, when it is yielded.

Packing. Each speaker's utterances are shuffled (sorted on random keys inside the speaker's block), capped,
and cut into groups of `n_per_speaker`. The k groups of a speaker get the keys (j + c_j) / k, j = 0 .. k-1,
c_j in [0, 1): one group per k-th of the epoch, so they spread evenly over it. c_j = (1 - a) / 2 + a u_j, u_j
uniform and a = 1 - k / B (B: batches of the epoch): a speaker's consecutive keys are then at least 1/B apart,
a batch's width, so its groups rarely meet in a batch; a small speaker's groups get almost the full jitter
(a ~ 1) and fall independently of the others', and a speaker in nearly every batch sits mid-batch. All groups
are sorted by key and cut into batches of `slots` = batch_size / n_per_speaker groups. A group whose batch
already holds its speaker leaves the sequence, which closes up; that moves batch boundaries and can make new
collisions, so the check repeats until none is left. What collided is packed the same way again, in batches
inserted at random places of the epoch, and what is still left at the end is dropped: :class:`PackStats`
counts every group (on skewed corpora of 1 M and 10 M utterances, nothing beyond the final partial batch).
A speaker with more groups than the epoch can have batches (:func:`fit_batches`) cannot fit without repeating
in a batch: its excess groups are dropped for the epoch (`over_cap`).

Every linear pass has a numpy reference (:data:`NUMPY`) and a compiled twin (:data:`NUMBA`, the default)
held to the same output by the tests.

Crop seeds are a splitmix64 hash of (seed, epoch, global batch number, row), computed for a batch when it is
yielded, so a batch carries the same seeds whichever rank it was dealt to and wherever a resumed run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numba
import numpy as np
from torch.utils.data import Sampler

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_MAX_PASSES = 64  # collision passes of one packing level; skewed corpora need a handful
_MAX_LEVELS = 16  # packing levels (re-packs of what collided); later ones hold few groups


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values, wrapping like the scalar version (a bijection of 64-bit words)."""
    x = np.atleast_1d(np.asarray(x, dtype=np.uint64)) + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def crop_seeds(seed: int, epoch: int, batch: int, batch_size: int) -> np.ndarray:
    """Crop seeds (int64, 62 bits) of the rows of global batch `batch`: a function of nothing else, so a batch
    gets the same seeds on any rank of any world size and in a run resumed at any batch."""
    base = splitmix64(splitmix64(np.array([seed & _MASK64], dtype=np.uint64)) + np.uint64(epoch & _MASK64))
    rows = np.uint64(batch) * np.uint64(batch_size) + np.arange(batch_size, dtype=np.uint64)
    return (splitmix64(base + rows) >> np.uint64(2)).astype(np.int64)


def _bits(n: int) -> int:
    """Bits that hold the values 0 .. n - 1 (at least one)."""
    return max(int(n - 1).bit_length(), 1)


def _low(words: np.ndarray, bits: int) -> np.ndarray:
    """The low `bits` of 64-bit words as int64, in place (the words are consumed)."""
    words &= np.uint64((1 << bits) - 1)
    return words.view(np.int64)


class SpeakerIndex(NamedTuple):
    """Utterances grouped by speaker, computed once per sampler: the epochs only reshuffle inside the blocks."""

    order: np.ndarray  # utterance indices, speaker by speaker (speakers in label order), ascending in a speaker
    counts: np.ndarray  # utterances of each speaker
    starts: np.ndarray  # where each speaker's block starts in `order`


class Kernels(NamedTuple):
    """The linear passes of an epoch build. :data:`NUMBA` runs them as compiled loops (one fused pass each);
    :data:`NUMPY` is the vectorised reference that tests hold the compiled ones to, output for output."""

    index: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
    shuffle: Callable[[SpeakerIndex, np.ndarray], np.ndarray]
    members: Callable[[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray], None]
    words: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int], np.ndarray]
    cut: Callable[[np.ndarray, np.ndarray, int, int, int, int], tuple[np.ndarray, np.ndarray, int]]


# ---- numpy reference ----


def _index_np(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, counts, starts) of non-negative labels: one 64-bit sort, label high, index low (a stable argsort
    where they do not fit one word)."""
    n = len(labels)
    index_bits = _bits(n)
    if _bits(int(labels.max()) + 1) + index_bits <= 64:
        keys = (labels.astype(np.uint64) << np.uint64(index_bits)) | np.arange(n, dtype=np.uint64)
        keys.sort()
        order = _low(keys, index_bits)
    else:
        order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    return order, np.diff(np.r_[starts, n]), starts


def _shuffle_np(index: SpeakerIndex, rand: np.ndarray) -> np.ndarray:
    """`index.order` with each speaker's block sorted by `rand` (ties by position): one sort of 64-bit words
    (speaker, rand, position in the block), which `rand` leaves room for (see :func:`epoch_groups`)."""
    n, pos_bits = len(rand), _bits(int(index.counts.max()))
    block = np.repeat(index.starts, index.counts)
    words = np.repeat(np.arange(len(index.counts), dtype=np.uint64) << np.uint64(64 - _bits(len(index.counts))),
                      index.counts)
    words |= rand << np.uint64(pos_bits)
    words |= (np.arange(n) - block).astype(np.uint64)
    words.sort()
    return index.order[block + _low(words, pos_bits)]


def _members_np(shuffled: np.ndarray, starts: np.ndarray, groups: np.ndarray, m: int, out: np.ndarray) -> None:
    """Write each speaker's first `groups[s]` groups of `m` shuffled utterances into `out` (n_groups, m)."""
    spk = np.repeat(np.arange(len(groups)), groups)
    j = np.arange(len(spk)) - np.repeat(np.cumsum(groups) - groups, groups)
    out[:] = shuffled[(starts[spk] + j * m)[:, None] + np.arange(m)]


def _words_np(groups: np.ndarray, u: np.ndarray, offset: np.ndarray, spread: np.ndarray, spk_bits: int,
              j_bits: int) -> np.ndarray:
    """64-bit sort words of each speaker's k groups: the key (j + offset + spread * u) / k quantised into the high
    bits, then the speaker s and the group's number j (so a sort needs no argsort, and the sorted words name each
    group and its speaker without a gather); equal quantised keys fall back on (s, j), keeping a speaker's order."""
    n = len(u)
    spk = np.repeat(np.arange(len(groups), dtype=np.uint64), groups)
    j = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(groups) - groups, groups)
    k = np.repeat(groups, groups)
    key = (j.astype(np.float64) + (np.repeat(offset, groups) + np.repeat(spread, groups) * u)) / k
    low = spk_bits + j_bits
    top = (1 << (64 - low)) - 1
    quantised = np.minimum((key * float(top + 1)).astype(np.uint64), np.uint64(top))
    return (quantised << np.uint64(low)) | (spk << np.uint64(j_bits)) | j.astype(np.uint64)


def _decode(words: np.ndarray, groups: np.ndarray, spk_bits: int, j_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(group ids, speakers) of sorted words; group ids run speaker by speaker, j within."""
    spk = ((words >> np.uint64(j_bits)) & np.uint64((1 << spk_bits) - 1)).astype(np.int64)
    j = (words & np.uint64((1 << j_bits) - 1)).astype(np.int64)
    return (np.cumsum(groups) - groups)[spk] + j, spk


def collisions(seq: np.ndarray, spk: np.ndarray, slots: int) -> np.ndarray:
    """Which groups of `seq` (cut into batches of `slots`) share their batch with an earlier group of their speaker.

    `seq` must place each speaker's groups in id order (true of any key-sorted subsequence): then a speaker's
    groups in one batch are neighbours in id order, and comparing neighbours finds them all.
    """
    pos = np.full(len(spk), -1, dtype=np.int64)
    pos[seq] = np.arange(len(seq))
    ids = np.flatnonzero(pos >= 0)
    batch = pos[ids] // slots
    s = spk[ids]
    same = (s[1:] == s[:-1]) & (batch[1:] == batch[:-1])
    flags = np.zeros(len(seq), dtype=bool)
    flags[pos[ids[1:][same]]] = True
    return flags


def _cut_np(words: np.ndarray, groups: np.ndarray, spk_bits: int, j_bits: int, slots: int,
            max_passes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Cut sorted words into batches with no speaker twice: (batched group ids, leftover ids, passes).

    Colliding groups leave the sequence, which closes up; that moves batch boundaries and can make new
    collisions, so the check repeats (a few passes on skewed corpora). After `max_passes`, batches that still
    collide leave whole, which moves no other batch. Leftovers: the collided groups and the partial batch.
    """
    seq, _ = _decode(words, groups, spk_bits, j_bits)
    spk = np.repeat(np.arange(len(groups)), groups)
    removed = []
    for passes in range(max_passes + 1):
        full = len(seq) // slots * slots
        flags = collisions(seq[:full], spk, slots)
        if not flags.any():
            return seq[:full], np.concatenate([seq[full:], *removed]), passes
        if passes == max_passes:
            break
        removed.append(seq[:full][flags])
        seq = np.concatenate([seq[:full][~flags], seq[full:]])
    bad = np.repeat(flags.reshape(-1, slots).any(axis=1), slots)
    return seq[:full][~bad], np.concatenate([seq[full:], seq[:full][bad], *removed]), passes


NUMPY = Kernels(_index_np, _shuffle_np, _members_np, _words_np, _cut_np)


# ---- compiled twins: the same outputs in one pass each ----


@numba.njit(cache=True)
def _index_nb(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counting sort of non-negative labels (the caller bounds their range)."""
    counts = np.zeros(labels.max() + 1, np.int64)
    for label in labels:
        counts[label] += 1
    cursor = np.cumsum(counts) - counts
    order = np.empty(labels.size, np.int64)
    for i in range(labels.size):
        order[cursor[labels[i]]] = i
        cursor[labels[i]] += 1
    present = counts > 0
    counts = counts[present]
    return order, counts, np.cumsum(counts) - counts


@numba.njit(cache=True)
def _shuffle_nb(index: SpeakerIndex, rand: np.ndarray) -> np.ndarray:
    """:func:`_shuffle_np` without the global sort: each block is bucketed on the top bits of `rand` (about one
    utterance a bucket, stable) and finished by an insertion sort, linear on average."""
    order, counts, starts = index
    out = np.empty_like(order)
    width = 64 - _bits_nb(counts.size) - _bits_nb(counts.max())  # bits of rand, as _shuffle_np leaves room
    fill = np.zeros((1 << _bits_nb(counts.max())) + 1, np.int64)
    tmp = np.empty(counts.max(), np.int64)
    for s in range(counts.size):
        first, c = starts[s], counts[s]
        shift = np.uint64(max(width - _bits_nb(c), 0))
        fill[: (1 << _bits_nb(c)) + 1] = 0
        for i in range(c):
            fill[np.int64(rand[first + i] >> shift) + 1] += 1
        for b in range(1 << _bits_nb(c)):
            fill[b + 1] += fill[b]
        for i in range(c):
            b = np.int64(rand[first + i] >> shift)
            tmp[fill[b]] = i
            fill[b] += 1
        for a in range(1, c):
            x = tmp[a]
            b = a - 1
            while b >= 0 and rand[first + tmp[b]] > rand[first + x]:
                tmp[b + 1] = tmp[b]
                b -= 1
            tmp[b + 1] = x
        for i in range(c):
            out[first + i] = order[first + tmp[i]]
    return out


@numba.njit(cache=True)
def _bits_nb(n: int) -> int:
    """:func:`_bits` compiled."""
    bits = 1
    while (1 << bits) < n:
        bits += 1
    return bits


@numba.njit(cache=True)
def _members_nb(shuffled: np.ndarray, starts: np.ndarray, groups: np.ndarray, m: int, out: np.ndarray) -> None:
    g = 0
    for s in range(starts.size):
        for j in range(groups[s]):
            for t in range(m):
                out[g, t] = shuffled[starts[s] + j * m + t]
            g += 1


@numba.njit(cache=True)
def _words_nb(groups: np.ndarray, u: np.ndarray, offset: np.ndarray, spread: np.ndarray, spk_bits: int,
              j_bits: int) -> np.ndarray:
    words = np.empty(u.size, np.uint64)
    low = spk_bits + j_bits
    top = np.uint64((1 << (64 - low)) - 1)
    scale = float(1 << (64 - low))
    g = 0
    for s in range(groups.size):
        k = float(groups[s])
        name = np.uint64(s) << np.uint64(j_bits)
        for j in range(groups[s]):
            q = np.uint64(((float(j) + (offset[s] + spread[s] * u[g])) / k) * scale)
            words[g] = (min(q, top) << np.uint64(low)) | name | np.uint64(j)
            g += 1
    return words


@numba.njit(cache=True)
def _flag_nb(seq_spk: np.ndarray, full: int, slots: int, last: np.ndarray, flags: np.ndarray) -> bool:
    """:func:`collisions` by another route: walk the sequence remembering each speaker's latest batch (a small
    array that stays in cache), where the reference sorts its pairs out in id order; the same flags."""
    last[:] = -1
    found = False
    for i in range(full):
        s = seq_spk[i]
        if last[s] == i // slots:
            flags[i] = True
            found = True
        last[s] = i // slots
    return found


@numba.njit(cache=True)
def _sweep_nb(seq: np.ndarray, seq_spk: np.ndarray, n: int, slots: int, last: np.ndarray, flags: np.ndarray,
              left: np.ndarray, n_left: int) -> tuple[int, int, bool]:
    """One removal pass and the next pass's check in one sweep: flagged groups of seq[:n] go to `left`, the rest
    close up, and each kept group is flagged anew if its batch already holds its speaker. Returns (n, n_left,
    any flag). A kept group's new place is never after its old one, so the flags are rewritten in place."""
    last[:] = -1
    kept = 0
    for i in range(n):
        if flags[i]:
            left[n_left] = seq[i]
            n_left += 1
            flags[i] = False
            continue
        s = seq_spk[i]
        seq[kept] = seq[i]
        seq_spk[kept] = s
        flags[kept] = last[s] == kept // slots
        last[s] = kept // slots
        kept += 1
    full = kept // slots * slots
    flags[full:kept] = False
    return kept, n_left, flags[:full].any()


@numba.njit(cache=True)
def _cut_nb(words: np.ndarray, groups: np.ndarray, spk_bits: int, j_bits: int, slots: int,
            max_passes: int) -> tuple[np.ndarray, np.ndarray, int]:
    n = words.size
    first = np.cumsum(groups) - groups
    seq = np.empty(n, np.int64)
    seq_spk = np.empty(n, np.int32)
    spk_mask, j_mask = np.uint64((1 << spk_bits) - 1), np.uint64((1 << j_bits) - 1)
    for i in range(n):
        s = np.int64((words[i] >> np.uint64(j_bits)) & spk_mask)
        seq_spk[i] = s
        seq[i] = first[s] + np.int64(words[i] & j_mask)
    last = np.empty(groups.size, np.int64)
    flags = np.zeros(n, np.bool_)
    left = np.empty(n, np.int64)
    full = n // slots * slots
    found = _flag_nb(seq_spk, full, slots, last, flags)
    n_left = passes = 0
    while found and passes < max_passes:
        passes += 1
        n, n_left, found = _sweep_nb(seq, seq_spk, n, slots, last, flags, left, n_left)
        full = n // slots * slots
    if found:  # out of passes: batches that still collide leave whole, which moves no other batch
        for b in range(full // slots):
            if flags[b * slots: (b + 1) * slots].any():
                flags[b * slots: (b + 1) * slots] = True
        kept = 0
        for i in range(n):
            if flags[i]:
                left[n_left] = seq[i]
                n_left += 1
            else:
                seq[kept] = seq[i]
                kept += 1
        n = kept
        full = n // slots * slots
    left[n_left: n_left + n - full] = seq[full:n]
    return seq[:full], left[: n_left + n - full], passes


NUMBA = Kernels(_index_nb, _shuffle_nb, _members_nb, _words_nb, _cut_nb)


# ---- epoch build ----


def speaker_index(labels: np.ndarray, kernels: Kernels = NUMBA) -> SpeakerIndex:
    """Group utterance indices by label: a counting sort where the labels span a modest range, else a sort."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return SpeakerIndex(empty, empty, empty)
    shifted = labels - labels.min()
    counting = int(shifted.max()) < 4 * len(labels) + 1024
    return SpeakerIndex(*(kernels.index if counting else NUMPY.index)(shifted))


def fit_batches(groups: np.ndarray, slots: int) -> int:
    """The most batches of `slots` distinct speakers that speakers with these group counts can fill: the largest
    B with sum(min(groups, B)) >= slots * B (the sum is concave in B, so bisection finds it)."""
    lo, hi = 0, int(groups.sum()) // max(slots, 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(groups, mid).sum()) >= slots * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def epoch_groups(index: SpeakerIndex, n_per_speaker: int, max_seg_per_spk: int, slots: int,
                 rng: np.random.Generator, kernels: Kernels = NUMBA) -> tuple[np.ndarray, np.ndarray, int]:
    """(members, groups per speaker, groups over the cap) of one epoch.

    Each speaker's utterances are shuffled (sorted on random keys of 24 bits or more: equal keys keep their
    order, a negligible bias), capped at `max_seg_per_spk` and cut into groups
    of `n_per_speaker`: members is (n_groups, n_per_speaker), speaker by speaker. A speaker keeps at most as
    many groups as the epoch can have batches (:func:`fit_batches`); more could only repeat it in a batch.
    """
    n, n_spk = len(index.order), len(index.counts)
    usable = index.counts if max_seg_per_spk <= 0 else np.minimum(index.counts, max_seg_per_spk)
    offered = usable // n_per_speaker
    groups = np.minimum(offered, fit_batches(offered, slots))
    members = np.empty((int(groups.sum()), n_per_speaker), dtype=np.int32 if n < 2**31 else np.int64)
    if n:
        rand_bits = 64 - _bits(int(index.counts.max())) - _bits(n_spk)
        if rand_bits < 24:
            raise ValueError(f"{n_spk} speakers with up to {index.counts.max()} utterances: too many to shuffle")
        shuffled = kernels.shuffle(index, rng.integers(0, 1 << rand_bits, n, dtype=np.uint64))
        kernels.members(shuffled, index.starts, groups, n_per_speaker, members)
    return members, groups, int(offered.sum() - groups.sum())


class PackStats(NamedTuple):
    """Where an epoch's groups went; `collided / groups` is what packing loses beyond the unavoidable."""

    groups: int  # groups of n_per_speaker utterances the epoch offered
    packed: int  # groups placed in batches
    over_cap: int  # groups of speakers with more groups than the epoch can have batches
    partial: int  # groups of the final partial batch
    collided: int  # other groups packing could not place
    levels: int  # packing levels run
    passes: int  # collision passes that removed something, all levels together


def pack(groups: np.ndarray, slots: int, rng: np.random.Generator, kernels: Kernels = NUMBA,
         max_passes: int = _MAX_PASSES) -> tuple[np.ndarray, int, int]:
    """(batches, levels, passes): batches of `slots` group ids with no speaker twice, in epoch order; group ids
    run speaker by speaker, `groups[s]` of speaker s.

    Level 0 sorts all groups by their stratified keys and cuts them (:data:`Kernels` ``cut``); each further
    level does the same, with fresh keys, to what collided and the partial batch, and its batches go to random
    places among those made so far. It stops when a level makes no batch.
    """
    first = np.cumsum(groups) - groups
    ids = None  # this level's group ids, ascending; None: all of them
    level_groups = groups
    out = np.zeros((0, slots), dtype=np.int64)
    levels = passes = 0
    while levels < _MAX_LEVELS and (ids is None or len(ids) >= slots):
        if ids is not None:
            level_groups = np.bincount(np.searchsorted(first, ids, side="right") - 1)
            level_groups = level_groups[level_groups > 0]
        n = int(level_groups.sum())
        spk_bits, j_bits = _bits(len(level_groups)), _bits(int(level_groups.max(initial=1)))
        if spk_bits + j_bits > 44:
            raise ValueError(f"{len(level_groups)} speakers with up to {level_groups.max()} groups each: too many "
                             "to pack")
        spread = np.clip(1.0 - level_groups * (slots / max(n, 1)), 0.0, 1.0)  # keys a batch apart, or jittered
        offset = (1.0 - spread) * 0.5
        words = kernels.words(level_groups, rng.random(n), offset, spread, spk_bits, j_bits)
        words.sort()
        batched, left, n_passes = kernels.cut(words, level_groups, spk_bits, j_bits, slots, max_passes)
        levels, passes = levels + 1, passes + n_passes
        if not len(batched):
            break
        batches = (batched if ids is None else ids[batched]).reshape(-1, slots)
        out = batches if not len(out) else np.insert(
            out, np.sort(rng.integers(0, len(out) + 1, len(batches))), batches, axis=0)
        ids = np.sort(left if ids is None else ids[left])
    return out, levels, passes


class EpochBatches(NamedTuple):
    """One epoch of every rank: row b is global batch b (rank b % world deals it)."""

    epoch: int
    batches: np.ndarray  # (n_batches, batch_size) utterance indices, n_per_speaker crops of a speaker adjacent
    stats: PackStats


def build_epoch(index: SpeakerIndex, batch_size: int, n_per_speaker: int, max_seg_per_spk: int, seed: int,
                epoch: int, kernels: Kernels = NUMBA, max_passes: int = _MAX_PASSES) -> EpochBatches:
    """The batches of one epoch: a function of the data, the settings and (seed, epoch), the same on every rank."""
    rng = np.random.default_rng([seed & _MASK64, epoch & _MASK64])
    slots = batch_size // n_per_speaker
    members, groups, over_cap = epoch_groups(index, n_per_speaker, max_seg_per_spk, slots, rng, kernels)
    batches, levels, passes = pack(groups, slots, rng, kernels, max_passes)
    partial = len(members) % slots
    stats = PackStats(len(members) + over_cap, batches.size, over_cap, partial, len(members) - batches.size - partial,
                      levels, passes)
    return EpochBatches(epoch, np.take(members, batches, axis=0).reshape(len(batches), batch_size), stats)


class SpeakerBatchSampler(Sampler):
    """Batches in which no speaker appears twice, with `n_per_speaker` crops of each speaker side by side.

    Per epoch: each speaker's utterances are shuffled, capped at `max_seg_per_spk` (0: no cap) and cut into
    groups of `n_per_speaker`, spread over the epoch and packed as the module docstring says. With several
    processes, rank r takes every world-th batch and every rank gets the same number of batches. The epoch is
    held as numpy arrays; each yielded batch is a list of (utterance index, crop seed) pairs of Python ints.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        n_per_speaker: int = 1,
        max_seg_per_spk: int = 0,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size % n_per_speaker:
            raise ValueError(f"batch_size {batch_size} is not a multiple of n_per_speaker {n_per_speaker}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size, self.n_per_speaker = batch_size, n_per_speaker
        self.max_seg_per_spk = max_seg_per_spk
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0
        self._index = speaker_index(self.labels)
        self._cache: EpochBatches | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self) -> EpochBatches:
        """The current epoch's batches of all ranks, built on first use (about a second per 10 M utterances)."""
        if self._cache is None or self._cache.epoch != self.epoch:
            self._cache = build_epoch(self._index, self.batch_size, self.n_per_speaker, self.max_seg_per_spk,
                                      self.seed, self.epoch)
        return self._cache

    def __len__(self) -> int:
        """This rank's batches: the epoch's divided evenly, the remainder unused."""
        return len(self.epoch_batches().batches) // self.world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.iter_from(0)

    def iter_from(self, skip: int) -> Iterator[list[tuple[int, int]]]:
        """This rank's batches from its `skip`-th on, made one at a time: the skipped ones cost nothing, and the
        rest are exactly those an uninterrupted pass yields there."""
        epoch = self.epoch_batches()
        for i in range(max(skip, 0), len(epoch.batches) // self.world):
            b = self.rank + i * self.world
            seeds = crop_seeds(self.seed, epoch.epoch, b, self.batch_size)
            yield list(zip(epoch.batches[b].tolist(), seeds.tolist(), strict=True))
