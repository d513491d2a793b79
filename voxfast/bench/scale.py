"""`voxfast bench-scale`: what a list of millions of utterances costs at each step, against issue 18's targets.

A VoxCeleb2-sized list (1 M utterances) already makes per-line Python objects, per-utterance dicts and
copy-on-write page faults in loader workers visible; at 10 M they decide whether training starts at all.
This bench generates synthetic data of N lines (cached in --out, so a second run only measures) and times
the public entry points only: `read_utterances`, `SpeakerTask(cfg)` and its loader through the Task interface,
`PackedStore(path)`, `SpeakerBatchSampler`, and the `voxfast eval` / `voxfast score` commands. It relies on
nothing of their return values beyond len() and iteration, so it measures old and new internals alike.

Every figure that involves memory is taken in a fresh child process (`python -c` calling :func:`child_main`,
or the CLI itself), so imports, earlier stages and the allocator's free lists do not blur it. Peak RSS of a
process is its VmHWM (ru_maxrss would include the parent's, see :func:`peak_rss`); worker memory is the USS
(private pages) from /proc/PID/smaps_rollup, because RSS counts the pages a forked worker still shares with its
parent, and the copy-on-write growth of those is exactly what a Python list of millions of objects causes.

Data: a pool of short real WAV files (Kaldi allows many utterance ids per file, so the loader really reads
audio); a Kaldi dir (wav.scp + utt2spk) of N ids over skewed speaker counts; a VoxCeleb trial list of N unique
pairs over `ids` utterances with a score file in shuffled order and an embedding table; and a store whose N
index entries repeat the offsets of the pool's clips (see :func:`make_store`). Lines are built as fixed-width
byte arrays in numpy, a million rows per write, so 10 M lines take seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxfast.errors import VoxfastError

STAGES = ("list", "startup", "workers", "store", "sampler", "eval", "score")
MB = 1e6  # figures in decimal megabytes, as the targets are written
SAMPLE_RATE = 16000
POOL_FILES = 256
CHUNK = 1_000_000  # rows per write when generating lists
_OFFSET_BASE = 10_000_000  # the pool's clips start here in audio.bin, so every offset has 8 digits (see make_store)
_GENERATOR = 1  # bump when the generated data changes, so cached data is regenerated
RESULT_TAG = "SCALE_RESULT "


@dataclass(frozen=True)
class Target:
    """One of issue 18's limits at 10 M lines; smaller sizes are held to the same absolute figure."""

    limit: float
    text: str


TARGETS: dict[tuple[str, str], Target] = {
    ("startup", "seconds"): Target(15.0, "< 15 s"),
    ("workers", "worker_uss_growth_max_mb"): Target(20.0, "< 20 MB"),
    ("store", "worker_uss_growth_max_mb"): Target(20.0, "< 20 MB"),
    ("sampler", "epoch_build_seconds"): Target(2.0, "< 2 s"),
    ("eval", "seconds"): Target(10.0, "< 10 s"),
    ("eval", "peak_rss_mb"): Target(1500.0, "< 1.5 GB"),
    ("score", "seconds"): Target(20.0, "< 20 s"),
}


@dataclass
class Figure:
    size: int
    stage: str
    name: str
    value: float | None  # None: the stage failed or timed out (see note)
    unit: str
    target: str = ""
    passed: bool | None = None
    note: str = ""


@dataclass
class ScaleOptions:
    sizes: list[int]
    out: Path
    stages: tuple[str, ...] = STAGES
    workers: int = 2
    batches: int = 200  # epoch slice for the worker-memory stages (or 10 % of the epoch, whichever is smaller)
    ids: int = 200_000  # distinct utterances of the trial lists (and rows of the embedding table)
    dim: int = 256
    overrides: list[str] = field(default_factory=list)  # section.key=value for the training stages
    timeout: float = 1800.0  # seconds per child process
    keep: bool = False
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# Sizes and memory readings.


def parse_size(text: str) -> int:
    """`10M`, `1m`, `100k`, `3000` -> lines."""
    clean = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(clean[-1:], 1)
    try:
        number = float(clean[:-1] if scale > 1 else clean)
        whole = number > 0 and number * scale == int(number * scale)
    except (ValueError, OverflowError):
        whole = False
    if not whole:
        raise VoxfastError(f"--sizes: {text!r} is not a positive whole number of lines (e.g. 3000, 100k, 10M)")
    return int(number * scale)


