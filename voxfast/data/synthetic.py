"""The embedded demo corpus: a source-filter voice synthesiser and MUSAN/RIR-style banks.

voxfast must show its whole pipeline on a fresh machine with no data and no network, so it makes its
own. Speakers differ the ways real voices do (pitch range and contour style, vocal-tract length,
idiosyncratic vowel formants, spectral tilt through the glottal open quotient, breathiness,
jitter/shimmer, speaking rate), while each utterance is a fresh random phone sequence with its own
session variability (pitch and rate shift, channel response, level, background noise). A model must
therefore learn voice characteristics, not content, loudness or a fixed tone.

Everything is derived from one integer seed, so two runs produce identical files.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numba
import numpy as np
import scipy.signal
import soundfile as sf

log = logging.getLogger(__name__)

SR = 16000
BLOCK = 32  # samples per control block (2 ms): formant targets are updated at this rate
N_FORMANTS = 5

# Male reference formants (Hz) of American-English vowels (Peterson & Barney style), F1-F3.
_VOWELS = np.array(
    [
        [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410], [730, 1090, 2440],
        [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690],
    ],
    dtype=np.float64,
)
# Voiced sonorant consonants (m, n, l, r, w, j): formant targets and a relative amplitude.
_SONORANTS = np.array(
    [[280, 1100, 2300], [280, 1700, 2600], [360, 1300, 2900], [420, 1300, 1600], [300, 700, 2200], [280, 2200, 2900]],
    dtype=np.float64,
)
_SONORANT_GAIN = np.array([0.3, 0.3, 0.6, 0.6, 0.6, 0.6])
# Fricatives (s, sh, f, th, h): noise band (Hz) and level relative to vowels.
_FRICATIVES = [
    ((4200, 7600), 0.25), ((2200, 4800), 0.3), ((1200, 7000), 0.08), ((1500, 7500), 0.06), ((500, 4000), 0.1),
]
# Stop bursts (p/b, t/d, k/g): burst noise band (Hz).
_BURSTS = [(500, 2500), (3000, 7000), (1500, 3500)]


@dataclass(frozen=True)
class Speaker:
    """Voice parameters that stay fixed across a speaker's utterances."""

    f0: float  # median pitch (Hz)
    f0_range: float  # pitch excursion (semitones, standard deviation of accents)
    declination: float  # pitch fall over a phrase (semitones per second)
    accent_rate: float  # pitch accents per second
    vtl: float  # formant scaling: 1 = male reference, larger = shorter vocal tract
    formant_offsets: tuple[float, ...]  # idiosyncratic relative shift of F1..F5
    vowel_offsets: tuple[float, ...]  # per-vowel F2 shift (dialect-like vowel colouring)
    bandwidth: float  # formant bandwidth scaling
    open_quotient: float  # glottal open quotient: larger is breathier and steeper tilt
    tilt: float  # extra one-pole spectral tilt of the source (0..0.9)
    breathiness: float  # aspiration noise relative to voicing
    jitter: float  # relative cycle-to-cycle pitch perturbation
    shimmer: float  # relative cycle-to-cycle amplitude perturbation
    rate: float  # speaking-rate factor (phones per second relative to average)
    nasal_gain: float  # how strongly nasals and liquids are voiced


