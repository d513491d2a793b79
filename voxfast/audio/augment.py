"""Additive noise (MUSAN noise, music, babble) and reverberation (RIRs) for training crops.

One definition, two implementations. :func:`draw_plan` makes every random choice for a crop up front
(kind, RIR, noise files, their offsets and SNRs) into a fixed-size :class:`Plan`. :func:`augment_numpy`
applies a plan to one crop in a loader worker; :func:`augment_batch` applies a stacked batch of plans on the
model's device with index gathers and one batched FFT. Because the draws are separate from the arithmetic,
the two placements give the same result for the same seed, and each is tested against the other.

Conventions follow voxceleb_trainer (five kinds, its SNR ranges, babble of 3-7 voices, unit-energy RIRs) with
two deliberate fixes: no +1e-4 power offsets, so the achieved SNR equals the drawn one, and reverberation is a
linear (zero-padded FFT) convolution cropped to the input, never a circular one whose tail wraps to the start.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.fft
import torch

from voxfast.audio.io import AUDIO_SUFFIXES_TEXT, PCM16_SCALE, find_audio_files, read_audio, to_float32
from voxfast.audio.store import PackedStore, is_store
from voxfast.config import AUGMENT_KINDS, MAX_BABBLE, AugmentConfig, augment_problems
from voxfast.errors import ConfigError, VoxfastError

KINDS = AUGMENT_KINDS  # what AugmentSpec.mix weighs, in this order (the config's order)
NONE, REVERB, MUSIC, BABBLE, NOISE = range(len(KINDS))
CATEGORIES = ("noise", "speech", "music")  # MUSAN sub-folders
KIND_CATEGORY = {MUSIC: "music", BABBLE: "speech", NOISE: "noise"}  # the bank category an additive kind draws from
_EPS = 1e-10  # only guards P_n = 0 (a silent noise crop); small enough not to move the achieved SNR


# ----------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class AugmentSpec:
    """The distribution augmentation draws from, validated once; `mix` is normalised to sum to 1.

    Kept apart from :class:`AugmentConfig` so the hot path reads plain tuples, and so tests and tools can
    build one without a whole config.
    """

    mix: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)  # weights of KINDS
    noise_snr: tuple[float, float] = (0.0, 15.0)
    music_snr: tuple[float, float] = (5.0, 15.0)
    speech_snr: tuple[float, float] = (13.0, 20.0)
    babble_count: tuple[int, int] = (3, 7)
    _cdf: tuple[float, ...] = field(init=False, repr=False, compare=False)  # cumulative mix, for bisect
    _last: int = field(init=False, repr=False, compare=False)  # last kind of positive weight

    def __post_init__(self) -> None:
        problems = augment_problems(self.mix, self.noise_snr, self.music_snr, self.speech_snr, self.babble_count)
        if problems:
            raise ConfigError("invalid augmentation settings: " + "; ".join(problems))
        total = math.fsum(self.mix)
        object.__setattr__(self, "mix", tuple(float(w) / total for w in self.mix))
        object.__setattr__(self, "_cdf", tuple(np.cumsum(self.mix).tolist()))
        object.__setattr__(self, "_last", max(k for k, w in enumerate(self.mix) if w > 0))

    @classmethod
    def from_config(cls, cfg: AugmentConfig) -> AugmentSpec:
        """The spec of an ``augment`` config section (raises ConfigError on impossible ranges)."""
        return cls(
            mix=tuple(cfg.mix), noise_snr=tuple(cfg.noise_snr), music_snr=tuple(cfg.music_snr),
            speech_snr=tuple(cfg.speech_snr), babble_count=tuple(cfg.babble_count),
        )

    def snr_range(self, kind: int) -> tuple[float, float]:
        """SNR range in dB of an additive kind (for babble: of each voice)."""
        return {MUSIC: self.music_snr, BABBLE: self.speech_snr, NOISE: self.noise_snr}[kind]

    def draw_kind(self, rng: np.random.Generator) -> int:
        """A kind index with probability `mix`; a zero weight is never drawn (its CDF step is empty).

        Bisecting a cached CDF is one binary search over a few floats, where ``rng.choice(p=...)`` checks `p`
        and rebuilds its CDF on every call, and a kind is drawn for every crop.
        """
        return min(bisect.bisect_right(self._cdf, rng.random()), self._last)  # min: cdf[-1] may round below 1


class Augmentation(NamedTuple):
    """What training augments with: the distribution of the draws and the audio they draw from."""

    spec: AugmentSpec
    bank: NoiseBank


# ----------------------------------------------------------------------------------------------- bank


class NoiseBank:
    """Noise/speech/music files and RIRs at one sample rate, held in memory or mapped from a packed store.

    Holding the files (rather than reading a crop per use, as voxceleb_trainer does) turns a noise crop into
    a slice, which is what keeps augmentation cheap enough to run for every training crop. A category of
    int16 arrays stays int16 (samples / 32768 when used): from an int16 store these are memmap views, so all
    of MUSAN (~109 h: 25 GB as float32) costs 12.6 GB of page cache shared by every worker and every DDP rank
    instead of 25 GB per rank. Other categories are float32, shared copy-on-write with forked workers. RIRs are
    kept as given too (memmap views of a store stay views) and scaled to unit energy as they are used, so
    reverberation keeps the level.
    """

    def __init__(self, categories: Mapping[str, Sequence[np.ndarray]], rirs: Sequence[np.ndarray]) -> None:
        unknown = set(categories) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown noise categories {sorted(unknown)}; expected {CATEGORIES}")
        self.categories: dict[str, list[np.ndarray]] = {c: _as_noises(categories.get(c, ()), c) for c in CATEGORIES}
        self.rirs = UnitEnergyRirs(rirs)
        self._lengths = {c: np.array([len(a) for a in w], dtype=np.int64) for c, w in self.categories.items()}
        self.max_rir = self.rirs.max_length
        self._rir_spectra: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._rir_cache_bytes = 0

    RIR_CACHE_BYTES = 256 << 20  # per process: ~1,300 RIR spectra of a 2 s crop

    def rir_spectrum(self, index: int, nfft: int) -> np.ndarray:
        """rfft of RIR `index` at `nfft` points, kept in a per-process LRU bounded by RIR_CACHE_BYTES.

        Reverb is three FFTs per crop; caching the RIR's saves one (a third of the reverb time), and the
        byte bound keeps 60k simulated RIRs from filling a worker's memory.
        """
        key = (index, nfft)
        spec = self._rir_spectra.get(key)
        if spec is not None:
            self._rir_spectra.move_to_end(key)
            return spec
        spec = scipy.fft.rfft(self.rirs[index], nfft)
        self._rir_spectra[key] = spec
        self._rir_cache_bytes += spec.nbytes
        while self._rir_cache_bytes > self.RIR_CACHE_BYTES and len(self._rir_spectra) > 1:
            _, oldest = self._rir_spectra.popitem(last=False)
            self._rir_cache_bytes -= oldest.nbytes
        return spec

    def reverb_fft_size(self, num_samples: int) -> int:
        """FFT size of every reverb convolution of `num_samples`-sample crops: long enough for the longest RIR.

        One size for the whole bank (not one per RIR length) lets a worker transform a batch's reverb crops
        together, keeps one cached spectrum per RIR, and is the size the device path uses for its padded RIRs.
        """
        return fft_size(num_samples + self.max_rir - 1)

    @classmethod
    def from_arrays(
        cls,
        noise: Sequence[np.ndarray] = (),
        speech: Sequence[np.ndarray] = (),
        music: Sequence[np.ndarray] = (),
        rirs: Sequence[np.ndarray] = (),
    ) -> NoiseBank:
        """A bank of in-memory waveforms (tests, synthetic data); RIRs are normalised to unit energy."""
        return cls({"noise": noise, "speech": speech, "music": music}, rirs)

    @classmethod
    def from_dirs(
        cls,
        noise_dir: str | None,
        rir_dir: str | None,
        sample_rate: int = 16000,
        mix: Sequence[float] | None = None,
    ) -> NoiseBank:
        """Read a MUSAN-style tree (noise_dir/{noise,speech,music}/**) and a folder of RIRs (AUDIO_SUFFIXES files).

        A category is needed when its kind has weight in `mix` (pass ``cfg.augment.mix``; None: every category
        of the folders given). A needed one that is empty or whose folder is not set raises VoxfastError naming
        the folder, at startup rather than in a loader worker mid-epoch. Files of another rate raise
        AudioLoadError. Files are read in sorted path order, so a seed picks the same file on every machine.
        """
        needed = _needed_sources(mix, noise_dir, rir_dir)
        categories = {c: _read_source(noise_dir, c, c in needed, sample_rate) for c in CATEGORIES}
        rirs = _read_source(rir_dir, "", "rir" in needed, sample_rate)
        return cls(categories, rirs)

    def lengths(self, category: str) -> np.ndarray:
        """Samples in each file of a category (int64), for drawing crop offsets."""
        return self._lengths[category]

    def is_int16(self, category: str) -> bool:
        """Whether the category holds int16 samples (crops then need a scale of 1 / PCM16_SCALE)."""
        waves = self.categories[category]
        return bool(waves) and waves[0].dtype == np.int16

    def crop(self, category: str, index: int, start: int, num_samples: int) -> np.ndarray:
        """``file[(start + arange(num_samples)) % len(file)]`` in the category's dtype (float32 or int16): a view
        when it fits, wrapped when the file is short."""
        wave = self.categories[category][index]
        if start + num_samples <= len(wave):
            return wave[start : start + num_samples]
        return np.take(wave, np.arange(start, start + num_samples), mode="wrap")


class UnitEnergyRirs(Sequence):
    """RIRs as given (float32, or int16 / float32 memmap views of a store) read back at unit energy, float32.

    Why not scaled copies: 60k simulated RIRs are ~3.8 GB of float32; from a store they stay in the shared
    page cache rather than in every DDP rank. Reading one allocates its scaled copy, so the hot path reads
    the cached spectra (NoiseBank.rir_spectrum) instead. An int16 RIR needs no 1/32768: the scale absorbs it.
    """

    def __init__(self, rirs: Sequence[np.ndarray]) -> None:
        self._raw = [_as_samples(h, "rir") for h in rirs]
        self._scale = [np.float32(_unit_scale(h)) for h in self._raw]

    def __len__(self) -> int:
        return len(self._raw)

    @property
    def max_length(self) -> int:
        """Samples of the longest RIR (1 when there are none)."""
        return max((len(h) for h in self._raw), default=1)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return np.multiply(self._raw[index], self._scale[index], dtype=np.float32)


def _as_samples(a: np.ndarray, what: str) -> np.ndarray:
    """An int16 waveform as it is (a memmap view stays a view), anything else as a float32 waveform."""
    if isinstance(a, np.ndarray) and a.dtype == np.int16:
        if a.ndim != 1 or len(a) == 0:
            raise VoxfastError(f"{what}: expected a non-empty 1-D waveform, got shape {a.shape}")
        return a
    return _as_wave(a, what)


def _unit_scale(h: np.ndarray) -> float:
    h64 = h.astype(np.float64)
    energy = float(np.dot(h64, h64))  # once per RIR: float64 for the scale only
    if not energy > 0:
        raise VoxfastError("an RIR has zero energy (all samples are 0); remove it from augment.rir_dir")
    return 1.0 / math.sqrt(energy)


def _as_noises(waves: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    """int16 arrays kept as they are (memmap views stay views) when all are int16; otherwise float32 copies."""
    if waves and all(isinstance(a, np.ndarray) and a.dtype == np.int16 for a in waves):
        return [_as_samples(a, what) for a in waves]
    return [_as_wave(a, what) for a in waves]


def _as_wave(a: np.ndarray, what: str) -> np.ndarray:
    wave = np.ascontiguousarray(a, dtype=np.float32)
    if wave.ndim != 1 or len(wave) == 0:
        raise VoxfastError(f"{what}: expected a non-empty 1-D waveform, got shape {wave.shape}")
    return wave


def _unit_energy(h: np.ndarray) -> np.ndarray:
    return h * np.float32(_unit_scale(h))


def _needed_sources(mix: Sequence[float] | None, noise_dir: str | None, rir_dir: str | None) -> set[str]:
    if mix is None:
        return (set(CATEGORIES) if noise_dir is not None else set()) | ({"rir"} if rir_dir is not None else set())
    needed = {KIND_CATEGORY[k] for k in KIND_CATEGORY if mix[k] > 0}
    return needed | ({"rir"} if mix[REVERB] > 0 else set())


def _read_source(root: str | None, sub: str, needed: bool, sample_rate: int) -> list[np.ndarray]:
    """Every audio file under root/sub (sub "" for RIRs; :func:`find_audio_files`), sorted by path.

    `root` may also be a packed store of that folder (`voxfast pack FOLDER OUT`): its utterance ids are the
    relative paths, so the same files come out in the same order, without decoding.
    """
    key = "augment.rir_dir" if sub == "" else "augment.noise_dir"
    kind = "reverb" if sub == "" else {c: KINDS[k] for k, c in KIND_CATEGORY.items()}[sub]
    if root is None:
        if needed:
            raise VoxfastError(f"{key} is not set, but {kind} augmentation has weight in augment.mix "
                               f"(set {key}, or set the {kind} weight to 0)")
        return []
    if is_store(root):
        waves = _read_store(root, sub, sample_rate)
    else:
        waves = [read_audio(p, sample_rate=sample_rate) for p in find_audio_files(Path(root) / sub)]
    if needed and not waves:
        raise VoxfastError(f"{key}: no {AUDIO_SUFFIXES_TEXT} files under {Path(root) / sub}, needed for {kind} "
                           f"augmentation (add files there, or set the {kind} weight in augment.mix to 0)")
    return waves


def _read_store(root: str, sub: str, sample_rate: int) -> list[np.ndarray]:
    store = PackedStore(root)
    if store.sample_rate != sample_rate:
        raise VoxfastError(f"{root}: packed at {store.sample_rate} Hz, expected {sample_rate} Hz "
                           "(repack with --sample-rate, or set data.sample_rate)")
    prefix = f"{sub}/" if sub else ""
    chosen = sorted((utt, i) for i, utt in enumerate(store.utts) if utt.startswith(prefix))
    return [store.read_raw(i) for _, i in chosen]  # memmap views, not copies (see NoiseBank)


# ----------------------------------------------------------------------------------------------- plans


def _slots_int() -> np.ndarray:
    return np.zeros(MAX_BABBLE, dtype=np.int64)


@dataclass
class Plan:
    """The random draws for one crop, fixed-size so a collate can stack plans into tensors.

    Slots past `n_noise` are 0 and ignored; `rir` is 0 unless the kind is reverb.
    """

    kind: int
    rir: int = 0
    n_noise: int = 0
    noise_idx: np.ndarray = field(default_factory=_slots_int)  # int64 (MAX_BABBLE,)
    noise_start: np.ndarray = field(default_factory=_slots_int)  # int64 (MAX_BABBLE,)
    snr: np.ndarray = field(default_factory=lambda: np.zeros(MAX_BABBLE, dtype=np.float32))  # dB


def draw_plan(rng: np.random.Generator, spec: AugmentSpec, bank: NoiseBank, num_samples: int) -> Plan:
    """Draw one crop's augmentation: a kind by `spec.mix`, then its RIR or noise files, offsets and SNRs.

    Raises VoxfastError when the drawn kind needs a bank category that is empty.
    """
    kind = spec.draw_kind(rng)
    if kind == NONE:
        return Plan(kind)
    if kind == REVERB:
        if not bank.rirs:
            raise VoxfastError("reverb augmentation was drawn but the bank has no RIRs (set augment.rir_dir)")
        return Plan(kind, rir=int(rng.integers(len(bank.rirs))))
    return _draw_additive(rng, spec, bank, kind, num_samples)


def _draw_additive(rng: np.random.Generator, spec: AugmentSpec, bank: NoiseBank, kind: int, num_samples: int) -> Plan:
    lengths = bank.lengths(KIND_CATEGORY[kind])
    if len(lengths) == 0:
        raise VoxfastError(f"{KINDS[kind]} augmentation was drawn but the bank has no "
                           f"{KIND_CATEGORY[kind]} files (check augment.noise_dir)")
    # One vector of uniforms for every draw: each Generator method call has a fixed per-call overhead far above
    # the cost of the one number it draws, and a plan is drawn for every training crop.
    u = rng.random(1 + 3 * MAX_BABBLE).tolist()
    lo, hi = spec.babble_count if kind == BABBLE else (1, 1)
    n = min(lo + int(u[0] * (hi - lo + 1)), hi)
    plan = Plan(kind, n_noise=n)
    idx = _sample_files(u[1 : 1 + n], len(lengths))
    rooms = [max(int(lengths[i]) - num_samples, 0) + 1 for i in idx]
    plan.noise_idx[:n] = idx
    plan.noise_start[:n] = [min(int(v * r), r - 1) for v, r in zip(u[1 + MAX_BABBLE :], rooms, strict=False)]
    snr_lo, snr_hi = spec.snr_range(kind)
    plan.snr[:n] = [snr_lo + (snr_hi - snr_lo) * v for v in u[1 + 2 * MAX_BABBLE : 1 + 2 * MAX_BABBLE + n]]
    return plan


def _sample_files(u: list[float], n_files: int) -> list[int]:
    """len(u) file indices from uniforms: distinct (a partial Fisher-Yates) when there are enough files."""
    if len(u) > n_files:
        return [min(int(v * n_files), n_files - 1) for v in u]
    swapped: dict[int, int] = {}
    out = []
    for k, v in enumerate(u):
        j = min(k + int(v * (n_files - k)), n_files - 1)
        out.append(swapped.get(j, j))
        swapped[j] = swapped.get(k, k)
    return out


def stack_plans(plans: Sequence[Plan]) -> dict[str, np.ndarray]:
    """Plans as batch arrays for a collate.

    kind, rir, n_noise: (B,) int64; noise_idx, noise_start: (B, 7) int64; snr: (B, 7) float32. numpy, not
    torch: a DataLoader worker sends small arrays inline, but every tensor through its own shared-memory
    segment, which cost more than drawing the plans.
    """
    if not plans:
        raise ValueError("stack_plans needs at least one plan")
    out = {k: np.array([getattr(p, k) for p in plans], dtype=np.int64) for k in ("kind", "rir", "n_noise")}
    for k in ("noise_idx", "noise_start", "snr"):
        out[k] = np.stack([getattr(p, k) for p in plans])
    return out


# ----------------------------------------------------------------------------------------------- numpy path


def add_noise(
    x: np.ndarray, noises: Sequence[np.ndarray], snrs: Sequence[float], out: np.ndarray | None = None
) -> np.ndarray:
    """``x + sum_i g_i n_i`` with each g_i setting ``P_x / P(g_i n_i)`` to 10**(snr_i/10); float32.

    Each noise must already be cropped to len(x); an int16 noise is taken as samples / 32768 (an exact
    conversion: the result equals that of its float32 file). Every voice of a babble is scaled against the
    clean crop, not against the sum, as in voxceleb_trainer. `out` (float32, len(x), may be `x` itself)
    receives the result in place: a loader worker passes its batch-ring row, which saves an allocation and a
    copy per crop.
    """
    x = np.asarray(x, dtype=np.float32)
    p_x = _power(x)
    if len(noises) != len(snrs):
        raise ValueError(f"add_noise: {len(noises)} noises but {len(snrs)} SNRs")
    if out is None:
        out = np.empty_like(x)
    # Plain ufuncs, not BLAS saxpy: OpenBLAS threads axpy, and in two loader workers its spinning threads
    # oversubscribed the cores and slowed CPU augmentation severely (bench-loader; see the README's measured tables).
    scratch = np.empty_like(x)
    for i, (noise, snr) in enumerate(zip(noises, snrs, strict=True)):
        noise = np.asarray(noise)
        noise = to_float32(noise, out=scratch) if noise.dtype == np.int16 else np.asarray(noise, dtype=np.float32)
        gain = np.float32(_gain(p_x, _power(noise), float(snr)))
        np.multiply(noise, gain, out=scratch)
        np.add(x if i == 0 else out, scratch, out=out)
    if len(noises) == 0 and out is not x:
        out[:] = x
    return out


def _power(a: np.ndarray) -> float:
    return float(np.dot(a, a)) / len(a)  # BLAS sdot is safe here: unlike axpy it did not oversubscribe workers


def _gain(p_x: float, p_n: float, snr_db: float) -> float:
    return math.sqrt(p_x / ((p_n + _EPS) * 10.0 ** (snr_db / 10.0)))


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """`x` convolved with `rir` scaled to unit energy, linear and cropped to len(x); float32.

    Equals ``scipy.signal.convolve(x, rir / ||rir||, mode='full')[:len(x)]``: the FFT is zero-padded to at
    least len(x) + len(rir) - 1, so a late sound's tail is cut off rather than wrapped onto the start.
    """
    x = np.asarray(x, dtype=np.float32)
    h = _unit_energy(_as_wave(rir, "rir"))
    nfft = fft_size(len(x) + len(h) - 1)
    return _convolve_crop(x, scipy.fft.rfft(h, nfft), nfft)


def fft_size(n: int) -> int:
    """Smallest 2**a * m >= n with m in (1, 9/8, 5/4, 3/2, 25/16, 15/8) of an octave: at most 20% padding.

    Factors of 2 are preferred over scipy's next_fast_len (any 5-smooth size), trading a little padding for
    sizes pocketfft transforms fastest: a 2 s crop with a 0.5 s RIR gets 40960 = 5 * 2**13 points rather than
    next_fast_len's 40500 = 2**2 * 3**4 * 5**3 (float32 timings in the README's measured tables). MKL (torch
    CPU) and cuFFT favour powers of two as well.
    """
    best = 1 << max(n - 1, 0).bit_length()  # next power of two
    for m in (9, 5, 3, 25, 15):  # odd parts of the in-octave steps above
        size = m << max((n - 1) // m, 0).bit_length()  # m * smallest power of two with m * 2**a >= n
        best = min(best, size)
    return best


def _convolve_crop(x: np.ndarray, h_spectrum: np.ndarray, nfft: int) -> np.ndarray:
    """x convolved with the RIR whose `nfft`-point rfft is `h_spectrum` (nfft >= len(x) + len(rir) - 1), cropped."""
    spec = scipy.fft.rfft(x, nfft)  # float32 in, complex64 out
    spec *= h_spectrum
    return scipy.fft.irfft(spec, nfft, overwrite_x=True)[: len(x)]


def augment_numpy(x: np.ndarray, plan: Plan, bank: NoiseBank, out: np.ndarray | None = None) -> np.ndarray:
    """Apply one crop's plan on the CPU (the loader-worker path); float32, len(x) samples.

    Without `out`, kind "none" returns `x` itself (as float32), not a copy. With `out` (float32, len(x); may be
    `x`), the result is written there and `out` is returned.
    """
    x = np.asarray(x, dtype=np.float32)
    if plan.kind == NONE:
        if out is not None and out is not x:
            out[:] = x
        return x if out is None else out
    if plan.kind == REVERB:
        nfft = bank.reverb_fft_size(len(x))
        y = _convolve_crop(x, bank.rir_spectrum(plan.rir, nfft), nfft)
        if out is None:
            return y
        out[:] = y
        return out
    category, n = KIND_CATEGORY[plan.kind], plan.n_noise
    starts = zip(plan.noise_idx[:n].tolist(), plan.noise_start[:n].tolist(), strict=True)
    noises = [bank.crop(category, i, s, len(x)) for i, s in starts]
    return add_noise(x, noises, plan.snr[:n], out=out)


REVERB_ROWS_PER_FFT = 8  # rows per 2-D transform: enough to fill the SIMD lanes, few enough to stay in cache


def reverberate_rows(wave: np.ndarray, rows: Sequence[int], rirs: Sequence[int], bank: NoiseBank) -> None:
    """Reverberate rows `rows` of a float32 (B, L) batch in place with bank RIRs `rirs`: augment_numpy's maths.

    Why batched: pocketfft runs the transforms of a 2-D array side by side in SIMD lanes, so a loader worker
    that collects a batch's reverb crops pays less per crop than transforming them one at a time, and reverb
    is a large share of CPU augmentation (timings in the README's measured tables). Each row gets the same
    transform as alone.
    """
    if len(rows) != len(rirs):
        raise ValueError(f"reverberate_rows: {len(rows)} rows but {len(rirs)} RIR indices")
    n = wave.shape[1]
    nfft = bank.reverb_fft_size(n)
    for a in range(0, len(rows), REVERB_ROWS_PER_FFT):
        chunk, chunk_rirs = list(rows[a : a + REVERB_ROWS_PER_FFT]), rirs[a : a + REVERB_ROWS_PER_FFT]
        spec = scipy.fft.rfft(wave[chunk], nfft, axis=-1)
        for k, rir in enumerate(chunk_rirs):
            spec[k] *= bank.rir_spectrum(int(rir), nfft)
        wave[chunk] = scipy.fft.irfft(spec, nfft, axis=-1, overwrite_x=True)[:, :n]


# ----------------------------------------------------------------------------------------------- device path


class DeviceBank:
    """The bank as tensors on one device, so a batch gathers its noise crops by index there.

    For a crop length L, each category is laid out as one flat tensor in which every file is followed by its
    own first L - 1 samples (tiled when shorter than that). ``file[(start + arange(L)) % len]`` is then the
    contiguous window at ``offset + start % len``, and a batch of crops is one `index_select` of rows of the
    flat tensor's unfolded (overlapping) view: a plain copy, no per-sample index arithmetic, where building
    ``(start + arange(L)) % len`` index tensors and gathering with them computes and reads an int64 index for
    every sample (timings in the README's measured tables). The layout costs N_files * (L - 1)
    extra samples (about 0.26 GB float32 for MUSAN's 2,016 files at 2 s) instead of padding every file to
    the longest (several times the audio for MUSAN music); it is built on the first batch and rebuilt only
    if L changes. `dtype` float16 halves the memory; gathered crops are computed in float32. An int16 category
    of the bank (from an int16 store) stays int16 here too: half the memory of float32, and exact.

    RIRs are an (N, Lmax) float32 matrix, zero-padded, which leaves a linear convolution unchanged. A plain
    class, not an nn.Module, so the bank never lands in a model's state_dict.
    """

    def __init__(self, bank: NoiseBank, device: torch.device | str, dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.bank = bank
        self.rirs = _padded(bank.rirs, self.device)  # (N, longest) float32: ~3.8 GB for 60k 1 s RIRs
        self.crop_len = 0  # L of the current layout; 0 until the first gather
        self._windows: dict[str, torch.Tensor] = {}  # category -> (samples - L + 1, L) view of the flat layout
        self._offsets: dict[str, np.ndarray] = {}  # category -> where each file starts in the layout (host)

    def gather(self, category: str, index: np.ndarray, start: np.ndarray, num_samples: int) -> torch.Tensor:
        """Crops ``file[(start + arange(L)) % len(file)]``; index/start: host int arrays of shape S; (*S, L) float32."""
        if num_samples != self.crop_len:
            self._layout(num_samples)
        row = self._offsets[category][index] + start % self.bank.lengths(category)[index]
        rows = torch.from_numpy(np.ascontiguousarray(row, dtype=np.int64).ravel()).to(self.device)
        crops = self._windows[category].index_select(0, rows).view(*row.shape, num_samples).float()
        return crops.mul_(1.0 / PCM16_SCALE) if self.bank.is_int16(category) else crops

    def _layout(self, num_samples: int) -> None:
        self._windows.clear()  # free the old layout before building the new one
        for category in CATEGORIES:
            dtype = torch.int16 if self.bank.is_int16(category) else self.dtype
            flat, self._offsets[category] = self._tiled(self.bank.categories[category], num_samples, dtype)
            self._windows[category] = flat.unfold(0, num_samples, 1)
        self.crop_len = num_samples

    def _tiled(
        self, waves: list[np.ndarray], num_samples: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, np.ndarray]:
        sizes = np.array([len(w) + num_samples - 1 for w in waves], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = torch.zeros(max(int(offsets[-1]), num_samples), dtype=dtype, device=self.device)
        for wave, start, size in zip(waves, offsets[:-1], sizes, strict=False):  # per file, not per sample
            flat[start : start + size].copy_(torch.from_numpy(np.resize(wave, size)))  # np.resize tiles
        return flat, offsets[:-1]


def _padded(waves: UnitEnergyRirs, device: torch.device) -> torch.Tensor:
    out = torch.zeros(len(waves), waves.max_length, dtype=torch.float32, device=device)
    for i, wave in enumerate(waves):  # per RIR, not per sample
        out[i, : len(wave)].copy_(torch.from_numpy(wave))
    return out


def augment_batch(wave: torch.Tensor, plans: Mapping[str, np.ndarray | torch.Tensor], bank: DeviceBank) -> torch.Tensor:
    """Apply stacked plans (:func:`stack_plans`) to a (B, L) batch on the bank's device; (B, L) float32.

    Rows are grouped by kind: one batched FFT convolution for all reverb rows, one gather per additive kind.
    The plans (a few hundred bytes) are read on the host, so row selection and index maths cost the device
    at most one synchronisation (none when the plans are passed on the CPU, as the collate makes them).
    """
    wave = wave.to(bank.device, torch.float32)
    host = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in plans.items()}
    out = wave.clone()
    for kind in (REVERB, MUSIC, BABBLE, NOISE):
        rows = np.flatnonzero(host["kind"] == kind)
        if len(rows) == 0:
            continue
        sub = {k: v[rows] for k, v in host.items()}
        rows_dev = torch.from_numpy(rows).to(bank.device)
        if kind == REVERB:
            out[rows_dev] = _reverb_rows(wave[rows_dev], sub["rir"], bank)
        else:
            out[rows_dev] = _noise_rows(wave[rows_dev], sub, kind, bank)
    return out


def _reverb_rows(x: torch.Tensor, rir: np.ndarray, bank: DeviceBank) -> torch.Tensor:
    h = bank.rirs[torch.from_numpy(rir).to(bank.device)]
    n = x.shape[-1]
    nfft = bank.bank.reverb_fft_size(n)  # rirs are padded to the longest: the same size as the numpy path
    spec = torch.fft.rfft(x, nfft) * torch.fft.rfft(h, nfft)
    return torch.fft.irfft(spec, nfft)[:, :n]


def _noise_rows(x: torch.Tensor, plans: dict[str, np.ndarray], kind: int, bank: DeviceBank) -> torch.Tensor:
    """x + sum over valid slots of g * noise crop, with the gains of :func:`add_noise`; (R, L).

    ``g = sqrt(P_x / P_n) * 10**(-snr/20)``; the second factor is made on the host and is 0 for unused slots.
    """
    k = int(plans["n_noise"].max())  # 1 for music and noise, up to MAX_BABBLE for babble
    idx, start, snr = plans["noise_idx"][:, :k], plans["noise_start"][:, :k], plans["snr"][:, :k]
    level = np.where(np.arange(k) < plans["n_noise"][:, None], 10.0 ** (-snr / 20.0), 0.0).astype(np.float32)
    noise = bank.gather(KIND_CATEGORY[kind], idx, start, x.shape[-1])  # (R, k, L)
    p_x = x.square().mean(-1, keepdim=True)
    p_n = noise.square().mean(-1)
    gain = torch.sqrt(p_x / (p_n + _EPS)) * torch.from_numpy(level).to(x.device)
    return x + torch.bmm(gain.unsqueeze(1), noise).squeeze(1)