def size_label(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % (scale // 10) == 0:
            return f"{n / scale:g}{unit}"
    return str(n)


def smaps_rollup_fields(text: str) -> dict[str, int]:
    """The `Key: N kB` lines of a /proc/PID/smaps_rollup text, in bytes."""
    fields = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


def uss_from_smaps_rollup(text: str) -> int:
    """Private bytes (USS) of a process from its /proc/PID/smaps_rollup text: pages no other process maps."""
    fields = smaps_rollup_fields(text)
    return sum(fields.get(k, 0) for k in ("Private_Clean", "Private_Dirty", "Private_Hugetlb"))


def process_memory(pid: int) -> tuple[int, int] | None:
    """(USS, Private_Dirty) of `pid` in bytes, None when it has exited or cannot be read.

    Private_Dirty leaves out Private_Clean, which includes file pages (a store's memmap) that only this process
    has read so far: page cache the kernel can drop, and shared as soon as another worker reads the same page.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return uss_from_smaps_rollup(text), smaps_rollup_fields(text).get("Private_Dirty", 0)


def current_rss() -> int:
    """Resident bytes of this process now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss(pid: int | str = "self") -> int | None:
    """Highest resident bytes of a process since its exec (VmHWM); None once it has exited.

    Not ru_maxrss: Linux carries it over fork and exec, so a child of a 1 GB parent reports >= 1 GB whatever
    it does itself, whereas VmHWM belongs to the memory map that exec made.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` from /proc/PID/task/*/children (psutil is not a dependency)."""
    pids: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            continue
    return sorted(set(pids))


def worker_pids(pid: int) -> list[int]:
    """Children that are forks of `pid` (same command line): DataLoader workers, not helper executables."""
    try:
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    forks = []
    for child in child_pids(pid):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() == own:
                forks.append(child)
        except OSError:
            continue
    return forks


# --------------------------------------------------------------------------------------------------
# Fixed-width lines, built as byte arrays: a column is an (n, width) uint8 array.


def digits(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of non-negative integers, (n, width) ASCII."""
    v = np.asarray(values, dtype=np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((v[:, None] // powers) % 10 + ord("0")).astype(np.uint8)


def hex8(values: np.ndarray) -> np.ndarray:
    """8 lower-case hex digits of uint32 values, (n, 8) ASCII (the store's crc column)."""
    v = np.asarray(values, dtype=np.int64)
    nibbles = (v[:, None] >> np.arange(28, -4, -4)) & 15
    return np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]


def const(text: str | bytes, n: int) -> np.ndarray:
    raw = text.encode() if isinstance(text, str) else text
    return np.broadcast_to(np.frombuffer(raw, dtype=np.uint8), (n, len(raw)))


def table(strings: Sequence[str]) -> np.ndarray:
    """Equal-length strings as an (len, width) array, to be gathered row-wise."""
    raw = [s.encode() for s in strings]
    if len({len(r) for r in raw}) != 1:
        raise ValueError("table rows must have equal length")
    return np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), -1)


def rows(*columns: np.ndarray) -> bytes:
    return np.concatenate(columns, axis=1).tobytes()


def write_chunked(path: Path, n: int, chunk_rows: Callable[[np.ndarray], bytes]) -> None:
    """Write `chunk_rows(indices)` for consecutive index chunks of at most CHUNK rows."""
    with open(path, "wb") as f:
        for start in range(0, n, CHUNK):
            f.write(chunk_rows(np.arange(start, min(start + CHUNK, n), dtype=np.int64)))


def width(n: int) -> int:
    """Digits of the largest of n ids."""
    return len(str(max(n - 1, 0)))


# --------------------------------------------------------------------------------------------------
# Generated data.


@dataclass
class Pool:
    """Short real 16 kHz int16 WAV files that every list points into."""

    paths: list[str]
    lengths: np.ndarray  # samples
    crcs: np.ndarray  # crc32 of each file's int16 samples (the store's per-utterance checksum)


def make_pool(folder: Path, files: int = POOL_FILES, seed: int = 0) -> Pool:
    """`files` WAV files of 2.5-4 s (noise and a drifting tone), made once; lengths have 5 digits."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "pool.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("generator") == _GENERATOR and saved.get("files") == files:
            return Pool(saved["paths"], np.array(saved["lengths"]), np.array(saved["crcs"], dtype=np.uint32))
    rng = np.random.default_rng(seed)
    paths, lengths, crcs = [], [], []
    for k in range(files):
        n = int(rng.integers(40_000, 64_000))
        t = np.arange(n) / SAMPLE_RATE
        wave = 0.1 * np.sin(2 * np.pi * (120 + 40 * rng.random()) * t * (1 + 0.1 * t)) + 0.02 * rng.standard_normal(n)
        samples = np.round(wave * 32767).astype("<i2")
        path = folder.resolve() / f"p{k:04d}.wav"
        sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
        paths.append(str(path))
        lengths.append(n)
        crcs.append(zlib.crc32(samples.tobytes()))
    record.write_text(json.dumps({"generator": _GENERATOR, "files": files, "paths": paths, "lengths": lengths,
                                  "crcs": crcs}))
    return Pool(paths, np.array(lengths), np.array(crcs, dtype=np.uint32))


def speaker_count(n: int) -> int:
    """VoxCeleb2's 5,994 speakers at 1 M utterances, ~111 k at 10 M (log-log between); small lists keep >= 4
    utterances a speaker but enough speakers to fill a batch of 256."""
    base = 5994 * n / 1e6 if n <= 1_000_000 else 5994 * (n / 1e6) ** np.log10(111_000 / 5994)
    return round(float(max(base, min(n // 4, 1024))))


def speaker_labels(n: int, seed: int = 0) -> np.ndarray:
    """Speaker of each of n utterances, grouped by speaker (as Kaldi dirs are sorted), log-normal counts >= 1."""
    speakers = speaker_count(n)
    rng = np.random.default_rng([seed, n])
    weights = rng.lognormal(0.0, 0.8, speakers)
    counts = 1 + rng.multinomial(n - speakers, weights / weights.sum())
    return np.repeat(np.arange(speakers, dtype=np.int64), counts)


def pool_choice(n: int, files: int, seed: int = 0) -> np.ndarray:
    """Which pool file each utterance plays (many ids per file)."""
    return np.random.default_rng([seed, n, 1]).integers(0, files, size=n)


def utterance_ids(labels: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns `idSSSSSS` and `idSSSSSS-IIIIIII` (speaker-prefixed and sorted, as Kaldi wants) for rows `index`."""
    swidth = max(6, width(int(labels[-1]) + 1))
    spk = np.concatenate([const("id", len(index)), digits(labels[index], swidth)], axis=1)
    utt = np.concatenate([spk, const("-", len(index)), digits(index, width(len(labels)))], axis=1)
    return spk, utt


def make_kaldi_dir(folder: Path, labels: np.ndarray, pool: Pool, seed: int = 0) -> Path:
    """wav.scp (`utt /abs/pool/pKKKK.wav`) and utt2spk (`utt spk`), one row per label."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    choice = pool_choice(n, len(pool.paths), seed)
    paths = table([" " + p + "\n" for p in pool.paths])

    def wav_rows(index: np.ndarray) -> bytes:
        return rows(utterance_ids(labels, index)[1], paths[choice[index]])

    def spk_rows(index: np.ndarray) -> bytes:
        spk, utt = utterance_ids(labels, index)
        return rows(utt, const(" ", len(index)), spk, const("\n", len(index)))

    write_chunked(folder / "wav.scp", n, wav_rows)
    write_chunked(folder / "utt2spk", n, spk_rows)
    return folder


def make_store(folder: Path, labels: np.ndarray, pool: Pool, seed: int = 0) -> Path:
    """A store of len(labels) utterances that passes PackedStore's checks today without holding their audio.

    audio.bin holds the pool's clips once, back to back from sample _OFFSET_BASE (so every offset has 8 digits,
    written as `voxfast pack` writes them), and is then extended with `truncate` to the size PackedStore
    expects, 2 bytes x the summed lengths of all N entries: a sparse file whose holes are never read (at 10 M
    ~1 TB apparent, a few MB on disk; do not copy it). Each index entry repeats the offset, length and real
    crc32 of the pool clip its utterance plays, so crops are real audio and pass the per-utterance CRC check,
    and meta.json's combined checksum is the crc32 chained over those crcs in index order, as packing writes it.
    """
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    choice = pool_choice(n, len(pool.paths), seed)
    offsets = _OFFSET_BASE + np.concatenate([[0], np.cumsum(pool.lengths)[:-1]])
    with open(folder / "audio.bin", "wb") as f:
        f.seek(_OFFSET_BASE * 2)
        for path in pool.paths:
            f.write(sf.read(path, dtype="int16")[0].astype("<i2").tobytes())
    samples = int(pool.lengths[choice].sum())
    if samples < _OFFSET_BASE + int(pool.lengths.sum()):
        raise ValueError(f"a fake store of {n} utterances is smaller than its pool region; use >= 1,000 lines")
    os.truncate(folder / "audio.bin", samples * 2)
    tail = table([f"\t{o}\t{n_}\t{SAMPLE_RATE}\t{c:08x}\t{p}\n"
                  for o, n_, c, p in zip(offsets, pool.lengths, pool.crcs, pool.paths, strict=True)])

    def index_rows(index: np.ndarray) -> bytes:
        spk, utt = utterance_ids(labels, index)
        return rows(utt, const("\t", len(index)), spk, tail[choice[index]])

    write_chunked(folder / "index.tsv", n, index_rows)
    crcs = pool.crcs[choice].astype("<u4")
    meta = {"format": 1, "dtype": "int16", "sample_rate": SAMPLE_RATE, "utterances": n, "samples": samples,
            "checksum": f"{zlib.crc32(crcs.tobytes()):08x}"}
    (folder / "pack.json").write_text(json.dumps({"format": 1, "dtype": "int16", "sample_rate": SAMPLE_RATE}))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def trial_pairs(index: np.ndarray, ids: int) -> tuple[np.ndarray, np.ndarray]:
    """(enroll, test) id numbers of trials `index`: every pair distinct, never an id against itself.

    Trial t pairs e = t mod ids with e + 1 + (j * 7919 mod (ids - 1)), j = t div ids; for a fixed e the
    offsets differ while j < ids - 1 (7919 is prime and does not divide ids - 1 at the sizes used), so no
    pair repeats: a repeated pair would be dropped by the trial reader, and with another label refused.
    """
    e = index % ids
    step = 1 + (index // ids) * 7919 % (ids - 1)
    return e, (e + step) % ids


def trial_labels_scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half target trials; scores in millionths, in [0, 10) so each prints as `d.dddddd` (fixed width),
    targets scoring higher on average so the EER is a real one."""
    rng = np.random.default_rng([seed, n, 2])
    labels = (rng.random(n) < 0.5).astype(np.int64)
    scores = np.round((0.4 + 0.25 * labels + 0.12 * rng.standard_normal(n)) * 1e6)
    return labels, np.clip(scores, 0, 9_999_999).astype(np.int64)