def make_speaker(rng: np.random.Generator) -> Speaker:
    """Draw one voice; female and male voices differ in pitch and vocal-tract length, as real ones do."""
    female = rng.random() < 0.5
    f0 = float(np.exp(rng.normal(np.log(205.0 if female else 118.0), 0.13)))
    return Speaker(
        f0=f0,
        f0_range=float(rng.uniform(1.0, 4.0)),
        declination=float(rng.uniform(-3.0, 0.0)),
        accent_rate=float(rng.uniform(0.8, 2.5)),
        vtl=float(rng.uniform(1.08, 1.24) if female else rng.uniform(0.9, 1.06)),
        formant_offsets=tuple(float(v) for v in rng.normal(0.0, 0.05, N_FORMANTS)),
        vowel_offsets=tuple(float(v) for v in rng.normal(0.0, 0.06, len(_VOWELS))),
        bandwidth=float(rng.uniform(0.7, 1.6)),
        open_quotient=float(rng.uniform(0.4, 0.8)),
        tilt=float(rng.uniform(0.0, 0.8)),
        breathiness=float(rng.uniform(0.0, 0.35)),
        jitter=float(rng.uniform(0.002, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.12)),
        rate=float(rng.uniform(0.75, 1.3)),
        nasal_gain=float(rng.uniform(0.6, 1.4)),
    )


@numba.njit(cache=True, nogil=True)
def formant_cascade(x: np.ndarray, freqs: np.ndarray, bws: np.ndarray, sr: float, block: int) -> np.ndarray:
    """Klatt cascade of unity-DC-gain resonators whose centre frequencies change every `block` samples.

    freqs, bws: (n_blocks, K) in Hz. Each resonator is y[n] = A x[n] + B y[n-1] + C y[n-2].
    `formant_cascade_reference` is the scipy version used to test this kernel.
    """
    n = x.shape[0]
    k_count = freqs.shape[1]
    y = x.astype(np.float64)
    state = np.zeros((k_count, 2))
    for b in range(freqs.shape[0]):
        start = b * block
        stop = min(start + block, n)
        for k in range(k_count):
            r = math.exp(-math.pi * bws[b, k] / sr)
            bb = 2.0 * r * math.cos(2.0 * math.pi * freqs[b, k] / sr)
            cc = -r * r
            aa = 1.0 - bb - cc
            y1 = state[k, 0]
            y2 = state[k, 1]
            for i in range(start, stop):
                out = aa * y[i] + bb * y1 + cc * y2
                y2 = y1
                y1 = out
                y[i] = out
            state[k, 0] = y1
            state[k, 1] = y2
    return y


def formant_cascade_reference(x: np.ndarray, freqs: np.ndarray, bws: np.ndarray, sr: float, block: int) -> np.ndarray:
    """Slow float64 reference for :func:`formant_cascade`: scipy lfilter per block with carried state."""
    y = x.astype(np.float64).copy()
    last = np.zeros((freqs.shape[1], 2))  # (y[n-1], y[n-2]) per resonator
    for b in range(freqs.shape[0]):
        seg = slice(b * block, min((b + 1) * block, len(x)))
        for k in range(freqs.shape[1]):
            r = np.exp(-np.pi * bws[b, k] / sr)
            bb, cc = 2 * r * np.cos(2 * np.pi * freqs[b, k] / sr), -r * r
            zi = np.array([bb * last[k, 0] + cc * last[k, 1], cc * last[k, 0]])
            out, _ = scipy.signal.lfilter([1 - bb - cc], [1, -bb, -cc], y[seg], zi=zi)
            if len(out) >= 2:
                last[k] = out[-1], out[-2]
            elif len(out) == 1:
                last[k] = out[-1], last[k, 0]
            y[seg] = out
    return y


