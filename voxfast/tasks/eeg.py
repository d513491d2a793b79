"""EEG classification on the shared trainer: windows in memory, band-pass once, time shifts on the device, EEGNet.

EEG data sets are small (thousands of windows of a few seconds), so they are read once into float32 tensors: an .npz of
windows, or EDF/BDF recordings cut into windows around annotated events (any format MNE reads, epochs files and
`mne.Epochs` through `eeg_mne`, with its preprocessing). Filtering (zero-phase, so event timing is not moved) happens
once at load and per-channel standardisation uses training statistics only, which the checkpoint keeps so a model can be
applied to new recordings. The split is by group (subject or run) by default, because windows of one subject are far
more alike than windows of one class, and a random split would measure memorisation of subjects. The time-shift
augmentation draws from a generator seeded by (train.seed, epoch, batch number), so a run resumed mid-epoch augments
exactly as the interrupted one would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt
from torch import nn

from voxfast.config import Config, EEGConfig
from voxfast.errors import VoxfastError
from voxfast.models.registry import check_model, create_model
from voxfast.tasks.classification import ClassificationTask, Split, channel_stats, epoch_generator, take

log = logging.getLogger(__name__)

EDF_SUFFIXES = (".edf", ".bdf")


# ----------------------------------------------------------------------------------------------- data


@dataclass
class Windows:
    """Labelled windows as read: signals (N, channels, samples) float32, class indices (N,) int64 and their names."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None  # subject / run / file of each window; None when the .npz has no `groups`
    sfreq: float
    classes: list[str]  # class index -> label value (.npz) or event code (EDF/BDF)
    channels: list[str]  # channel names where the file has them, else their positions
    subjects: np.ndarray | None = None  # subject of each window, for Euclidean alignment; None: `groups` stand in


# Keys that only the MNE reader applies: set with another reader they would silently do nothing.
MNE_ONLY_KEYS = ("reference", "picks", "notch", "resample", "baseline")


def read_windows(cfg: EEGConfig) -> Windows:
    """The windows of `cfg.data` (an .npz, a recording or a folder of them), preprocessed as configured.

    EDF/BDF go through pyedflib unless eeg.reader or an MNE-only preprocessing key asks for MNE (so existing runs
    read exactly as before); every other recording format goes through MNE (`voxfast.tasks.eeg_mne`).
    """
    path = Path(cfg.data)
    if _reads_with_mne(path, cfg):
        from voxfast.tasks import eeg_mne  # imports MNE itself, on first use

        return align_if_configured(eeg_mne.read_mne(path, cfg), cfg)
    mne_only = [f"eeg.{k}" for k in MNE_ONLY_KEYS if getattr(cfg, k) is not None]
    if mne_only:
        raise VoxfastError(f"{', '.join(mne_only)}: applied by the MNE reader only, which does not read {path} "
                           "(.npz windows are used as stored; for EDF/BDF set eeg.reader: mne or auto)")
    if path.is_dir() or path.suffix.lower() in EDF_SUFFIXES:
        return align_if_configured(read_edf(path, cfg), cfg)
    if not path.is_file():
        raise VoxfastError(f"eeg.data: {path} not found (an .npz with `x` and `y`, a recording MNE reads or a "
                           "folder of them; `voxfast make-demo-data eeg_demo --task eeg` writes a demo)")
    return align_if_configured(read_npz(path, cfg), cfg)


def _reads_with_mne(path: Path, cfg: EEGConfig) -> bool:
    if cfg.reader != "auto" or path.suffix.lower() == ".npz":
        return cfg.reader == "mne"
    if any(getattr(cfg, k) is not None for k in MNE_ONLY_KEYS):
        return path.is_dir() or path.suffix.lower() in EDF_SUFFIXES or _mne_suffix(path)
    if path.is_dir():
        return any(_mne_suffix(p) and p.suffix.lower() not in EDF_SUFFIXES for p in path.rglob("*"))
    return _mne_suffix(path) and path.suffix.lower() not in EDF_SUFFIXES