def id_names(ids: int) -> list[str]:
    return [f"u{k:0{width(ids)}d}" for k in range(ids)]


def make_trials(folder: Path, n: int, ids: int, seed: int = 0) -> tuple[Path, Path]:
    """trials.txt (`label enroll test`, n unique pairs over `ids` utterances) and scores.txt (`enroll test score`
    for the same pairs in a random order, as a score file from another tool may come)."""
    if ids * (ids - 1) < n or (ids - 1) % 7919 == 0:
        raise ValueError(f"{ids} ids cannot make {n} distinct trial pairs here; raise --ids")
    folder.mkdir(parents=True, exist_ok=True)
    labels, scores = trial_labels_scores(n, seed)
    order = np.random.default_rng([seed, n, 3]).permutation(n)
    w = width(ids)

    def pair_columns(index: np.ndarray) -> list[np.ndarray]:
        e, t = trial_pairs(index, ids)
        return [const("u", len(index)), digits(e, w), const(" u", len(index)), digits(t, w)]

    def trial_rows(index: np.ndarray) -> bytes:
        return rows(digits(labels[index], 1), const(" ", len(index)), *pair_columns(index), const("\n", len(index)))

    def score_rows(position: np.ndarray) -> bytes:
        index = order[position]
        value = scores[index]
        return rows(*pair_columns(index), const(" ", len(index)), digits(value // 1_000_000, 1),
                    const(".", len(index)), digits(value % 1_000_000, 6), const("\n", len(index)))

    write_chunked(folder / "trials.txt", n, trial_rows)
    write_chunked(folder / "scores.txt", n, score_rows)
    return folder / "trials.txt", folder / "scores.txt"


def make_embeddings(path: Path, ids: int, dim: int, seed: int = 0) -> Path:
    """An embedding table of every trial id (voxfast's own .npz writer, so `voxfast score` reads it)."""
    from voxfast.eval.embeddings import save_embeddings

    emb = np.random.default_rng([seed, ids, dim]).standard_normal((ids, dim), dtype=np.float32)
    save_embeddings(path, id_names(ids), emb)
    return path


@dataclass
class SizeData:
    n: int
    folder: Path
    kaldi: Path
    store: Path
    trials: Path
    scores: Path
    embeddings: Path
    ids: int


def _cached(folder: Path, key: dict[str, Any], make: Callable[[], Any]) -> None:
    """Run `make` unless `folder` holds data made with the same key (written last, so a killed run redoes it)."""
    done = folder / "done.json"
    if done.is_file() and json.loads(done.read_text()) == key:
        return
    shutil.rmtree(folder, ignore_errors=True)
    make()
    done.write_text(json.dumps(key))


def prepare_size(opts: ScaleOptions, n: int, pool: Pool) -> SizeData:
    """Generate (or reuse) the data of one size; only what the chosen stages need."""
    folder = opts.out / f"n{n}"
    ids = min(opts.ids, max(64, n // 5))
    key = {"generator": _GENERATOR, "n": n, "seed": opts.seed, "pool": len(pool.paths)}
    labels = speaker_labels(n, opts.seed)
    data = SizeData(n, folder, folder / "kaldi", folder / "store", folder / "trials" / "trials.txt",
                    folder / "trials" / "scores.txt", folder / "trials" / f"emb_{ids}x{opts.dim}.npz", ids)
    if {"list", "startup", "workers", "store"} & set(opts.stages):
        _cached(data.kaldi, key, lambda: make_kaldi_dir(data.kaldi, labels, pool, opts.seed))
    if "store" in opts.stages:
        _cached(data.store, key, lambda: make_store(data.store, labels, pool, opts.seed))
    if {"eval", "score"} & set(opts.stages):
        _cached(data.trials.parent, {**key, "ids": ids}, lambda: make_trials(data.trials.parent, n, ids, opts.seed))
    if "score" in opts.stages and not data.embeddings.is_file():
        make_embeddings(data.embeddings, ids, opts.dim, opts.seed)
    return data


# --------------------------------------------------------------------------------------------------
# Child processes.


@dataclass
class ChildRun:
    seconds: float  # wall clock from spawning to exit
    peak_rss: int  # bytes, the child's VmHWM as last read before it exited (see _wait)
    returncode: int
    output: str  # stdout + stderr
    spawned: float  # time.time() just before the spawn
    timed_out: bool = False

    def result(self) -> dict[str, Any]:
        """The child's JSON report (last RESULT_TAG line), or a failure description."""
        for line in reversed(self.output.splitlines()):
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG):])
        return {"error": self.failure()}

    def failure(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        tail = " | ".join(self.output.strip().splitlines()[-3:])
        return f"exit {self.returncode}: {tail[-400:]}"


def run_child(argv: list[str], log_path: Path, timeout: float, env: dict[str, str] | None = None) -> ChildRun:
    """Run argv with output to `log_path`; wall seconds and the child's own peak RSS."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        spawned = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out, status, peak = _wait(proc, timeout)
        seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here: keep Popen from waiting again
    return ChildRun(seconds, peak, code, log_path.read_text(errors="replace"), spawned, timed_out)


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[bool, int, int]:
    """Poll until exit or `timeout`: (timed out, wait status, peak RSS). VmHWM only rises, so the last reading
    misses at most the growth of the final 20 ms; a child past `timeout` is killed with its process group."""
    deadline, peak = time.perf_counter() + timeout, 0
    while True:
        peak = max(peak, peak_rss(proc.pid) or 0)
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            return False, status, peak
        if time.perf_counter() > deadline:
            os.killpg(proc.pid, 9)
            return True, os.waitpid(proc.pid, 0)[1], peak
        time.sleep(0.02)


def python_child(entry: str, spec: dict[str, Any], log_path: Path, timeout: float) -> ChildRun:
    """`python -c` calling :func:`child_main` with one JSON argument: a fresh interpreter per measurement."""
    code = "import sys; from voxfast.bench.scale import child_main; child_main(sys.argv[1:])"
    return run_child([sys.executable, "-c", code, entry, json.dumps(spec)], log_path, timeout)


def voxfast_child(args: list[str], log_path: Path, timeout: float) -> ChildRun:
    return run_child([sys.executable, "-m", "voxfast", *args], log_path, timeout)


def child_main(argv: list[str]) -> None:
    """Entry of the measuring child processes: `ENTRY JSON`; prints one RESULT_TAG line."""
    entries = {"list": _child_list, "store_open": _child_store_open, "training": _child_training}
    result = entries[argv[0]](json.loads(argv[1]))
    print(RESULT_TAG + json.dumps(result), flush=True)


def _child_list(spec: dict[str, Any]) -> dict[str, Any]:
    from voxfast.data.manifest import read_utterances

    before = current_rss()
    start = time.perf_counter()
    utts = read_utterances(spec["path"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_growth": current_rss() - before, "peak_rss": peak_rss(), "count": len(utts)}


def _child_store_open(spec: dict[str, Any]) -> dict[str, Any]:
    from voxfast.audio.store import PackedStore

    before = current_rss()
    start = time.perf_counter()
    store = PackedStore(spec["path"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_growth": current_rss() - before, "peak_rss": peak_rss(), "count": len(store)}


def _child_training(spec: dict[str, Any]) -> dict[str, Any]:
    """Start-up to the first batch through the Task interface (no model is built: the loader does not need
    one), then worker USS from when every worker has delivered its first batch to the end of the slice."""
    imported = time.time()
    from voxfast.config import load_config
    from voxfast.tasks.speaker import SpeakerTask

    out: dict[str, Any] = {"imported": time.time() - imported}
    built = time.time()
    task = SpeakerTask(load_config(None, spec["overrides"]))
    loader = task.train_batches(0)
    out["built"] = time.time() - built
    out["epoch_batches"] = len(loader)
    batches = iter(loader)
    next(batches)
    out["first_batch_at"] = time.time()
    out["peak_rss_at_first_batch"] = peak_rss()
    try:
        out.update(_worker_memory(batches, spec["workers"], spec["batches"], len(loader)))
    finally:
        del batches  # stops the workers
    return out


def _worker_memory(batches: Any, workers: int, limit: int, epoch: int) -> dict[str, Any]:
    """USS of each worker and of this process after each worker's first batch (batches go round-robin over
    workers) and after the slice: min(limit, 10 % of the epoch) batches in all."""
    taken = 1
    for _ in range(max(workers - 1, 0)):
        next(batches)
        taken += 1
    pids = worker_pids(os.getpid())
    first = {pid: process_memory(pid) for pid in pids}
    main_first = process_memory(os.getpid()) or (0, 0)
    slice_batches = max(min(limit, epoch // 10), taken)
    start = time.perf_counter()
    for _ in range(slice_batches - taken):
        next(batches)
    seconds = time.perf_counter() - start
    last = {pid: process_memory(pid) for pid in pids}
    main_last = process_memory(os.getpid()) or (0, 0)
    both = [p for p in pids if first[p] is not None and last[p] is not None]
    return {"workers": len(pids), "slice_batches": slice_batches, "slice_seconds": seconds,
            "worker_uss_first": [first[p][0] for p in both], "worker_uss_last": [last[p][0] for p in both],
            "worker_uss_growth": [last[p][0] - first[p][0] for p in both],
            "worker_dirty_growth": [last[p][1] - first[p][1] for p in both],
            "main_uss_first": main_first[0], "main_uss_growth": main_last[0] - main_first[0]}


# --------------------------------------------------------------------------------------------------
# Stages: each returns its figures for one size.


def _figures(n: int, stage: str, values: dict[str, tuple[float | None, str]], note: str = "") -> list[Figure]:
    """Figures of one stage, each beside its target when the issue sets one."""
    out = []
    for name, (value, unit) in values.items():
        target = TARGETS.get((stage, name))
        passed = None if target is None or value is None else value < target.limit
        out.append(Figure(n, stage, name, value, unit, target.text if target else "", passed, note))
    return out


def _failed(n: int, stage: str, names: dict[str, str], why: str) -> list[Figure]:
    return _figures(n, stage, {name: (None, unit) for name, unit in names.items()}, why)


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MB


def stage_list(opts: ScaleOptions, data: SizeData) -> list[Figure]:
    """Seconds and RSS growth of read_utterances on the Kaldi dir, in a fresh process."""
    run = python_child("list", {"path": str(data.kaldi)}, opts.out / "logs" / f"list_{data.n}.log", opts.timeout)
    r = run.result()
    names = {"seconds": "s", "rss_growth_mb": "MB", "peak_rss_mb": "MB", "utterances": "lines"}
    if "error" in r:
        return _failed(data.n, "list", names, r["error"])
    return _figures(data.n, "list", {"seconds": (r["seconds"], "s"), "rss_growth_mb": (_mb(r["rss_growth"]), "MB"),
                                     "peak_rss_mb": (_mb(r["peak_rss"]), "MB"), "utterances": (r["count"], "lines")})


def training_overrides(opts: ScaleOptions, data: SizeData, store: bool) -> list[str]:
    """The default config on the generated data; a store-backed run trains on the whole store (its
    data.train_list names no file, so no list is read beside it)."""
    source = ([f"data.store={data.store}", f"data.train_list={data.store / 'no_list.txt'}"] if store
              else [f"data.train_list={data.kaldi}"])
    return [*source, f"data.num_workers={opts.workers}", *opts.overrides]


def training_probe(opts: ScaleOptions, data: SizeData, store: bool) -> dict[str, Any]:
    """One fresh process: start-up to the first batch, then worker memory over the slice."""
    spec = {"overrides": training_overrides(opts, data, store), "workers": opts.workers, "batches": opts.batches}
    name = f"training_{'store' if store else 'files'}_{data.n}.log"
    run = python_child("training", spec, opts.out / "logs" / name, opts.timeout)
    r = run.result()
    if "error" not in r:
        r["startup_seconds"] = r["first_batch_at"] - run.spawned
    return r


_STARTUP = {"seconds": "s", "imports_seconds": "s", "task_build_seconds": "s", "peak_rss_mb": "MB",
            "epoch_batches": "batches"}
_WORKERS = {"worker_uss_growth_max_mb": "MB", "worker_uss_growth_mean_mb": "MB", "worker_dirty_growth_max_mb": "MB",
            "worker_uss_first_mean_mb": "MB", "main_uss_growth_mb": "MB", "slice_batches": "batches",
            "workers": "processes"}


def stage_startup(n: int, probe: dict[str, Any]) -> list[Figure]:
    """Seconds from spawning a fresh interpreter to the first training batch, with its parts and peak RSS."""
    if "error" in probe:
        return _failed(n, "startup", _STARTUP, probe["error"])
    return _figures(n, "startup", {
        "seconds": (probe["startup_seconds"], "s"), "imports_seconds": (probe["imported"], "s"),
        "task_build_seconds": (probe["built"], "s"), "peak_rss_mb": (_mb(probe["peak_rss_at_first_batch"]), "MB"),
        "epoch_batches": (probe["epoch_batches"], "batches")})


def worker_figures(n: int, stage: str, probe: dict[str, Any]) -> list[Figure]:
    """USS growth per DataLoader worker over the epoch slice (max and mean; the max of its Private_Dirty part
    too), and the main process's."""
    if "error" in probe:
        return _failed(n, stage, _WORKERS, probe["error"])
    growth, dirty, first = probe["worker_uss_growth"], probe["worker_dirty_growth"], probe["worker_uss_first"]
    note = "" if growth else "no DataLoader workers (data.num_workers=0)"
    return _figures(n, stage, {
        "worker_uss_growth_max_mb": (_mb(max(growth)) if growth else None, "MB"),
        "worker_uss_growth_mean_mb": (_mb(float(np.mean(growth))) if growth else None, "MB"),
        "worker_dirty_growth_max_mb": (_mb(max(dirty)) if dirty else None, "MB"),
        "worker_uss_first_mean_mb": (_mb(float(np.mean(first))) if first else None, "MB"),
        "main_uss_growth_mb": (_mb(probe["main_uss_growth"]), "MB"),
        "slice_batches": (probe["slice_batches"], "batches"), "workers": (probe["workers"], "processes")}, note)