def _phone_plan(spk: Speaker, rng: np.random.Generator, n_blocks: int, rate: float) -> dict[str, np.ndarray]:
    """Lay out random syllables on the block grid: formant targets, voicing and frication per block."""
    formants = np.zeros((n_blocks, N_FORMANTS))
    voice = np.zeros(n_blocks)
    events: list[tuple[int, int, int, float]] = []  # (start block, length, kind index, gain) noise events
    ms = 1000.0 * BLOCK / SR
    b = int(rng.integers(5, 40))  # leading silence
    formants[:] = [*_VOWELS[8].tolist(), 3500.0, 4500.0]
    while b < n_blocks:
        if rng.random() < 0.12:  # pause between words
            b += int(rng.uniform(60, 250) / ms)
            continue
        onset = rng.random()
        if onset < 0.35:  # sonorant consonant
            i = int(rng.integers(len(_SONORANTS)))
            n = int(rng.uniform(40, 80) / (rate * ms))
            _fill(formants, voice, b, n, _SONORANTS[i], _SONORANT_GAIN[i] * spk.nasal_gain)
            b += n
        elif onset < 0.6:  # fricative
            i = int(rng.integers(len(_FRICATIVES)))
            n = int(rng.uniform(60, 120) / (rate * ms))
            events.append((b, n, i, _FRICATIVES[i][1]))
            b += n
        elif onset < 0.85:  # stop: closure then burst
            b += int(rng.uniform(30, 70) / (rate * ms))
            i = int(rng.integers(len(_BURSTS)))
            n = int(rng.uniform(8, 20) / ms)
            events.append((b, n, len(_FRICATIVES) + i, 0.3))
            b += n
        v = int(rng.integers(len(_VOWELS)))
        target = _VOWELS[v].copy()
        target[1] *= 1.0 + spk.vowel_offsets[v]
        n = int(rng.uniform(70, 180) / (rate * ms))
        _fill(formants, voice, b, n, target, 1.0)
        b += n
    return {"formants": formants, "voice": voice, "events": np.array(events, dtype=np.float64).reshape(-1, 4)}


def _fill(formants: np.ndarray, voice: np.ndarray, b: int, n: int, f123: np.ndarray, gain: float) -> None:
    end = min(b + n, len(voice))
    if end <= b:
        return
    formants[b:end, :3] = f123
    formants[b:end, 3:] = (3500.0, 4500.0)
    formants[end:, :3] = f123  # hold the last target through following silence (coarticulation)
    voice[b:end] = gain


