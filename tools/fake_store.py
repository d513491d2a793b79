"""A consistent packed store of N utterances without their audio, for measuring what opening a big store costs.

A real 10 M-utterance store is terabytes of audio; what `PackedStore` spends on opening depends only on its index.
This writes index.tsv, meta.json, pack.json and bad.tsv exactly as `voxfast pack` would, and audio.bin as a sparse
file of the right size (`truncate`: all zeros, a few KB on disk, ~2.5 TB apparent at 10 M; never copy it). Every
utterance's crc32 is the crc32 of its length in zero bytes, so the store passes every check, per utterance CRCs
included. The crcs of all distinct lengths come from one chained pass over at most the longest utterance's bytes.

    python tools/fake_store.py /work/scale_store/n1m 1000000
    python tools/fake_store.py /work/scale_store/n1m 1000000 --binary-index   # also build index/ (as pack does)
    python tools/fake_store.py --measure /work/scale_store/n1m               # open time and private memory

Ids and paths look like VoxCeleb2's (``id00012/vid0000001/00003.m4a``, ~28 B; paths ~55 B); speakers own
contiguous runs of utterances, as in a sorted list. The store is old-style (index.tsv only) unless
`binary_index` is set, so the first open measures building the binary index.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
_LINES_PER_WRITE = 500_000


def make_fake_store(folder: str | Path, n: int, speakers: int | None = None, seed: int = 0,
                    min_seconds: float = 4.0, max_seconds: float = 16.0, path_prefix: str = "/data/voxceleb2/dev/aac",
                    binary_index: bool = False) -> Path:
    """Write a complete int16 store of `n` utterances of `speakers` speakers (default n // 170, VoxCeleb2's ratio)
    into `folder` (created; an existing store there is overwritten) and return its path.

    Lengths are uniform in [min_seconds, max_seconds] at 16 kHz; `path_prefix` may contain spaces (the store's
    index allows any character but tab and newline). `binary_index` builds index/ as `voxfast pack` does.
    """
    if n <= 0:
        raise ValueError(f"a fake store needs at least one utterance, got {n}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(min_seconds * SAMPLE_RATE), int(max_seconds * SAMPLE_RATE) + 1, n, dtype=np.int64)
    crcs = zero_crcs(lengths * 2)
    spk = np.arange(n, dtype=np.int64) * (speakers or max(n // 170, 1)) // n
    _write_index(folder / "index.tsv", lengths, crcs, spk, path_prefix)
    samples = int(lengths.sum())
    with open(folder / "audio.bin", "wb") as f:
        f.truncate(samples * 2)
    (folder / "bad.tsv").write_bytes(b"")
    settings = {"format": 1, "dtype": "int16", "sample_rate": SAMPLE_RATE}
    (folder / "pack.json").write_text(json.dumps(settings, indent=2) + "\n")
    meta = {**settings, "utterances": n, "samples": samples,
            "checksum": f"{zlib.crc32(crcs.astype('<u4').tobytes()):08x}"}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if binary_index:
        from voxfast.audio.store import PackedStore

        PackedStore(folder)  # builds index/ and checks the store on the way
    return folder


def zero_crcs(nbytes: np.ndarray) -> np.ndarray:
    """crc32 of nbytes[i] zero bytes for every i: one crc chained over the sorted distinct sizes, so the work is
    the largest size, not the sum."""
    sizes, inverse = np.unique(nbytes, return_inverse=True)
    zeros = memoryview(bytes(int(sizes[-1])))
    out = np.empty(len(sizes), dtype=np.uint32)
    crc, done = 0, 0
    for k, size in enumerate(sizes.tolist()):
        crc = zlib.crc32(zeros[: size - done], crc)
        out[k], done = crc, size
    return out[inverse]


def utt_id(i: int, spk: int) -> str:
    """The id of utterance `i` of speaker `spk`: VoxCeleb2-shaped, unique for every i."""
    return f"id{spk:05d}/vid{i // 8:07d}/{i % 8:05d}.m4a"


def _write_index(path: Path, lengths: np.ndarray, crcs: np.ndarray, spk: np.ndarray, prefix: str) -> None:
    """index.tsv lines as `voxfast pack` writes them, half a million per write."""
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for lo in range(0, len(lengths), _LINES_PER_WRITE):
            hi = min(lo + _LINES_PER_WRITE, len(lengths))
            rows = zip(range(lo, hi), spk[lo:hi].tolist(), offsets[lo:hi].tolist(), lengths[lo:hi].tolist(),
                       crcs[lo:hi].tolist(), strict=True)
            f.write("".join(f"{u}\tid{s:05d}\t{o}\t{n}\t{SAMPLE_RATE}\t{c:08x}\t{prefix}/{u}\n"
                            for u, s, o, n, c in ((utt_id(i, s), s, o, n, c) for i, s, o, n, c in rows)))


# ----------------------------------------------------------------------------------------------- measuring


def private_bytes() -> dict[str, int]:
    """This process's private memory from /proc/self/smaps_rollup, in bytes: `uss` (Private_Clean + Private_Dirty,
    which counts file pages only this process maps) and `anon` (Private_Dirty: heap and copied-on-write pages)."""
    fields: dict[str, int] = {}
    with open("/proc/self/smaps_rollup", encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"uss": fields["Private_Clean"] + fields["Private_Dirty"], "anon": fields["Private_Dirty"],
            "rss": fields["Rss"]}


def measure(folder: str | Path, store_class: Any = None, touch: float = 0.01, seed: int = 0) -> dict[str, Any]:
    """Open the store at `folder` in this process and report seconds and private-memory growth per utterance; then
    fork a child that reads the metadata (id, speaker, path, offset, length, crc) of `touch` of the utterances at
    random, as loader workers do, and report its private-memory growth. Run it in a fresh process."""
    if store_class is None:
        from voxfast.audio.store import PackedStore as store_class
    before = private_bytes()
    start = time.perf_counter()
    store = store_class(folder)
    seconds = time.perf_counter() - start
    after = private_bytes()
    n = len(store)
    picks = np.random.default_rng(seed).choice(n, max(int(n * touch), 1), replace=False)
    child = _forked_growth(store, picks)
    return {"utterances": n, "open_seconds": round(seconds, 3),
            "open_uss_per_utt": round((after["uss"] - before["uss"]) / n, 1),
            "open_anon_per_utt": round((after["anon"] - before["anon"]) / n, 1),
            "child_uss_growth_mb": round(child["uss"] / 1e6, 1), "child_anon_growth_mb": round(child["anon"] / 1e6, 1)}


def _forked_growth(store: Any, picks: np.ndarray) -> dict[str, int]:
    """Private-memory growth of a forked child that touches the metadata of utterances `picks`."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, leave without running the parent's cleanup
        os.close(read_fd)
        before = private_bytes()
        for i in picks.tolist():
            _ = (store.utts[i], store.speakers[i], store.paths[i], int(store.offsets[i]), int(store.lengths[i]),
                 int(store.crcs[i]))
        after = private_bytes()
        os.write(write_fd, json.dumps({k: after[k] - before[k] for k in after}).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("n", type=int, nargs="?", help="utterances to write")
    parser.add_argument("--speakers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--binary-index", action="store_true", help="also build index/, as voxfast pack does")
    parser.add_argument("--measure", action="store_true", help="open FOLDER and report seconds and memory")
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.folder)))
        return 0
    if args.n is None:
        parser.error("N is needed to write a store")
    start = time.perf_counter()
    make_fake_store(args.folder, args.n, args.speakers, args.seed, binary_index=args.binary_index)
    print(f"wrote {args.folder} ({args.n} utterances) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