STORE_FILES = frozenset({"audio.bin", "index.tsv", "meta.json", "pack.json", "done.json"})  # what make_store writes


def reset_store(folder: Path) -> None:
    """Remove whatever an earlier open left in the store folder (a reader may cache a derived index beside
    index.tsv), so the first open is measured on the store as packed, whatever the reader's cache is called."""
    for path in folder.iterdir():
        if path.name in STORE_FILES:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def stage_store(opts: ScaleOptions, data: SizeData) -> list[Figure]:
    """PackedStore(path) open seconds and RSS growth in a fresh process, on the store as packed and then again
    (a reader that caches something at the first open shows it in the second), then a store-backed task's
    start-up and worker USS growth as in the start-up and worker stages."""
    reset_store(data.store)
    figures = []
    for name in ("open", "reopen"):
        run = python_child("store_open", {"path": str(data.store)}, opts.out / "logs" / f"store_{name}_{data.n}.log",
                           opts.timeout)
        r = run.result()
        units = {f"{name}_seconds": "s", f"{name}_rss_growth_mb": "MB"}
        if "error" in r:
            figures += _failed(data.n, "store", units, r["error"])
        else:
            figures += _figures(data.n, "store", {f"{name}_seconds": (r["seconds"], "s"),
                                                  f"{name}_rss_growth_mb": (_mb(r["rss_growth"]), "MB")})
    probe = training_probe(opts, data, store=True)
    startup = probe.get("startup_seconds")
    figures += _figures(data.n, "store", {"startup_seconds": (startup, "s")}, probe.get("error", ""))
    return figures + worker_figures(data.n, "store", probe)