def _smooth(track: np.ndarray, width: int) -> np.ndarray:
    """Moving average along time (axis 0): phone targets become gliding transitions."""
    kernel = np.ones(width) / width
    pad = [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (track.ndim - 1)
    padded = np.pad(track, pad, mode="edge")
    return scipy.signal.lfilter(kernel, [1.0], padded, axis=0)[width - 1 :]


def _glottal_source(spk: Speaker, f0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Differentiated Rosenberg pulses with jitter and shimmer, plus pulsed aspiration noise."""
    cycles_total = int(np.sum(f0) / SR) + 2
    jitter = 1.0 + spk.jitter * rng.standard_normal(cycles_total)
    shimmer = 1.0 + spk.shimmer * rng.standard_normal(cycles_total)
    phase = np.cumsum(f0 / SR)
    cycle = phase.astype(np.int64)
    phase = np.cumsum(f0 * jitter[cycle] / SR)
    cycle = np.minimum(phase.astype(np.int64), cycles_total - 1)
    t = phase - np.floor(phase)
    oq = spk.open_quotient
    tp = 0.65 * oq
    flow = np.where(
        t < tp,
        0.5 * (1.0 - np.cos(np.pi * t / tp)),
        np.where(t < oq, np.cos(0.5 * np.pi * (t - tp) / (oq - tp)), 0.0),
    )
    flow *= shimmer[cycle]
    aspiration = spk.breathiness * rng.standard_normal(len(f0)) * (0.3 + flow)
    source = np.diff(flow, prepend=0.0) * (f0 / 100.0) + 0.05 * aspiration
    if spk.tilt > 0:
        source = scipy.signal.lfilter([1.0 - spk.tilt], [1.0, -spk.tilt], source)
    return source


def _pitch_contour(spk: Speaker, rng: np.random.Generator, n: int, shift_st: float) -> np.ndarray:
    """Phrase declination plus smooth random accents, in semitones around the speaker's median."""
    secs = n / SR
    n_ctrl = max(int(secs * 50), 2)  # 20 ms control points
    t = np.linspace(0.0, secs, n_ctrl)
    phrase = 1.5 + rng.uniform(1.0, 2.5)
    st = spk.declination * (t % phrase) + shift_st
    accents = np.zeros(n_ctrl)
    n_acc = rng.poisson(spk.accent_rate * secs)
    for pos in rng.uniform(0.0, secs, n_acc):
        accents += rng.normal(0.0, spk.f0_range) * np.exp(-0.5 * ((t - pos) / 0.12) ** 2)
    st = st + accents
    return spk.f0 * 2.0 ** (np.interp(np.arange(n) / SR, t, st) / 12.0)


@functools.lru_cache(maxsize=64)
def _bandpass(lo: float, hi: float, order: int) -> np.ndarray:
    """Filter design is slower than filtering a phone, so the fixed phone bands are designed once."""
    return scipy.signal.butter(order, (lo, hi), btype="bandpass", fs=SR, output="sos")


def _band_noise(rng: np.random.Generator, n: int, band: tuple[float, float]) -> np.ndarray:
    return scipy.signal.sosfilt(_bandpass(float(band[0]), float(band[1]), 4), rng.standard_normal(n))


def synthesize_utterance(spk: Speaker, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One utterance of random phones in `spk`'s voice with per-session variability, float32 in [-1, 1]."""
    n_blocks = int(seconds * SR / BLOCK)
    n = n_blocks * BLOCK
    rate = spk.rate * rng.uniform(0.9, 1.1)
    plan = _phone_plan(spk, rng, n_blocks, rate)
    scale = spk.vtl * (1.0 + np.asarray(spk.formant_offsets))
    formants = _smooth(plan["formants"] * scale, 12)
    bws = np.maximum(formants * np.array([0.08, 0.07, 0.06, 0.06, 0.06]) * spk.bandwidth, 40.0)
    voice = np.repeat(_smooth(plan["voice"], 6), BLOCK)
    f0 = _pitch_contour(spk, rng, n, shift_st=rng.normal(0.0, 0.8))
    excitation = _glottal_source(spk, f0, rng) * voice
    speech = formant_cascade(excitation, formants, bws, float(SR), BLOCK)
    speech /= np.sqrt(np.mean(speech[voice > 0.5] ** 2) + 1e-12) if np.any(voice > 0.5) else 1.0
    speech += _frication(plan["events"], rng, n)
    return _session_channel(speech, rng)


def _frication(events: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n)
    bands = [f[0] for f in _FRICATIVES] + _BURSTS
    for start, length, kind, gain in events:
        s, m = int(start) * BLOCK, int(length) * BLOCK
        m = min(m, n - s)
        if m <= 16:
            continue
        env = np.sin(np.linspace(0.0, np.pi, m)) ** 0.5
        out[s : s + m] += gain * env * _band_noise(rng, m, bands[int(kind)]) * 3.0
    return out


def _session_channel(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Recording-session effects: a random band-limited channel, level and background noise."""
    low = rng.uniform(60.0, 250.0)
    high = rng.uniform(3800.0, 7600.0)
    sos = scipy.signal.butter(2, (low, high), btype="bandpass", fs=SR, output="sos")
    x = scipy.signal.sosfilt(sos, x)
    x = x / (np.sqrt(np.mean(x**2)) + 1e-12)
    noise = _coloured_noise(rng, len(x), rng.uniform(-1.5, 0.0))
    snr_db = rng.uniform(20.0, 40.0)
    x = x + noise * 10.0 ** (-snr_db / 20.0)
    level = 10.0 ** (rng.uniform(-26.0, -16.0) / 20.0)
    return np.clip(x * level, -1.0, 1.0).astype(np.float32)


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ f**exponent (0 white, -1 pink, -2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SR)
    f[0] = f[1]
    x = np.fft.irfft(spec * f ** (exponent / 2.0), n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


# ---------------------------------------------------------------- noise, music and RIR banks


def make_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Stationary-ish environmental noise: coloured noise, hum with harmonics, or modulated fan noise."""
    n = int(seconds * SR)
    kind = int(rng.integers(3))
    if kind == 0:
        x = _coloured_noise(rng, n, rng.uniform(-2.0, 0.5))
    elif kind == 1:
        t = np.arange(n) / SR
        base = rng.choice([50.0, 60.0]) * rng.integers(1, 4)
        x = sum(rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3)) for h in range(1, 8))
        x = x / np.std(x) + 0.3 * _coloured_noise(rng, n, -1.0)
    else:
        band = sorted(rng.uniform(100.0, 6000.0, 2))
        x = _band_noise(rng, n, (band[0], band[1] + 200.0))
        x *= 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 8.0) * np.arange(n) / SR)
    return _normalise(x, rng)


