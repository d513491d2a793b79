"""EEG recordings and epochs through MNE-Python: every format it reads, standard preprocessing, subject/run groups.

MNE reads EDF, BDF, GDF, BrainVision (.vhdr), EEGLAB (.set) and FIF recordings, and epochs saved as -epo.fif; the
task takes `mne.Epochs` in memory too (`windows_from_epochs`). Whatever the source, the result is the same
`eeg.Windows` the .npz and pyedflib readers give, so training, splits and checkpoints do not know where windows came
from. MNE is an optional dependency (the `eeg` extra), imported on first use, so voxfast imports without it.

Preprocessing, each step off when its key is null, in this order (why the order: the average reference must see
every EEG channel before some are dropped; the notch runs at the original rate, which may be too low after
resampling to hold the mains frequency; the band-pass runs on whole recordings, before cutting, so windows carry no
filter edge effects): eeg.reference ("average" or channel names), eeg.picks (names or a type such as "eeg"),
eeg.notch (Hz, MNE's FIR notch), eeg.resample (Hz, MNE's FFT resampling, which moves annotations with it),
eeg.bandpass (the zero-phase Butterworth the other readers use), windows at eeg.window around each event, then
eeg.baseline (its span's mean subtracted per window and channel). Signals are in microvolts for voltage channels
(MNE holds volts), the unit EDF files carry, so models and statistics do not depend on the reader.

Labels: eeg.event_codes lists the annotation descriptions (raw recordings; e.g. "T1", "769"; when none matches, the stim
channel's event numbers), or event names or numeric codes (epochs' `event_id`) to keep, label i the i-th; empty keeps
every event of an epochs file, in code order. Groups (what eeg.split=group holds out): eeg.group_by=subject (default)
gives each window its subject, eeg.group_by=run its file (relative path under eeg.data; an in-memory `Epochs` object is
one run). The subject is the first capture group of eeg.subject_pattern searched in the file's path under eeg.data, or
without a pattern the first folder under eeg.data (S001/S001R04.edf -> S001), or for files directly in eeg.data the file
name without suffix and MNE's _raw / -epo (every file its own subject: set a pattern when one subject has several files
there, as BCI IV 2a's A01T.gdf and A01E.gdf). Euclidean alignment (eeg.euclidean_alignment) is always per subject.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxfast.config import EEGConfig
from voxfast.errors import VoxfastError
from voxfast.tasks.eeg import Windows, align_if_configured, bandpass

log = logging.getLogger(__name__)

# Files MNE reads as recordings (BrainVision's .vhdr names its .vmrk and .eeg; EEGLAB's .set its .fdt).
MNE_SUFFIXES = (".edf", ".bdf", ".gdf", ".vhdr", ".set", ".fif", ".fif.gz")
EPOCHS_SUFFIXES = ("-epo.fif", "_epo.fif", "-epo.fif.gz", "_epo.fif.gz")
_MICROVOLTS = 1e6


def _mne() -> Any:
    try:
        import mne
    except ImportError as exc:
        raise VoxfastError("reading EEG through MNE needs MNE-Python: pip install 'voxfast[eeg]'") from exc
    return mne


@dataclass
class _Part:
    """One file's or Epochs object's windows before they are stacked."""

    x: np.ndarray  # (E, channels, samples) float32, microvolts
    y: np.ndarray  # (E,) int64
    sfreq: float
    channels: list[str]
    source: str  # file name or "epochs[i]" for messages
    run: str
    subject: str
    classes: list[str]  # label index -> event code or name


def read_mne(path: Path, cfg: EEGConfig) -> Windows:
    """Windows of `path` (a file MNE reads, or a folder searched recursively for them), preprocessed per `cfg`.

    Files without any of the event codes (e.g. resting-state runs) are skipped with a warning; none at all is an
    error listing the codes the files hold. Euclidean alignment is left to the caller (`eeg.read_windows`).
    """
    mne = _mne()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(MNE_SUFFIXES))
    elif path.is_file():
        files = [path]
    else:
        raise VoxfastError(f"eeg.data: {path} not found (a recording MNE reads: {', '.join(MNE_SUFFIXES)}, or a "
                           "folder of them)")
    if not files:
        raise VoxfastError(f"eeg.data: {path} holds no file MNE reads ({', '.join(MNE_SUFFIXES)})")
    parts, found = [], set()
    for file in files:
        relative = file.relative_to(path) if path.is_dir() else Path(file.name)
        subject = subject_of(relative, cfg.subject_pattern)
        with mne.utils.use_log_level("error"):
            if file.name.lower().endswith(EPOCHS_SUFFIXES):
                part, codes = _epochs_part(_read_epochs(mne, file), cfg, str(file), relative.as_posix(), subject)
            else:
                part, codes = _raw_part(mne, _read_raw(mne, file), cfg, file, relative.as_posix(), subject)
        found.update(codes)
        if part is not None:
            parts.append(part)
    if not parts:
        raise VoxfastError(f"{path}: no event matches eeg.event_codes {list(cfg.event_codes)}; the event codes "
                           f"found are: {', '.join(sorted(found)) or 'none'} (set eeg.event_codes to the ones that "
                           "mark trials; label i is the i-th code)")
    return _stack(parts, cfg)


def windows_from_epochs(epochs: Any, cfg: EEGConfig, subjects: Sequence[str] | None = None) -> Windows:
    """Windows of in-memory `mne.Epochs` (one object, or a list: one run each), preprocessed and aligned per `cfg`.

    `subjects`: each object's subject (default: each object its own). Pass the result as `EEGTask(cfg, data=...)`.
    """
    mne = _mne()
    runs = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs]
    if subjects is not None and len(subjects) != len(runs):
        raise VoxfastError(f"windows_from_epochs: {len(subjects)} subjects for {len(runs)} Epochs objects")
    parts, found = [], set()
    for i, run in enumerate(runs):
        if not isinstance(run, mne.BaseEpochs):
            raise VoxfastError(f"windows_from_epochs: item {i} is a {type(run).__name__}, not mne.Epochs")
        subject = str(subjects[i]) if subjects is not None else str(i)
        with mne.utils.use_log_level("error"):
            part, codes = _epochs_part(run.copy(), cfg, f"epochs[{i}]", f"epochs[{i}]", subject)
        found.update(codes)
        if part is not None:
            parts.append(part)
    if not parts:
        raise VoxfastError(f"no epoch's event matches eeg.event_codes {list(cfg.event_codes)}; the events are: "
                           f"{', '.join(sorted(found)) or 'none'}")
    return align_if_configured(_stack(parts, cfg), cfg)


def subject_of(relative: Path, pattern: str | None) -> str:
    """The subject of a file at `relative` (its path under eeg.data): see the module's docstring."""
    if pattern is not None:
        try:
            match = re.search(pattern, relative.as_posix())
        except re.error as exc:
            raise VoxfastError(f"eeg.subject_pattern: {pattern!r} is not a regular expression ({exc})") from exc
        if match is None:
            raise VoxfastError(f"eeg.subject_pattern {pattern!r} does not match {relative.as_posix()} (searched in "
                               "each file's path under eeg.data; the subject is the first group)")
        return match.group(1) if match.groups() else match.group(0)
    if len(relative.parts) > 1:
        return relative.parts[0]
    name = relative.name
    for suffix in (*EPOCHS_SUFFIXES, "_raw.fif", "-raw.fif", "_raw.fif.gz", "-raw.fif.gz", *MNE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return relative.stem


# ----------------------------------------------------------------------------------------------- reading


def _read_raw(mne: Any, file: Path) -> Any:
    try:
        return mne.io.read_raw(file, preload=True)
    except Exception as exc:  # MNE raises ValueError, OSError, RuntimeError, KeyError... by format
        if file.suffix.lower() == ".set":  # an epoched EEGLAB file is not a raw one
            try:
                return mne.io.read_epochs_eeglab(file)
            except Exception:  # the raw reader's error is the one to report
                pass
        raise VoxfastError(f"{file}: not readable by MNE ({type(exc).__name__}: {exc})") from exc


def _read_epochs(mne: Any, file: Path) -> Any:
    try:
        return mne.read_epochs(file, preload=True)
    except Exception as exc:  # any failure is an unreadable file to the user
        raise VoxfastError(f"{file}: not readable as MNE epochs ({type(exc).__name__}: {exc})") from exc


def _raw_part(mne: Any, raw: Any, cfg: EEGConfig, file: Path, run: str, subject: str
              ) -> tuple[_Part | None, set[str]]:
    """A recording's windows at its events (an epoched EEGLAB file goes to the epochs route)."""
    if isinstance(raw, mne.BaseEpochs):
        return _epochs_part(raw, cfg, str(file), run, subject)
    codes = list(cfg.event_codes)
    onsets, labels, found = _events(mne, raw, codes)  # before picks, which may drop the stim channel
    if len(onsets) == 0:
        log.warning("%s: no event with a code of eeg.event_codes %s (found: %s); skipped", file, codes,
                    ", ".join(sorted(found)) or "no annotations or stim events")
        return None, found
    _reference_and_pick(raw, cfg, str(file))
    if cfg.notch is not None:
        raw.notch_filter(list(cfg.notch))
    if cfg.resample is not None:
        raw.resample(_positive(cfg.resample, "eeg.resample"))
    sfreq = float(raw.info["sfreq"])
    signals = raw.get_data() * _scales(raw.info)[:, None]
    if cfg.bandpass is not None:
        signals = bandpass(signals, sfreq, cfg.bandpass)
    x, y = _cut(signals, sfreq, onsets, labels, cfg, str(file))
    if len(x) == 0:
        return None, found
    return _Part(x, y, sfreq, list(raw.ch_names), str(file), run, subject, codes), found


def _events(mne: Any, raw: Any, codes: list[str]) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """(onsets in seconds from the first sample, labels, every code found) of the events whose code is in `codes`:
    annotations (their text) when any matches, else the stim channel's events (their number, e.g. "769").

    Seconds rather than samples, so resampling afterwards cannot move an event.
    """
    found = {str(d).strip() for d in raw.annotations.description}
    keep = [i for i, d in enumerate(raw.annotations.description) if str(d).strip() in codes]
    if keep:
        annotations = raw.annotations[keep]
        onsets = np.asarray(annotations.onset, dtype=float) - _annotation_offset(raw)
        labels = np.array([codes.index(str(d).strip()) for d in annotations.description], dtype=np.int64)
        return onsets, labels, found
    if "stim" in raw.get_channel_types():
        events = mne.find_events(raw, shortest_event=1, initial_event=True)
        numbers = [str(int(c)) for c in events[:, 2]]
        found |= set(numbers)
        rows = [i for i, n in enumerate(numbers) if n in codes]
        onsets = (events[rows, 0] - raw.first_samp) / raw.info["sfreq"]
        return onsets.astype(float), np.array([codes.index(numbers[i]) for i in rows], dtype=np.int64), found
    return np.zeros(0), np.zeros(0, dtype=np.int64), found


def _annotation_offset(raw: Any) -> float:
    """Seconds to subtract from annotation onsets to count from the first sample: with a measurement date MNE keeps
    onsets relative to it (first_time after it for cropped FIF files), without one relative to the first sample."""
    return float(raw.first_time) if raw.annotations.orig_time is not None else 0.0


def _epochs_part(epochs: Any, cfg: EEGConfig, source: str, run: str, subject: str
                 ) -> tuple[_Part | None, set[str]]:
    """Epochs' windows: events selected by eeg.event_codes, preprocessed, cropped to eeg.window."""
    names = {code: name for name, code in epochs.event_id.items()}
    found = {str(n) for n in epochs.event_id}
    event_names = [names.get(int(c), str(int(c))) for c in epochs.events[:, 2]]
    codes = list(cfg.event_codes) or [n for n, _ in sorted(epochs.event_id.items(), key=lambda item: item[1])]
    label_of = {}
    for name, code in epochs.event_id.items():
        for key in (name, str(code)):
            if key in codes:
                label_of[name] = codes.index(key)
    labels = np.array([label_of.get(n, -1) for n in event_names], dtype=np.int64)
    if not (labels >= 0).any():
        log.warning("%s: no epoch with an event of eeg.event_codes %s (events: %s); skipped", source, codes,
                    ", ".join(sorted(found)) or "none")
        return None, found
    epochs = epochs[np.flatnonzero(labels >= 0)]
    epochs.load_data()
    _reference_and_pick(epochs, cfg, source)
    sfreq = float(epochs.info["sfreq"])
    x = epochs.get_data() * _scales(epochs.info)[:, None]
    if cfg.notch is not None:
        x = _mne().filter.notch_filter(x, sfreq, list(cfg.notch))
    if cfg.resample is not None:
        new = _positive(cfg.resample, "eeg.resample")
        x, sfreq = _mne().filter.resample(x, up=new, down=sfreq, axis=-1), new
    if cfg.bandpass is not None:
        x = bandpass(x, sfreq, cfg.bandpass)
    # Windows at eeg.window around each event: the epochs' event sits at time 0, tmin seconds after their start.
    start, end = cfg.window
    length = _window_length(cfg, sfreq)
    first = round((start - float(epochs.tmin)) * sfreq)
    if first < 0 or first + length > x.shape[-1]:
        have = (float(epochs.tmin), float(epochs.tmin) + x.shape[-1] / sfreq)
        raise VoxfastError(f"{source}: eeg.window {[start, end]} s does not lie within the epochs, which span "
                           f"[{have[0]:g}, {have[1]:g}) s around their events; set eeg.window inside that span")
    x = x[..., first: first + length]
    x = _baseline(x, sfreq, cfg, source)
    part = _Part(np.ascontiguousarray(x, dtype=np.float32), labels[labels >= 0], sfreq, list(epochs.ch_names),
                 source, run, subject, codes)
    return part, found


# ----------------------------------------------------------------------------------------------- preprocessing


def _reference_and_pick(inst: Any, cfg: EEGConfig, source: str) -> None:
    """eeg.reference, then eeg.picks, in place on a Raw or Epochs."""
    try:
        if cfg.reference is not None:
            ref = (cfg.reference,) if isinstance(cfg.reference, str) else tuple(cfg.reference)
            inst.set_eeg_reference("average" if ref == ("average",) else list(ref), projection=False)
        if cfg.picks is not None:
            inst.pick([cfg.picks] if isinstance(cfg.picks, str) else list(cfg.picks))
    except ValueError as exc:  # unknown channel names or types, no EEG channel to reference
        raise VoxfastError(f"{source}: eeg.reference {cfg.reference!r} / eeg.picks {cfg.picks!r}: {exc} (the "
                           f"channels are: {', '.join(inst.ch_names)})") from exc


def _scales(info: Any) -> np.ndarray:
    """Per-channel factor to microvolts for voltage channels (MNE holds volts), 1 for the others."""
    from mne.io.constants import FIFF

    return np.array([_MICROVOLTS if ch["unit"] == FIFF.FIFF_UNIT_V else 1.0 for ch in info["chs"]])


def _positive(value: float, key: str) -> float:
    if not value > 0:
        raise VoxfastError(f"{key}: expected a rate in Hz above 0, got {value}")
    return float(value)


def _window_length(cfg: EEGConfig, sfreq: float) -> int:
    start, end = cfg.window
    length = round((end - start) * sfreq)
    if length <= 0:
        raise VoxfastError(f"eeg.window: expected [start, end] seconds with end > start, got [{start}, {end}]")
    return length


def _cut(signals: np.ndarray, sfreq: float, onsets: np.ndarray, labels: np.ndarray, cfg: EEGConfig, source: str
         ) -> tuple[np.ndarray, np.ndarray]:
    """(windows (E, channels, samples) float32, labels (E,)) at eeg.window around each onset, baseline-corrected;
    events too close to an edge for a whole window are dropped with a warning."""
    start, _ = cfg.window
    length = _window_length(cfg, sfreq)
    first = np.round((onsets + start) * sfreq).astype(np.int64)
    keep = (first >= 0) & (first + length <= signals.shape[1])
    if not keep.all():
        log.warning("%d events of %s lie too close to the recording's edges for the window %s s; dropped",
                    int((~keep).sum()), source, list(cfg.window))
    index = first[keep, None] + np.arange(length)
    x = signals[:, index].transpose(1, 0, 2)
    return np.ascontiguousarray(_baseline(x, sfreq, cfg, source), dtype=np.float32), labels[keep]


def _baseline(x: np.ndarray, sfreq: float, cfg: EEGConfig, source: str) -> np.ndarray:
    """Subtract each window's per-channel mean over eeg.baseline (seconds relative to the event, inside eeg.window)."""
    if cfg.baseline is None:
        return x
    (start, end), (low, high) = cfg.window, cfg.baseline
    if not start <= low < high <= end:
        raise VoxfastError(f"eeg.baseline {[low, high]} s: expected window start {start:g} <= low < high <= window "
                           f"end {end:g} (the baseline is taken from each window)")
    a, b = round((low - start) * sfreq), max(round((high - start) * sfreq), round((low - start) * sfreq) + 1)
    return x - x[..., a:b].mean(axis=-1, keepdims=True)


def _stack(parts: list[_Part], cfg: EEGConfig) -> Windows:
    """One Windows of all parts, which must share channels and rate (one tensor), with subject and run groups."""
    first = parts[0]
    for part in parts[1:]:
        if part.classes != first.classes:  # only without eeg.event_codes, from the epochs' own event ids
            raise VoxfastError(f"{part.source}: events {part.classes}, but {first.source} has {first.classes}; set "
                               "eeg.event_codes to the event names to keep (label i = the i-th)")
        if part.channels != first.channels or part.sfreq != first.sfreq:
            raise VoxfastError(f"{part.source}: channels {part.channels} at {part.sfreq:g} Hz, but {first.source} has "
                               f"{first.channels} at {first.sfreq:g} Hz; every file needs the same channels and "
                               "rate after preprocessing (eeg.picks and eeg.resample can make them so)")
    if cfg.sfreq is not None and abs(cfg.sfreq - first.sfreq) > 1e-6 * first.sfreq:
        raise VoxfastError(f"{first.source}: {first.sfreq:g} Hz after preprocessing but eeg.sfreq is {cfg.sfreq:g} "
                           "(set eeg.resample, or eeg.sfreq: null to take the file's rate)")
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    subjects = np.concatenate([np.full(len(p.y), p.subject) for p in parts])
    runs = np.concatenate([np.full(len(p.y), p.run) for p in parts])
    groups = subjects if cfg.group_by == "subject" else runs
    log.info("MNE: %d windows from %d runs of %d subjects", len(y), len(parts), len(np.unique(subjects)))
    return Windows(x, y, groups, first.sfreq, first.classes, first.channels, subjects)