def stage_sampler(opts: ScaleOptions, n: int) -> list[Figure]:
    """One epoch of SpeakerBatchSampler(batch 256, 1 per speaker) over n skewed labels: set_epoch + len() + the
    first batch; then, for a fresh epoch, building and iterating all of it."""
    from voxfast.data.speaker import SpeakerBatchSampler

    labels = speaker_labels(n, opts.seed)
    sampler = SpeakerBatchSampler(labels, batch_size=256, n_per_speaker=1, max_seg_per_spk=0, seed=opts.seed)
    start = time.perf_counter()
    sampler.set_epoch(0)
    count = len(sampler)
    first = next(iter(sampler))
    build = time.perf_counter() - start
    start = time.perf_counter()
    sampler.set_epoch(1)
    iterated = sum(1 for _ in sampler)
    full = time.perf_counter() - start
    note = "" if len(first) == 256 and iterated == count else f"first batch {len(first)}, iterated {iterated}"
    return _figures(n, "sampler", {"epoch_build_seconds": (build, "s"), "full_epoch_seconds": (full, "s"),
                                   "batches": (count, "batches"), "speakers": (int(labels[-1]) + 1, "speakers")},
                    note)


def stage_eval(opts: ScaleOptions, data: SizeData) -> list[Figure]:
    """`voxfast eval SCORES --trials TRIALS` (scores in shuffled order): wall seconds and peak RSS."""
    run = voxfast_child(["eval", str(data.scores), "--trials", str(data.trials), "--json"],
                        opts.out / "logs" / f"eval_{data.n}.log", opts.timeout)
    return _command_figures(data.n, "eval", run)