def make_music(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Additive-synthesis notes with harmonics and decays over a chord progression, plus percussion."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = np.zeros(n)
    tempo = rng.uniform(0.15, 0.5)
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    for start in np.arange(0.0, seconds, tempo):
        freq = root * 2 ** (rng.choice([0, 2, 4, 5, 7, 9, 11, 12, 16, 19]) / 12)
        env = np.where(t >= start, np.exp(-(t - start) * rng.uniform(2.0, 8.0)), 0.0)
        for h in range(1, 6):
            x += env * np.sin(2 * np.pi * freq * h * t) / h ** rng.uniform(1.0, 2.0)
        if rng.random() < 0.4:
            m = int(0.05 * SR)
            s = int(start * SR)
            x[s : s + m] += 0.5 * rng.standard_normal(len(x[s : s + m])) * np.exp(-np.arange(len(x[s : s + m])) / 200)
    return _normalise(x, rng)


def make_rir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Room impulse response: direct path, sparse early reflections, exponentially decaying diffuse tail."""
    length = int(min(max(rt60 * 1.2, 0.3), 1.0) * SR)
    t = np.arange(length) / SR
    h = np.zeros(length)
    delay = int(rng.uniform(0.001, 0.005) * SR)
    h[delay] = 1.0
    for _ in range(int(rng.integers(6, 16))):
        pos = delay + int(rng.uniform(0.002, 0.05) * SR)
        h[pos] += rng.uniform(-0.7, 0.7)
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60) * rng.uniform(0.2, 0.5)
    tail[: delay + int(0.005 * SR)] = 0.0
    h += scipy.signal.lfilter([1.0], [1.0, -rng.uniform(0.0, 0.6)], tail)
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def _normalise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    level = 10.0 ** (rng.uniform(-30.0, -18.0) / 20.0)
    return np.clip(x / (np.sqrt(np.mean(x**2)) + 1e-12) * level, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- the corpus on disk


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes of the generated corpus; defaults are the demo corpus."""

    seed: int = 0
    train_speakers: int = 40
    test_speakers: int = 20
    train_utts: int = 24  # utterances per training speaker
    test_utts: int = 12  # utterances per test speaker
    min_seconds: float = 2.0
    max_seconds: float = 8.0
    noise_files: int = 12  # per MUSAN category (noise, speech, music), 5 s each
    rirs: int = 20
    workers: int = 2


def _speaker_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _write_speaker(job: tuple[int, int, int, float, float, str, str]) -> list[str]:
    seed, index, n_utts, lo, hi, out, split = job
    spk = make_speaker(_speaker_rng(seed, index))
    rng = _speaker_rng(seed, index, 1)
    name = f"id{index:05d}"
    folder = Path(out) / "wav" / split / name
    folder.mkdir(parents=True, exist_ok=True)
    rel = []
    for u in range(n_utts):
        audio = synthesize_utterance(spk, rng, rng.uniform(lo, hi))
        path = folder / f"{u:03d}.wav"
        sf.write(path, audio, SR, subtype="PCM_16")
        rel.append(f"{name} wav/{split}/{name}/{u:03d}.wav")
    return rel


def _write_bank(job: tuple[int, str, int, str]) -> None:
    seed, kind, count, out = job
    folder = Path(out) / kind
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, 7, hash_kind(kind), i])
        if kind == "noise":
            audio = make_noise(rng, 5.0)
        elif kind == "music":
            audio = make_music(rng, 5.0)
        elif kind == "speech":  # babble source: voices not among the train or test speakers
            audio = synthesize_utterance(make_speaker(rng), rng, 5.0)
        else:
            # Peak-scaled to fit integer PCM (users renormalise RIRs to unit energy on load); float WAVs would
            # carry libsndfile's time-stamped PEAK chunk and break byte-for-byte determinism.
            rir = make_rir(rng, rng.uniform(0.2, 1.0))
            audio = 0.9 * rir / np.abs(rir).max()
        sf.write(folder / f"{kind}_{i:03d}.wav", audio, SR, subtype="PCM_24" if kind == "rirs" else "PCM_16")


