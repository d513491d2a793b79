"""The speaker batch sampler's epoch build: the old pure-Python packer against the numpy/numba one, in one run.

Why: at ten million utterances the old sampler spent about a minute per epoch making (index, seed) tuples before
the first batch. This times one epoch's build by both on skewed corpora (lognormal utterance counts per speaker):
a VoxCeleb2-like one (5,994 speakers, ~1.09 M utterances, 20 to 1,000 each) and a 10 M one (111 k speakers), for
n_per_speaker 1 and 2, and prints the ratio and what each packer drops. The old algorithm is copied below as it
was (`_old_groups`, `_old_pack_batches`, `_old_epoch`), since the library no longer has it.

    .venv/bin/python tools/bench_sampler.py                 # both corpora, batch 256
    .venv/bin/python tools/bench_sampler.py --corpora vox2 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from voxfast.data.sampler import SpeakerBatchSampler, build_epoch, speaker_index

CORPORA = {"vox2": (5_994, 1_090_000, 20, 1_000), "10M": (111_000, 10_000_000, 10, 1_000)}


def skewed_labels(n_speakers: int, total: int, lo: int, hi: int, seed: int = 0) -> np.ndarray:
    """Speaker labels of `total`-ish utterances, lognormal counts clipped to [lo, hi], listed in a random order."""
    rng = np.random.default_rng(seed)
    counts = rng.lognormal(0.0, 0.75, n_speakers)
    counts = np.clip(counts / counts.mean() * total / n_speakers, lo, hi).astype(np.int64)
    labels = np.repeat(np.arange(n_speakers), counts)
    return labels[rng.permutation(len(labels))]


# ---- the old algorithm, as voxfast.data.speaker had it ----


def _old_groups(labels: np.ndarray, n_per_speaker: int, max_seg_per_spk: int, seed: int,
                epoch: int) -> list[tuple[int, list[int]]]:
    rng = np.random.default_rng([seed, epoch])
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    groups: list[tuple[int, list[int]]] = []
    for members in np.split(order, bounds):
        members = rng.permutation(members)
        if max_seg_per_spk > 0:
            members = members[:max_seg_per_spk]
        usable = len(members) - len(members) % n_per_speaker
        speaker = int(labels[members[0]]) if len(members) else -1
        groups += [(speaker, g) for g in members[:usable].reshape(-1, n_per_speaker).tolist()]
    return [groups[i] for i in rng.permutation(len(groups))]


def _old_pack_batches(groups: list[tuple[int, list[int]]], slots: int) -> list[list[int]]:
    batches: list[list[int]] = []
    waiting: dict[int, list[list[int]]] = {}
    current: dict[int, list[int]] = {}
    pending = iter(groups)
    while True:
        spk = next((k for k in waiting if k not in current), None)
        if spk is not None:
            group = waiting[spk].pop()
            if not waiting[spk]:
                del waiting[spk]
        else:
            item = next(pending, None)
            if item is None:
                break
            spk, group = item
            if spk in current:
                waiting.setdefault(spk, []).append(group)
                continue
        current[spk] = group
        if len(current) == slots:
            batches.append([i for g in current.values() for i in g])
            current = {}
    return batches


def _old_epoch(labels: np.ndarray, batch_size: int, n_per_speaker: int, seed: int = 0,
               epoch: int = 0) -> tuple[list[list[tuple[int, int]]], int]:
    """The old `_batches()` for rank 0 of 1: (batches of (index, seed) tuples, groups offered)."""
    groups = _old_groups(labels, n_per_speaker, 0, seed, epoch)
    every = _old_pack_batches(groups, batch_size // n_per_speaker)
    seeds = np.random.default_rng([seed, epoch, 1]).integers(0, 2**62, size=(len(every), batch_size))
    return [list(zip(b, s.tolist(), strict=True)) for b, s in zip(every, seeds, strict=False)], len(groups)


# ---- the run ----


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        out = None
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench(name: str, labels: np.ndarray, batch: int, n_per_speaker: int, repeats: int, old: bool) -> None:
    index = speaker_index(labels)
    new_s, epoch = _best(lambda: build_epoch(index, batch, n_per_speaker, 0, 0, 0), repeats)
    stats = epoch.stats
    sampler = SpeakerBatchSampler(labels, batch, n_per_speaker)
    sampler.epoch_batches()
    first = time.perf_counter()
    yielded = sum(1 for _ in zip(range(1000), sampler.iter_from(0), strict=False))
    per_batch_us = (time.perf_counter() - first) / max(yielded, 1) * 1e6
    line = (f"{name:5s} n={len(labels):>10,d} spk={len(index.counts):>7,d} batch={batch} m={n_per_speaker}  "
            f"new {new_s:7.3f} s ({new_s / len(labels) * 1e9:5.0f} ns/item, yield {per_batch_us:5.0f} us/batch)  "
            f"drop: collided {stats.collided / stats.groups:.4%}, partial {stats.partial}, over cap {stats.over_cap}")
    if old:
        del epoch
        old_s, (batches, offered) = _best(lambda: _old_epoch(labels, batch, n_per_speaker), 1)
        old_drop = offered - len(batches) * (batch // n_per_speaker)
        line += (f"\n      old {old_s:7.3f} s ({old_s / len(labels) * 1e9:5.0f} ns/item)  "
                 f"old/new {old_s / new_s:6.1f}x  "
                 f"old drop: {old_drop} groups ({old_drop / offered:.4%}, its partial batch included)")
        del batches
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n-per-speaker", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many new builds (the old runs once)")
    parser.add_argument("--no-old", action="store_true", help="skip the old packer (a minute and GBs at 10 M)")
    args = parser.parse_args()
    t = time.perf_counter()
    build_epoch(speaker_index(np.arange(64) % 8), 4, 1, 0, 0, 0)  # compile (or load) the numba kernels
    print(f"numba kernels ready in {time.perf_counter() - t:.2f} s (cached after the first run)", flush=True)
    for name in args.corpora:
        labels = skewed_labels(*CORPORA[name])
        for m in args.n_per_speaker:
            bench(name, labels, args.batch, m, args.repeats, not args.no_old)


if __name__ == "__main__":
    main()