def stage_score(opts: ScaleOptions, data: SizeData) -> list[Figure]:
    """`voxfast score TRIALS --embeddings EMB --out SCORES` (cosine): wall seconds and peak RSS."""
    out = data.folder / "scored.txt"
    run = voxfast_child(["score", str(data.trials), "--embeddings", str(data.embeddings), "--out", str(out),
                         "--overwrite"], opts.out / "logs" / f"score_{data.n}.log", opts.timeout)
    out.unlink(missing_ok=True)
    return _command_figures(data.n, "score", run, f"{data.ids} ids x {opts.dim}-d")


def _command_figures(n: int, stage: str, run: ChildRun, note: str = "") -> list[Figure]:
    names = {"seconds": "s", "peak_rss_mb": "MB"}
    if run.returncode != 0:
        return _failed(n, stage, names, run.failure())
    return _figures(n, stage, {"seconds": (run.seconds, "s"), "peak_rss_mb": (_mb(run.peak_rss), "MB")}, note)


# --------------------------------------------------------------------------------------------------
# The run.


def run_size(opts: ScaleOptions, n: int, pool: Pool) -> list[Figure]:
    """Every chosen stage at one size; the data is removed afterwards unless --keep."""
    started = time.perf_counter()
    data = prepare_size(opts, n, pool)
    figures = _figures(n, "generate", {"seconds": (time.perf_counter() - started, "s")})
    if "list" in opts.stages:
        figures += stage_list(opts, data)
    if {"startup", "workers"} & set(opts.stages):
        probe = training_probe(opts, data, store=False)
        figures += stage_startup(n, probe) if "startup" in opts.stages else []
        figures += worker_figures(n, "workers", probe) if "workers" in opts.stages else []
    if "store" in opts.stages:
        figures += stage_store(opts, data)
    if "sampler" in opts.stages:
        figures += stage_sampler(opts, n)
    if "eval" in opts.stages:
        figures += stage_eval(opts, data)
    if "score" in opts.stages:
        figures += stage_score(opts, data)
    if not opts.keep:
        shutil.rmtree(data.folder, ignore_errors=True)
    return figures