def hash_kind(kind: str) -> int:
    """A stable small integer per bank name (Python's hash() is salted per process)."""
    return sum(ord(c) * (i + 1) for i, c in enumerate(kind))


def make_corpus(out: str | Path, spec: CorpusSpec = CorpusSpec()) -> dict[str, str]:
    """Write the corpus under `out` and return the paths of its lists.

    Layout: wav/{train,test}/idNNNNN/*.wav, train_list.txt (`spk path`), trials.txt
    (`label enroll test`, balanced, test speakers disjoint from training), noise/, speech/, music/,
    rirs/ and meta.json with the spec.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_train = spec.train_speakers
    lengths = (spec.min_seconds, spec.max_seconds)
    jobs = [(spec.seed, i, spec.train_utts, *lengths, str(out), "train") for i in range(n_train)]
    jobs += [(spec.seed, n_train + i, spec.test_utts, *lengths, str(out), "test") for i in range(spec.test_speakers)]
    banks = [(spec.seed, k, spec.noise_files, str(out)) for k in ("noise", "speech", "music")]
    banks.append((spec.seed, "rirs", spec.rirs, str(out)))
    if spec.workers > 1:
        with ProcessPoolExecutor(spec.workers) as pool:
            lists = list(pool.map(_write_speaker, jobs))
            list(pool.map(_write_bank, banks))
    else:
        lists = [_write_speaker(j) for j in jobs]
        for b in banks:
            _write_bank(b)
    train_lines = [line for lst in lists[:n_train] for line in lst]
    (out / "train_list.txt").write_text("\n".join(train_lines) + "\n")
    trials = make_trials([line for lst in lists[n_train:] for line in lst], spec.seed)
    (out / "trials.txt").write_text("\n".join(f"{lab} {a} {b}" for lab, a, b in trials) + "\n")
    (out / "meta.json").write_text(json.dumps({"generator": "voxfast.data.synthetic", **asdict(spec)}, indent=2))
    return {"train_list": str(out / "train_list.txt"), "trials": str(out / "trials.txt"), "root": str(out)}


def make_trials(lines: list[str], seed: int) -> list[tuple[int, str, str]]:
    """Every same-speaker pair as a target trial and as many random cross-speaker pairs as non-targets."""
    rng = np.random.default_rng([seed, 99])
    spk = [line.split()[0] for line in lines]
    path = [line.split()[1] for line in lines]
    targets = [(1, path[i], path[j]) for i in range(len(path)) for j in range(i + 1, len(path)) if spk[i] == spk[j]]
    nontargets: set[tuple[int, int]] = set()
    while len(nontargets) < len(targets):
        i, j = (int(v) for v in rng.integers(len(path), size=2))
        if spk[i] != spk[j]:
            nontargets.add((min(i, j), max(i, j)))
    trials = targets + [(0, path[i], path[j]) for i, j in sorted(nontargets)]
    order = rng.permutation(len(trials))
    return [trials[k] for k in order]
