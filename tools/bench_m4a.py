"""Packing VoxCeleb2-style .m4a against packing WAV, and against PyAV's own decode, in one run.

Why: an m4a pack decodes AAC (PyAV) where a WAV pack only copies PCM, so the question is what the m4a route costs
on top of the codec itself: (a) `pack_store` of the m4a list, (b) `pack_store` of the same audio as 16-bit WAV,
(c) PyAV decoding the m4a files frame by frame (no conversion, downmix, resampling or store), with the same number
of processes. Every figure is audio samples per second of wall time (best of --repeats), page cache warm.

    .venv/bin/python tools/bench_m4a.py --utterances 200 --workers 1 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from voxfast.audio.store import pack_store
from voxfast.data.manifest import Utterance

SR = 16000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--utterances", type=int, default=200, help="utterances to make (default 200)")
    p.add_argument("--seconds", type=float, nargs=2, default=(4.0, 8.0), metavar=("MIN", "MAX"),
                   help="utterance lengths, uniform in [MIN, MAX] (default 4 8)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pack_store worker counts (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement; the best counts")
    p.add_argument("--dir", help="folder for the corpus and stores (default: a temporary one, removed after)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def write_m4a(path: Path, x: np.ndarray) -> None:
    """Mono AAC in MP4, as VoxCeleb2 ships it (FFmpeg's encoder at its default bitrate)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SR, 0, Fraction(1, SR)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def make_corpus(folder: Path, n: int, seconds: tuple[float, float], seed: int) -> tuple[list[Path], list[Path], int]:
    """n synthetic utterances (10 speakers) as WAV and m4a; returns both path lists and the total samples."""
    # Imported here: numba and scipy would slow the start of every spawned worker, which re-imports this module.
    from voxfast.data.synthetic import make_speaker, synthesize_utterance

    rng = np.random.default_rng(seed)
    speakers = [make_speaker(rng) for _ in range(10)]
    wavs, m4as, total = [], [], 0
    for i in range(n):
        x = synthesize_utterance(speakers[i % 10], rng, float(rng.uniform(*seconds))).astype(np.float32)
        wavs.append(folder / f"u{i:05d}.wav")
        m4as.append(folder / f"u{i:05d}.m4a")
        sf.write(wavs[-1], x, SR, subtype="PCM_16")
        write_m4a(m4as[-1], x)
        total += len(x)
    return wavs, m4as, total


def raw_decode(paths: list[str]) -> int:
    """PyAV alone: demux and decode every frame, nothing else; returns the samples decoded."""
    samples = 0
    for path in paths:
        with av.open(path) as container:
            for frame in container.decode(audio=0):
                samples += frame.samples
    return samples


def raw_decode_parallel(paths: list[Path], workers: int) -> int:
    """:func:`raw_decode` split over `workers` spawned processes, as pack_store spreads its chunks."""
    names = [str(p) for p in paths]
    if workers <= 1:
        return raw_decode(names)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        return sum(ex.map(raw_decode, [names[i::workers] for i in range(workers)]))


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Shortest wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def pack_seconds(paths: list[Path], out: Path, workers: int, repeats: int) -> float:
    """Best wall time of packing `paths` into a fresh int16 store at `out`."""
    utts = [Utterance(p.stem, "s", str(p)) for p in paths]

    def run() -> None:
        shutil.rmtree(out, ignore_errors=True)
        summary = pack_store(utts, out, SR, workers=workers, progress=False)
        if summary.bad:
            raise SystemExit(f"bench_m4a: {len(summary.bad)} files failed to pack, first: {summary.bad[0]}")

    return best_seconds(run, repeats)


def measure(folder: Path, wavs: list[Path], m4as: list[Path], total: int, workers: int, repeats: int) -> str:
    """One table row: samples/s of the three routes at `workers` processes and the two ratios."""
    m4a = total / pack_seconds(m4as, folder / "store_m4a", workers, repeats)
    wav = total / pack_seconds(wavs, folder / "store_wav", workers, repeats)
    raw = total / best_seconds(lambda: raw_decode_parallel(m4as, workers), repeats)
    return f"{workers:>7} {m4a / 1e6:>14.2f} {wav / 1e6:>14.2f} {raw / 1e6:>14.2f} {m4a / wav:>9.3f} {m4a / raw:>9.3f}"


def main() -> None:
    args = parse_args()
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_m4a_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        wavs, m4as, total = make_corpus(folder, args.utterances, tuple(args.seconds), args.seed)
        mb = sum(p.stat().st_size for p in m4as) / 1e6
        print(f"{args.utterances} utterances, {total / SR / 60:.1f} min at {SR} Hz ({mb:.1f} MB of m4a), made in "
              f"{time.perf_counter() - start:.0f} s; best of {args.repeats}, av {av.__version__}")
        print("workers  m4a pack MS/s  wav pack MS/s  raw PyAV MS/s   m4a/wav   m4a/raw")
        for workers in args.workers:
            print(measure(folder, wavs, m4as, total, workers, args.repeats), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