def run_scale_bench(opts: ScaleOptions) -> dict[str, Any]:
    """All sizes; returns (and writes to OUT/bench_scale.json) the figures with the machine's load around them."""
    unknown = set(opts.stages) - set(STAGES)
    if unknown:
        raise VoxfastError(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    opts.out.mkdir(parents=True, exist_ok=True)
    pool = make_pool(opts.out / "pool", seed=opts.seed)
    load_before = os.getloadavg()
    figures: list[Figure] = []
    for n in opts.sizes:
        figures += run_size(opts, n, pool)
    report = {"options": {**asdict(opts), "out": str(opts.out)}, "voxfast": str(Path(__file__).parents[1]),
              "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "figures": [asdict(f) for f in figures]}
    (opts.out / "bench_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_scale_results(report: dict[str, Any]) -> str:
    """A table of every figure beside its target (the issue's 10 M figure, applied at every size)."""
    lines = [f"{report['cpus']} CPUs, load average {report['loadavg_before'][0]:.1f} before, "
             f"{report['loadavg_after'][0]:.1f} after",
             f"{'size':>6} {'stage':<8} {'figure':<27} {'value':>10} {'unit':<9} {'target (10 M)':<14} result"]
    for f in report["figures"]:
        value = "-" if f["value"] is None else f"{f['value']:,.2f}" if f["unit"] in ("s", "MB") else f"{f['value']:,}"
        verdict = "" if f["passed"] is None else "PASS" if f["passed"] else "FAIL"
        if f["value"] is None and f["note"]:
            verdict = f"n/a: {f['note']}"
        line = f"{size_label(f['size']):>6} {f['stage']:<8} {f['name']:<27} {value:>10} {f['unit']:<9} " \
               f"{f['target']:<14} {verdict}"
        lines.append(line.rstrip())
    return "\n".join(lines)
