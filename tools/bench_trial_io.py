"""Trial and score file I/O: the line-by-line readers (copied here as the baseline) against the columnar ones.

Generates N VoxCeleb-style trials over `--ids` distinct ids (``1 id10270/5r0dWxy17C8/00001.wav id...``), a score
file of the same pairs in shuffled order and an embedding table of the ids, then times, each in its own process
(so peak RSS is the phase's own), the two halves of the CLI commands:

* eval: read the trials, read the scores, put the labels in score order, EER/minDCF (`voxfast eval`);
* score: read the trials, cosine-score them from the embedding table, write the score file (`voxfast score`).

    python tools/bench_trial_io.py --n 1000000 [--ids 200000] [--dim 256] [--dir /work/scale_io] [--skip-old]

Prints wall and CPU seconds, peak RSS and the old/new ratio of each.
"""

from __future__ import annotations

import argparse
import filecmp
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from voxfast.data.manifest import Trial
from voxfast.errors import ListFormatError, VoxfastError

ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)


# ----------------------------------------------------------------------------------------------- data


def make_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct ids ``id1SSSS/VVVVVVVVVVV/UUUUU.wav`` (29 bytes each) as an (n, 29) uint8 array."""
    ids = np.zeros((n, 29), np.uint8)
    spk = np.arange(n) // max(1, n // 1250)
    ids[:, :7] = np.frombuffer(b"id1" + b"0" * 4, np.uint8)
    ids[:, 3:7] += _digits(spk, 4)
    ids[:, 7] = ord("/")
    ids[:, 8:19] = ALPHABET[rng.integers(0, 64, (n, 11))]
    ids[:, 19] = ord("/")
    ids[:, 20:25] = _digits(np.arange(n) % 100_000, 5) + ord("0")
    ids[:, 25:] = np.frombuffer(b".wav", np.uint8)
    return ids


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    return np.stack([(values // 10 ** (width - 1 - k)) % 10 for k in range(width)], axis=1).astype(np.uint8)


def make_files(folder: Path, n: int, n_ids: int, dim: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """trials_N.txt, scores_N.txt (the same pairs, shuffled) and emb_IDS.npz under `folder` (kept if present)."""
    folder.mkdir(parents=True, exist_ok=True)
    trials, scores, emb = folder / f"trials_{n}.txt", folder / f"scores_{n}.txt", folder / f"emb_{n_ids}_{dim}.npz"
    rng = np.random.default_rng(seed)
    ids = make_ids(n_ids, rng)
    if not emb.is_file():
        from voxfast.eval.embeddings import save_embeddings

        table = rng.standard_normal((n_ids, dim), dtype=np.float32)
        save_embeddings(emb, [bytes(r).decode() for r in ids], table / np.linalg.norm(table, axis=1, keepdims=True))
    if trials.is_file() and scores.is_file():
        return trials, scores, emb
    pairs = _distinct_pairs(n, n_ids, rng)
    labels = rng.integers(0, 2, n)
    values = rng.standard_normal(n) * 0.2 + 0.3 * labels
    order = rng.permutation(n)
    with open(trials, "wb") as ft, open(scores, "wb") as fs:
        for lo in range(0, n, 1 << 20):
            sl = slice(lo, lo + (1 << 20))
            e, t = ids[pairs[sl, 0]], ids[pairs[sl, 1]]
            rows = np.concatenate([(labels[sl, None] + ord("0")).astype(np.uint8), _col(e, " "), e, _col(e, " "), t,
                                   _col(e, "\n")], axis=1)
            ft.write(rows.tobytes())
            o = order[sl]
            fs.write("".join(f"{bytes(ids[a]).decode()} {bytes(ids[b]).decode()} {v:.6f}\n"
                             for a, b, v in zip(pairs[o, 0], pairs[o, 1], values[o].tolist(), strict=True)).encode())
    return trials, scores, emb


def _col(like: np.ndarray, char: str) -> np.ndarray:
    return np.full((len(like), 1), ord(char), np.uint8)


def _distinct_pairs(n: int, n_ids: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct (enroll, test) pairs of distinct ids."""
    keys = np.unique(rng.integers(0, n_ids * n_ids, int(n * 1.01) + 100))
    while len(keys) < n:
        keys = np.unique(np.concatenate([keys, rng.integers(0, n_ids * n_ids, n)]))
    keys = rng.permutation(keys)[:n]
    pairs = np.stack([keys // n_ids, keys % n_ids], axis=1)
    same = pairs[:, 0] == pairs[:, 1]
    pairs[same, 1] = (pairs[same, 1] + 1) % n_ids
    return pairs


# ----------------------------------------------------------------------------------------------- the old readers
# voxfast.data.manifest and voxfast.eval.scoring before the columnar rewrite, verbatim but for names.

_VOXCELEB, _KALDI, _UNLABELLED = "VoxCeleb", "Kaldi", "unlabelled"
_SHAPES = {_VOXCELEB: "'label enroll test' with label 0/1", _KALDI: "'enroll test target|nontarget'",
           _UNLABELLED: "'enroll test'"}
_FIX_LINE = "fix the line or delete it"


def _line_error(path: object, lineno: int, problem: str, text: str, fix: str = _FIX_LINE) -> ListFormatError:
    shown = text if len(text) <= 100 else text[:97] + "..."
    return ListFormatError(f"{path}:{lineno}: {problem}: {shown!r} ({fix})")


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    with path.open(encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            fields = raw.split()
            if fields and not fields[0].startswith("#"):
                yield lineno, fields


def _matches(fields: list[str], fmt: str) -> bool:
    if fmt == _UNLABELLED:
        return len(fields) == 2
    if fmt == _VOXCELEB:
        return len(fields) == 3 and fields[0] in ("0", "1")
    return len(fields) == 3 and fields[2] in ("target", "nontarget")


def _to_trial(fields: list[str], fmt: str) -> Trial:
    if fmt == _VOXCELEB:
        return Trial(enroll=fields[1], test=fields[2], label=int(fields[0]))
    if fmt == _KALDI:
        return Trial(enroll=fields[0], test=fields[1], label=int(fields[2] == "target"))
    return Trial(enroll=fields[0], test=fields[1], label=None)


def old_read_trials(path: Path) -> list[Trial]:
    fmt = ""
    trials: dict[tuple[str, str], tuple[Trial, int]] = {}
    for lineno, fields in _lines(path):
        if not fmt:
            fmt = next(f for f in (_VOXCELEB, _KALDI, _UNLABELLED) if _matches(fields, f))
        elif not _matches(fields, fmt):
            raise _line_error(path, lineno, "does not fit", " ".join(fields))
        trial = _to_trial(fields, fmt)
        earlier = trials.setdefault((trial.enroll, trial.test), (trial, lineno))
        if earlier[1] != lineno and earlier[0].label != trial.label:
            raise _line_error(path, lineno, "two labels", " ".join(fields))
    return [trial for trial, _ in trials.values()]


def old_read_scores(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    pairs: list[tuple[str, str]] = []
    values: list[float] = []
    for lineno, fields in _lines(path):
        if len(fields) != 3:
            raise _line_error(path, lineno, f"expected 3 columns, found {len(fields)}", " ".join(fields))
        value = float(fields[2])
        if not math.isfinite(value):
            raise _line_error(path, lineno, "score is not finite", " ".join(fields))
        values.append(value)
        pairs.append((fields[0], fields[1]))
    return pairs, np.asarray(values, dtype=np.float64)


def old_labels_in_score_order(pairs: Sequence[tuple[str, str]], trials: Sequence[Trial]) -> np.ndarray | None:
    if pairs != [(t.enroll, t.test) for t in trials]:
        by_pair = {(t.enroll, t.test): t for t in trials}
        first_seen: dict[tuple[str, str], int] = {}
        for i, pair in enumerate(pairs):
            if pair not in by_pair or first_seen.setdefault(pair, i) != i:
                raise VoxfastError(f"score line {i} does not match")
        if len(first_seen) != len(trials):
            raise VoxfastError("a trial has no score")
        trials = [by_pair[pair] for pair in pairs]
    if trials[0].label is None:
        return None
    return np.fromiter((t.label for t in trials), dtype=bool, count=len(trials))


def old_write_scores(path: Path, trials: Sequence[Trial], scores: np.ndarray) -> None:
    from voxfast.fileio import atomic_text

    with atomic_text(path) as f:
        for trial, score in zip(trials, np.asarray(scores, np.float64).tolist(), strict=True):
            f.write(f"{trial.enroll} {trial.test} {score:.6f}\n")


def old_trial_indices(trials: Sequence[Trial], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    enroll = np.fromiter((index[t.enroll] for t in trials), dtype=np.int64, count=len(trials))
    test = np.fromiter((index[t.test] for t in trials), dtype=np.int64, count=len(trials))
    return enroll, test


# ----------------------------------------------------------------------------------------------- phases


def run_phase(phase: str, trials: Path, scores: Path, emb: Path, out: Path) -> str:
    """One phase in this process; returns a one-line summary to check old and new agree."""
    from voxfast.eval.metrics import verification_metrics
    from voxfast.eval.scoring import cosine_scores, l2_normalise

    if phase == "old-eval":
        table = old_read_trials(trials)
        pairs, values = old_read_scores(scores)
        labels = old_labels_in_score_order(pairs, table)
        return f"eer {verification_metrics(values, labels)['eer']:.6f}"
    if phase == "new-eval":
        from voxfast.data.manifest import read_scores, read_trials
        from voxfast.eval.scoring import labels_in_score_order

        table = read_trials(trials)
        pairs, values = read_scores(scores)
        labels = labels_in_score_order(scores, pairs, trials, table)
        return f"eer {verification_metrics(values, labels)['eer']:.6f}"
    from voxfast.eval.embeddings import load_embeddings  # torch comes with it: 1-7 s of imports, `voxfast score`'s too

    ids, table_emb = load_embeddings(emb)
    if phase == "old-score":
        listed = old_read_trials(trials)
        s = cosine_scores(l2_normalise(table_emb), *old_trial_indices(listed, {u: i for i, u in enumerate(ids)}))
        old_write_scores(out, listed, s)
    else:
        from voxfast.data.manifest import read_trials, write_scores
        from voxfast.eval.scoring import score_trials_from_table

        listed = read_trials(trials)
        s = score_trials_from_table(listed, ids, table_emb)
        write_scores(out, listed, s)
    return f"mean score {float(np.mean(s, dtype=np.float64)):.9f}"


def measure(phase: str, files: tuple[Path, Path, Path], out: Path) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS GB, summary) of a phase run in a child process."""
    cmd = [sys.executable, __file__, "--phase", phase, *map(str, files), str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    summary = proc.stdout.read().strip() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{phase} failed")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20, summary  # ru_maxrss: KiB on Linux


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        phase, *paths = sys.argv[2:]
        print(run_phase(phase, *map(Path, paths)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="trials")
    parser.add_argument("--ids", type=int, default=200_000, help="distinct utterance ids")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension")
    parser.add_argument("--dir", type=Path, default=Path("/work/scale_io"))
    parser.add_argument("--skip-old", action="store_true", help="time the columnar readers only")
    args = parser.parse_args()
    files = make_files(args.dir, args.n, args.ids, args.dim)
    print(f"{args.n} trials over {args.ids} ids ({files[0].stat().st_size / 1e6:.0f} MB trials, "
          f"{files[1].stat().st_size / 1e6:.0f} MB scores); wall s, CPU s, peak RSS GB")
    for task in ("eval", "score"):
        rows = {}
        for kind in ("old", "new"):
            if kind == "old" and args.skip_old:
                continue
            out = args.dir / f"out_{kind}_{args.n}.txt"
            rows[kind] = measure(f"{kind}-{task}", files, out)
            wall, cpu, rss, summary = rows[kind]
            print(f"  {task:<5} {kind}: {wall:7.2f} s wall {cpu:7.2f} s CPU {rss:6.2f} GB   ({summary})")
        if len(rows) == 2:
            print(f"  {task:<5} old/new: {rows['old'][0] / rows['new'][0]:.1f}x wall, "
                  f"{rows['old'][1] / rows['new'][1]:.1f}x CPU, {rows['old'][2] / rows['new'][2]:.1f}x RSS")
        if task == "score" and len(rows) == 2:
            same = filecmp.cmp(args.dir / f"out_old_{args.n}.txt", args.dir / f"out_new_{args.n}.txt", shallow=False)
            print(f"  score files of old and new byte for byte equal: {same}")
    for kind in ("old", "new"):
        (args.dir / f"out_{kind}_{args.n}.txt").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