def _mne_suffix(path: Path) -> bool:
    from voxfast.tasks.eeg_mne import MNE_SUFFIXES  # the module imports MNE lazily, so this costs nothing

    return path.name.lower().endswith(MNE_SUFFIXES)


def align_if_configured(data: Windows, cfg: EEGConfig) -> Windows:
    """Euclidean alignment of `data` in place when eeg.euclidean_alignment is on; per subject, else per group."""
    if cfg.euclidean_alignment:
        subjects = data.subjects if data.subjects is not None else data.groups
        if subjects is None:
            log.warning("eeg.euclidean_alignment: no subjects or groups in %s; all windows aligned as one subject",
                        cfg.data)
            subjects = np.zeros(len(data.x), dtype=np.int64)
        data.x = euclidean_align(data.x, subjects)
    return data


def euclidean_align(x: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """X <- R^-1/2 X per subject, R the mean of that subject's trial covariances X X^T / samples (He & Wu 2019).

    After alignment every subject's mean covariance is the identity, which removes much of the between-subject
    shift that makes held-out subjects hard. The covariances are not centred (as in the paper): band-passed EEG has
    zero mean anyway. Sums in float64; the result float32 (N, channels, samples).
    """
    out = np.empty(x.shape, dtype=np.float32)
    for subject in np.unique(subjects):
        rows = np.flatnonzero(subjects == subject)
        xs = x[rows].astype(np.float64)
        r = np.einsum("nct,ndt->cd", xs, xs) / (xs.shape[0] * xs.shape[2])
        w, v = np.linalg.eigh(r)
        if not w[0] > 1e-10 * w[-1]:
            raise VoxfastError(f"eeg.euclidean_alignment: subject {subject}'s mean covariance is singular "
                               f"(eigenvalues {w[0]:.3g} to {w[-1]:.3g}): channels are linearly dependent, as after "
                               "an average reference or with a flat channel; drop one channel (eeg.picks) or turn "
                               "the alignment off")
        out[rows] = np.einsum("cd,ndt->nct", (v / np.sqrt(w)) @ v.T, xs)
    return out


def read_npz(path: Path, cfg: EEGConfig) -> Windows:
    """Windows from an .npz with `x` (N, channels, samples), `y` (N,), optional `groups` (N,), `subjects` (N,: for
    eeg.euclidean_alignment, else `groups` stand in), `sfreq`, `channels`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:  # not a zip file, object arrays (pickles), truncated arrays
        raise VoxfastError(f"{path}: not a readable .npz of `x` and `y` ({exc})") from exc
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise VoxfastError(f"{path}: no `{missing[0]}` array (found: {', '.join(arrays) or 'none'}); expected `x` "
                           "(N, channels, samples) and `y` (N,), optionally `groups` (N,) and `sfreq`")
    x = arrays["x"]
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
        raise VoxfastError(f"{path}: `x` has shape {x.shape} ({x.dtype}); expected numbers of shape "
                           "(N windows, channels, samples)")
    for key in ("y", "groups"):
        if key in arrays:
            _check_per_window(path, key, arrays[key], x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise VoxfastError(f"{path}: `x` holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
    sfreq = _sampling_rate(path, arrays.get("sfreq"), cfg.sfreq)
    channels = [str(c) for c in np.atleast_1d(arrays.get("channels", np.arange(x.shape[1])))]
    if len(channels) != x.shape[1]:
        raise VoxfastError(f"{path}: `channels` names {len(channels)} channels but `x` has {x.shape[1]} "
                           f"(shape {x.shape})")
    if cfg.bandpass is not None:
        x = bandpass(x, sfreq, cfg.bandpass)
    classes, y = np.unique(arrays["y"], return_inverse=True)
    if "subjects" in arrays:
        _check_per_window(path, "subjects", arrays["subjects"], x)
    return Windows(x, y.astype(np.int64), arrays.get("groups"), sfreq, [str(c) for c in classes], channels,
                   arrays.get("subjects"))


def _check_per_window(path: Path, key: str, values: np.ndarray, x: np.ndarray) -> None:
    if values.ndim != 1:
        raise VoxfastError(f"{path}: `{key}` has shape {values.shape}; expected one entry per window of `x` "
                           f"(shape ({len(x)},), as `x` is {x.shape})")
    if len(values) != len(x):
        raise VoxfastError(f"{path}: `{key}` has {len(values)} entries but `x` has {len(x)} windows "
                           f"(`x` shape {x.shape})")


def _sampling_rate(path: Path, stored: Any, configured: float | None) -> float:
    """The file's rate, checked against eeg.sfreq: a silent mismatch would mis-tune the filter and the model."""
    if stored is not None and np.size(stored) != 1:
        raise VoxfastError(f"{path}: `sfreq` has shape {np.shape(stored)}; expected one number (Hz)")
    rate = float(np.asarray(stored).item()) if stored is not None else configured
    if rate is None or rate <= 0:
        raise VoxfastError(f"{path}: no sampling rate (store `sfreq` in the file or set eeg.sfreq)")
    if configured is not None and abs(configured - rate) > 1e-6 * rate:
        raise VoxfastError(f"{path}: sampled at {rate:g} Hz but eeg.sfreq is {configured:g} (resample the data, "
                           "or set eeg.sfreq: null to take the file's rate)")
    return rate


def read_edf(path: Path, cfg: EEGConfig) -> Windows:
    """Windows cut at the annotations whose text is in `cfg.event_codes` (label = position there); each file a group.

    Files without any of the codes (e.g. resting-state runs) are skipped with a warning; none at all is an error
    that lists the codes the files do hold. The band-pass runs on whole recordings, before cutting, so windows carry
    no filter edge effects.
    """
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EDF_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise VoxfastError(f"eeg.data: {path} holds no .edf or .bdf files")
    parts, found, first = [], set(), None
    for file in files:
        rec = _read_recording(file, cfg.sfreq)
        first = rec if first is None else first
        _check_same_layout(rec, first)
        signals = bandpass(rec.signals, rec.sfreq, cfg.bandpass) if cfg.bandpass is not None else rec.signals
        x, y = _cut_windows(signals, rec, cfg)
        found.update(rec.codes)
        if len(x) == 0:
            log.warning("%s: no event with a code of eeg.event_codes %s (found: %s); skipped", file,
                        list(cfg.event_codes), ", ".join(sorted(set(rec.codes))) or "no annotations")
            continue
        group = str(file.relative_to(path)) if path.is_dir() else file.name
        parts.append((x, y, np.full(len(x), group)))
    if not parts:
        raise VoxfastError(f"{path}: no annotation matches eeg.event_codes {list(cfg.event_codes)}; the annotation "
                           f"codes found are: {', '.join(sorted(found)) or 'none'} (set eeg.event_codes to the ones "
                           "that mark trials; label i is the i-th code)")
    assert first is not None  # files is not empty
    x, y, groups = (np.concatenate(a) for a in zip(*parts, strict=True))
    return Windows(x, y, groups, first.sfreq, list(cfg.event_codes), first.channels)


@dataclass
class _Recording:
    file: Path
    signals: np.ndarray  # (channels, samples) float32, physical units
    sfreq: float
    channels: list[str]
    onsets: np.ndarray  # seconds from the start of the file
    codes: list[str]  # annotation text of each onset


def _read_recording(file: Path, configured: float | None) -> _Recording:
    pyedflib = _pyedflib()
    try:
        with pyedflib.EdfReader(str(file)) as f:
            rates = np.asarray(f.getSampleFrequencies(), dtype=float)
            signals = np.stack([f.readSignal(i) for i in range(f.signals_in_file)]).astype(np.float32)
            onsets, _, codes = f.readAnnotations()
            channels = [str(c) for c in f.getSignalLabels()]
    except OSError as exc:
        raise VoxfastError(f"{file}: not a readable EDF/BDF file ({exc})") from exc
    if len(rates) == 0 or np.ptp(rates) > 0:
        raise VoxfastError(f"{file}: channels sampled at {sorted(set(rates.tolist()))} Hz; expected signals at one "
                           "rate (resample the recording or drop the odd channels)")
    sfreq = _sampling_rate(file, rates[0], configured)
    return _Recording(file, signals, sfreq, channels, np.asarray(onsets, dtype=float), [str(c).strip() for c in codes])


def _check_same_layout(rec: _Recording, first: _Recording) -> None:
    """Windows of all files share one tensor, so their channels and rate must match the first file's."""
    if rec.channels != first.channels or rec.sfreq != first.sfreq:
        raise VoxfastError(f"{rec.file}: channels {rec.channels} at {rec.sfreq:g} Hz, but {first.file} has "
                           f"{first.channels} at {first.sfreq:g} Hz; every file needs the same channels and rate")


def _cut_windows(signals: np.ndarray, rec: _Recording, cfg: EEGConfig) -> tuple[np.ndarray, np.ndarray]:
    """(windows (E, channels, samples), labels (E,)) for the events inside the recording; events too close to an
    edge for a whole window are dropped."""
    start, end = cfg.window
    length = round((end - start) * rec.sfreq)
    if length <= 0:
        raise VoxfastError(f"eeg.window: expected [start, end] seconds with end > start, got [{start}, {end}]")
    labels = np.array([cfg.event_codes.index(c) if c in cfg.event_codes else -1 for c in rec.codes], dtype=np.int64)
    first = np.round((rec.onsets + start) * rec.sfreq).astype(np.int64)
    keep = (labels >= 0) & (first >= 0) & (first + length <= signals.shape[1])
    if (labels >= 0).sum() > keep.sum():
        log.warning("%d events of %s lie too close to the recording's edges for the window %s s; dropped",
                    int((labels >= 0).sum() - keep.sum()), rec.file, list(cfg.window))
    index = first[keep, None] + np.arange(length)  # (E, samples)
    return np.ascontiguousarray(signals[:, index].transpose(1, 0, 2)), labels[keep]


def _pyedflib() -> Any:
    try:
        import pyedflib
    except ImportError as exc:
        raise VoxfastError("reading EDF/BDF files needs pyedflib: pip install 'voxfast[eeg]'") from exc
    return pyedflib


def bandpass(x: np.ndarray, sfreq: float, band: tuple[float, float]) -> np.ndarray:
    """Zero-phase 4th-order Butterworth band-pass along the last axis, as float32.

    Forward-backward filtering (sosfiltfilt) has no phase delay, so event-locked activity stays where it happened.
    """
    low, high = band
    if not 0 < low < high < sfreq / 2:
        raise VoxfastError(f"eeg.bandpass: expected 0 < low < high < {sfreq / 2:g} Hz (half the sampling rate), "
                           f"got [{low:g}, {high:g}]")
    sos = butter(4, [low, high], btype="bandpass", fs=sfreq, output="sos")
    try:
        return sosfiltfilt(sos, x, axis=-1).astype(np.float32)
    except ValueError as exc:  # shorter than the filter's padding
        raise VoxfastError(f"eeg.bandpass: {x.shape[-1]} samples are too short to filter ({exc}); use longer "
                           "windows or set eeg.bandpass: null") from exc


def split_windows(y: np.ndarray, groups: np.ndarray | None, how: str, val_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices). `group`: whole groups go to validation, so no subject or run is in both;
    `random`: stratified by class, so validation keeps the class balance."""
    if not 0 < val_fraction < 1:
        raise VoxfastError(f"eeg.val_fraction: must lie in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    if how == "group":
        names = np.unique(groups) if groups is not None else np.array([])
        if len(names) < 2:
            raise VoxfastError(f"eeg.split=group needs at least 2 groups (subjects or runs), found {len(names)}; add "
                               "`groups` to the .npz (EDF/BDF: one group per file), or set eeg.split=random")
        n_val = min(max(round(val_fraction * len(names)), 1), len(names) - 1)
        val = np.isin(groups, rng.permutation(names)[:n_val])
    else:
        val = np.zeros(len(y), dtype=bool)
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            val[members[: round(val_fraction * len(members))]] = True
    if not val.any():
        raise VoxfastError(f"eeg.val_fraction={val_fraction} of {len(y)} windows leaves no validation window; "
                           "raise it or add data")
    return np.flatnonzero(~val), np.flatnonzero(val)


def shift_time(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Delay window i of (B, channels, samples) by shifts[i] samples (negative: advance), repeating its edge sample.

    Edge padding rather than a circular roll, which would splice a window's end onto its start, a jump no recording
    has. One gather for the whole batch, on the device `x` is on.
    """
    t = x.shape[-1]
    source = (torch.arange(t, device=x.device) - shifts[:, None]).clamp_(0, t - 1)  # (B, samples)
    return x.gather(-1, source[:, None, :].expand(-1, x.shape[1], -1))


# ----------------------------------------------------------------------------------------------- task


class EEGTask(ClassificationTask):
    """Classifies EEG windows; validates by balanced accuracy on held-out groups (subjects or runs)."""

    name = "eeg"
    unit = "windows"
    best_metric = ("balanced_accuracy", "max")
    takes_split = True

    def __init__(self, cfg: Config, rank: int = 0, world: int = 1, data: Windows | None = None,
                 split: Split | None = None) -> None:
        """`data`: windows already in memory (e.g. `eeg_mne.windows_from_epochs(epochs, cfg.eeg)` from `mne.Epochs`)
        instead of reading eeg.data; a resumed run needs the same windows passed again. `split`: (train, validation)
        indices into the windows instead of eeg.split (a cross-validation fold, `voxfast.tasks.cv`)."""
        super().__init__(cfg, rank, world, split)
        check_model(cfg.eeg.model, "eeg")
        data = read_windows(cfg.eeg) if data is None else data
        if len(data.classes) < 2:
            raise VoxfastError(f"{cfg.eeg.data}: {len(data.classes)} class(es); classification needs at least 2")
        self.train_rows, self.val_rows = self.choose_split(
            len(data.y), lambda: split_windows(data.y, data.groups, cfg.eeg.split, cfg.eeg.val_fraction, self.seed))
        self.mean, self.std = channel_stats(data.x[self.train_rows])
        data.x -= self.mean.astype(np.float32)[:, None]
        data.x /= self.std.astype(np.float32)[:, None]
        self.x, self.y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        self.val_labels = data.y[self.val_rows]
        self.data, self.classes = data, data.classes
        self.check_batches(cfg.eeg.data)
        log.info("%d windows (%d train, %d validation) of %d channels x %d samples at %g Hz, %d classes, from %s",
                 len(data.y), len(self.train_rows), len(self.val_rows), data.x.shape[1], data.x.shape[2], data.sfreq,
                 len(data.classes), cfg.eeg.data)

    @classmethod
    def fold_targets(cls, cfg: Config) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels, and groups unless eeg.split=random: cross-validation then cuts group folds (no subject or run in
        two folds), else folds stratified by class."""
        data = read_windows(cfg.eeg)
        return data.y, data.groups if cfg.eeg.split == "group" else None

    def checkpoint_state(self) -> dict[str, Any]:
        """What applying the model to new recordings needs: class names, channels, rate and training statistics."""
        d = self.data
        return {"eeg": {"classes": d.classes, "channels": d.channels, "sfreq": d.sfreq, "samples": d.x.shape[2],
                        "mean": self.mean.tolist(), "std": self.std.tolist()}}

    def build_model(self) -> nn.Module:
        _, channels, samples = self.x.shape
        return create_model(self.cfg.eeg.model, "eeg", n_channels=channels, n_samples=samples,
                            n_classes=len(self.classes), sfreq=self.data.sfreq, dropout=self.cfg.eeg.dropout)

    def gather(self, rows: np.ndarray, number: int, epoch: int) -> dict[str, Any]:
        """{"x", "label", "index"} (index: rows of the data set), plus "shift" (samples, drawn per (seed, epoch,
        batch)) with eeg.time_shift."""
        index = torch.from_numpy(rows)
        out = {"x": take(self.x, index, self.pin), "label": take(self.y, index, self.pin), "index": index}
        if self.cfg.eeg.time_shift > 0:
            shift = self.cfg.eeg.time_shift
            out["shift"] = torch.randint(-shift, shift + 1, (len(rows),),
                                         generator=epoch_generator(self.seed, epoch, number))
        return out

    def inputs(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x = batch["x"].to(device, non_blocking=True)
        if "shift" in batch:
            x = shift_time(x, batch["shift"].to(device, non_blocking=True))
        return x

    def eval_inputs(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.x[torch.from_numpy(self.val_rows)[positions]].to(device)

    @classmethod
    def make_demo_data(cls, out: str | Path, seed: int = 0, **options: Any) -> Path:
        """out/eeg.npz: synthetic 4-class motor imagery of several subjects (see :func:`make_demo_data`)."""
        return make_demo_data(out, seed, **options)


# ----------------------------------------------------------------------------------------------- demo data

DEMO_CLASSES = ("left_hand", "right_hand", "feet", "tongue")
_DEMO_SFREQ, _DEMO_SAMPLES = 128.0, 256  # 2 s trials from the cue on
# 16 electrodes over the sensorimotor strip: 10-20 names at (left-right, back-front) positions on a unit disc.
_DEMO_CHANNELS = {
    "Fz": (0.0, 0.6), "FC3": (-0.5, 0.3), "FC1": (-0.25, 0.3), "FCz": (0.0, 0.3), "FC2": (0.25, 0.3),
    "FC4": (0.5, 0.3), "C5": (-0.75, 0.0), "C3": (-0.5, 0.0), "C1": (-0.25, 0.0), "Cz": (0.0, 0.0),
    "C2": (0.25, 0.0), "C4": (0.5, 0.0), "C6": (0.75, 0.0), "CP3": (-0.5, -0.3), "CPz": (0.0, -0.3),
    "CP4": (0.5, -0.3),
}
# Cortical sources: right and left hand areas, the feet area, the two tongue areas (mu and beta rhythms), and two
# rhythms no class changes: parietal alpha (in the mu band, a confound) and frontal theta.
_DEMO_SOURCES = np.array([(0.5, 0.0), (-0.5, 0.0), (0.0, 0.05), (-0.85, -0.05), (0.85, -0.05), (0.0, -0.7),
                          (0.0, 0.7)])
# Desynchronisation depth of each source per class (negative: synchronisation): contralateral hand area for a hand,
# weaker ipsilateral; the feet area for feet, with surround synchronisation of the hand areas; both tongue areas.
_DEMO_ERD = np.array([
    [1.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.3, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [-0.3, -0.3, 1.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.2, 1.0, 1.0, 0.0, 0.0],
])


def make_demo_data(out: str | Path, seed: int = 0, *, subjects: int = 10, trials_per_class: int = 30) -> Path:
    """Write `out/eeg.npz`: synthetic 4-class motor-imagery trials of several subjects (the `eeg_demo` config).

    Each trial is 2 s at 128 Hz over 16 sensorimotor channels. Imagery desynchronises the mu (8-13 Hz) and beta
    (15-25 Hz) rhythms of its class's cortical area some 0.3-0.8 s after the cue, seen through volume conduction on
    overlapping channels, over 1/f background noise, 50 Hz line noise and a parietal alpha rhythm in the same band.
    Subjects differ in rhythm frequencies, source positions, channel gains, amplitude and how strongly they
    desynchronise, and power fluctuates from trial to trial, so held-out subjects are learnable but not trivially.
    """
    rng = np.random.default_rng(seed)
    parts = [_demo_subject(rng, trials_per_class) for _ in range(subjects)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    groups = np.repeat(np.arange(subjects), len(DEMO_CLASSES) * trials_per_class)
    path = Path(out) / "eeg.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=np.array(DEMO_CLASSES)[y], groups=groups, sfreq=_DEMO_SFREQ,
             channels=np.array(list(_DEMO_CHANNELS)))
    return path


def _demo_subject(rng: np.random.Generator, trials_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """One subject's trials (N, 16, 256) float32 in microvolts and class indices (N,), in random order."""
    y = rng.permutation(np.repeat(np.arange(len(DEMO_CLASSES)), trials_per_class))
    n, t = len(y), np.arange(_DEMO_SAMPLES) / _DEMO_SFREQ
    positions = np.array(list(_DEMO_CHANNELS.values()))
    centres = _DEMO_SOURCES + rng.normal(0, 0.08, _DEMO_SOURCES.shape)
    patterns = np.exp(-((centres[:, None] - positions[None]) ** 2).sum(-1) / (2 * 0.3**2))  # (sources, channels)
    rhythms = _demo_rhythms(rng, n)  # (N, sources, T), unit variance
    depth = _DEMO_ERD[y] * rng.uniform(0.4, 0.85) * rng.uniform(0.6, 1.4, (n, 1))  # (N, sources)
    onset = rng.uniform(0.3, 0.8, (n, 1, 1))
    envelope = 1 - np.clip(depth, -0.5, 0.9)[..., None] / (1 + np.exp(-(t - onset) / 0.08))
    power = rng.lognormal(0, 0.3, (n, len(_DEMO_SOURCES), 1)) * rng.lognormal(0, 0.3, (len(_DEMO_SOURCES), 1))
    x = np.einsum("nst,sc->nct", rhythms * envelope * power, patterns)
    x += 0.6 * _pink_noise(rng, (n, len(positions), _DEMO_SAMPLES))  # sensor noise
    smear = np.exp(-((positions[:, None] - positions[None]) ** 2).sum(-1) / (2 * 0.4**2))
    smear /= np.linalg.norm(smear, axis=1, keepdims=True)  # mixing unit-variance noise keeps unit variance
    x += 0.6 * np.einsum("cd,ndt->nct", smear, _pink_noise(rng, (n, len(positions), _DEMO_SAMPLES)))  # background
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    x += rng.uniform(0, 0.5) * rng.uniform(0.5, 1.5, (len(positions), 1)) * np.sin(2 * np.pi * 50 * t + phase)  # mains
    gains = rng.lognormal(0, 0.15, (len(positions), 1)) * rng.lognormal(0, 0.3)
    return (10 * gains * x).astype(np.float32), y


def _demo_rhythms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Narrow-band noise of each source: mu + weaker beta for the motor areas, alpha and theta for the others, at
    this subject's peak frequencies; (N, sources, T) with unit variance per source."""
    mu, beta = rng.uniform(9.0, 12.5), rng.uniform(17.0, 24.0)
    peaks = np.array([[mu, beta]] * 5 + [[rng.uniform(9.0, 11.5), beta], [rng.uniform(5.0, 7.0), beta]])
    weights = np.array([[1.0, 0.5]] * 5 + [[1.0, 0.2], [1.0, 0.0]])
    freqs = np.fft.rfftfreq(_DEMO_SAMPLES, 1 / _DEMO_SFREQ)
    shape = (weights[..., None] * np.exp(-0.5 * ((freqs - peaks[..., None]) / np.array([1.2, 2.5])[:, None]) ** 2))
    spectrum = rng.standard_normal((n, *shape.shape)) + 1j * rng.standard_normal((n, *shape.shape))
    rhythms = np.fft.irfft((spectrum * shape).sum(2), n=_DEMO_SAMPLES)
    return rhythms / rhythms.std(axis=(0, 2), keepdims=True)


def _pink_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Gaussian noise with a 1/f power spectrum (the background of every EEG recording), unit variance."""
    freqs = np.fft.rfftfreq(shape[-1])
    scale = 1 / np.sqrt(np.maximum(freqs, freqs[1]))
    spectrum = rng.standard_normal((*shape[:-1], len(freqs))) + 1j * rng.standard_normal((*shape[:-1], len(freqs)))
    noise = np.fft.irfft(spectrum * scale, n=shape[-1])
    return noise / noise.std()
