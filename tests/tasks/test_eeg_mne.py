"""EEG through MNE-Python: files written by MNE read back through voxfast, against direct MNE / numpy computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voxfast.config import Config, EEGConfig, TrainConfig
from voxfast.errors import VoxfastError
from voxfast.tasks import eeg, eeg_mne

mne = pytest.importorskip("mne")

SFREQ = 200.0
CHANNELS = ["C3", "Cz", "C4", "Pz"]
EVENTS = [(1.0, "T1"), (4.0, "T2"), (7.0, "T0"), (10.0, "T2"), (13.0, "T1"), (19.5, "T1")]  # the last: too late


def _raw(seed: int, seconds: float = 20.0, tone: float = 0.0) -> mne.io.RawArray:
    """4 EEG channels of noise (volts, as MNE holds them) plus a `tone`-volt 50 Hz sine, with EVENTS annotated."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SFREQ)) / SFREQ
    data = 1e-5 * rng.standard_normal((len(CHANNELS), len(t))) + np.arange(len(CHANNELS))[:, None] * 2e-6
    data += tone * np.sin(2 * np.pi * 50 * t)
    raw = mne.io.RawArray(data, mne.create_info(CHANNELS, SFREQ, "eeg"), verbose="error")
    raw.set_annotations(mne.Annotations([o for o, _ in EVENTS], [0.5] * len(EVENTS), [c for _, c in EVENTS]))
    return raw


def _write_subjects(root: Path, subjects: int = 3, runs: int = 2, **raw_options: float) -> dict[str, mne.io.Raw]:
    """root/S0k/S0kR0r_raw.fif, written by MNE; returns each file's Raw by its path under root."""
    written = {}
    for s in range(subjects):
        (root / f"S0{s}").mkdir(parents=True)
        for r in range(runs):
            raw = _raw(10 * s + r, **raw_options)
            name = f"S0{s}/S0{s}R0{r}_raw.fif"
            raw.save(root / name, verbose="error")
            written[name] = raw
    return written


def _direct_windows(raw: mne.io.BaseRaw, codes: tuple[str, ...], window: tuple[float, float]) -> np.ndarray:
    """The same windows cut by MNE itself: Epochs at the annotations, microvolts."""
    events, _ = mne.events_from_annotations(raw, event_id={c: i + 1 for i, c in enumerate(codes)}, verbose="error")
    length = round((window[1] - window[0]) * raw.info["sfreq"])
    epochs = mne.Epochs(raw, events, tmin=window[0], tmax=window[0] + (length - 1) / raw.info["sfreq"],
                        baseline=None, preload=True, verbose="error")
    return epochs.get_data() * 1e6


# ----------------------------------------------------------------------------------------------- reading


def test_fif_recordings_give_mne_s_windows_labels_and_subject_or_run_groups(tmp_path: Path) -> None:
    written = _write_subjects(tmp_path)
    cfg = EEGConfig(data=str(tmp_path), event_codes=("T1", "T2"), window=(0.5, 2.5))
    data = eeg.read_windows(cfg)  # .fif: auto picks MNE
    assert data.x.shape == (6 * 4, 4, 400) and data.x.dtype == np.float32 and data.sfreq == SFREQ
    assert data.channels == CHANNELS and data.classes == ["T1", "T2"]
    assert data.y.tolist() == [0, 1, 1, 0] * 6  # T0 left out, the event at 19.5 s has no whole window
    assert data.groups.tolist() == [f"S0{s}" for s in range(3) for _ in range(8)]
    assert data.subjects.tolist() == data.groups.tolist()
    direct = np.concatenate([_direct_windows(raw, cfg.event_codes, cfg.window) for raw in written.values()])
    np.testing.assert_allclose(data.x, direct, rtol=1e-5, atol=1e-4)

    runs = eeg.read_windows(EEGConfig(data=str(tmp_path), event_codes=("T1", "T2"), group_by="run"))
    assert runs.groups.tolist() == [name for name in written for _ in range(4)]
    assert runs.subjects.tolist() == data.subjects.tolist()


def test_subject_pattern_groups_the_sessions_of_one_subject_in_a_flat_folder(tmp_path: Path) -> None:
    for i, name in enumerate(["A01T_raw.fif", "A01E_raw.fif", "A02T_raw.fif"]):
        _raw(i).save(tmp_path / name, verbose="error")
    by_file = eeg.read_windows(EEGConfig(data=str(tmp_path), event_codes=("T1", "T2")))
    assert sorted(set(by_file.groups)) == ["A01E", "A01T", "A02T"]  # no pattern: the file name
    data = eeg.read_windows(EEGConfig(data=str(tmp_path), event_codes=("T1", "T2"), subject_pattern=r"A(\d\d)"))
    assert data.groups.tolist() == ["01"] * 8 + ["02"] * 4  # sorted files: A01E, A01T, A02T
    with pytest.raises(VoxfastError, match=r"subject_pattern 'B.*' does not match A01E_raw.fif"):
        eeg.read_windows(EEGConfig(data=str(tmp_path), event_codes=("T1",), subject_pattern=r"B(\d)"))


def test_edf_exported_by_mne_reads_through_mne_with_the_same_windows(tmp_path: Path) -> None:
    pytest.importorskip("edfio")  # what mne.export writes EDF with
    raw = _raw(0)
    mne.export.export_raw(tmp_path / "S01R04.edf", raw, fmt="edf", verbose="error")
    cfg = EEGConfig(data=str(tmp_path / "S01R04.edf"), event_codes=("T1", "T2"), reader="mne")
    data = eeg.read_windows(cfg)
    assert data.x.shape == (4, 4, 400) and data.y.tolist() == [0, 1, 1, 0] and data.groups.tolist() == ["S01R04"] * 4
    np.testing.assert_allclose(data.x, _direct_windows(raw, cfg.event_codes, cfg.window), atol=0.01)  # EDF: 16 bit


def test_stim_channel_events_are_used_when_no_annotation_matches(tmp_path: Path) -> None:
    raw = _raw(0)
    stim = np.zeros((1, raw.n_times))
    for onset, code in [(1.0, 769), (4.0, 770), (7.0, 1023)]:
        stim[0, round(onset * SFREQ): round(onset * SFREQ) + 10] = code
    raw.add_channels([mne.io.RawArray(stim, mne.create_info(["STI"], SFREQ, "stim"), verbose="error")])
    raw.save(tmp_path / "run_raw.fif", verbose="error")
    data = eeg.read_windows(EEGConfig(data=str(tmp_path / "run_raw.fif"), event_codes=("770", "769"), picks="eeg"))
    assert data.y.tolist() == [1, 0] and data.channels == CHANNELS
    np.testing.assert_allclose(data.x[1], raw.get_data()[:4, 800:1200] * 1e6, rtol=1e-5, atol=1e-4)  # 4.0 s


def test_no_matching_event_lists_the_codes_found(tmp_path: Path) -> None:
    _write_subjects(tmp_path, subjects=1, runs=1)
    with pytest.raises(VoxfastError, match="codes found are: T0, T1, T2"):
        eeg.read_windows(EEGConfig(data=str(tmp_path), event_codes=("769", "770")))


def _epochs(seed: int = 0, n: int = 12) -> mne.EpochsArray:
    rng = np.random.default_rng(seed)
    events = np.column_stack([np.arange(n) * 1000, np.zeros(n, int), np.array([1, 2, 3])[np.arange(n) % 3]])
    return mne.EpochsArray(1e-5 * rng.standard_normal((n, len(CHANNELS), 600)),
                           mne.create_info(CHANNELS, SFREQ, "eeg"), events=events, tmin=-0.5,
                           event_id={"left": 1, "right": 2, "feet": 3}, verbose="error")


def test_epochs_files_map_event_names_or_codes_to_labels_and_crop_to_the_window(tmp_path: Path) -> None:
    epochs = _epochs()
    epochs.save(tmp_path / "sub1-epo.fif", verbose="error")
    data = eeg.read_windows(EEGConfig(data=str(tmp_path / "sub1-epo.fif"), event_codes=("right", "left"),
                                      window=(0.0, 2.0)))
    keep = np.flatnonzero(epochs.events[:, 2] != 3)
    assert data.x.shape == (8, 4, 400) and data.classes == ["right", "left"]
    assert data.y.tolist() == [1, 0] * 4 and data.groups.tolist() == ["sub1"] * 8
    np.testing.assert_allclose(data.x, epochs.get_data()[keep][..., 100:500] * 1e6, rtol=1e-5, atol=1e-4)

    by_code = eeg.read_windows(EEGConfig(data=str(tmp_path / "sub1-epo.fif"), event_codes=("3",)))
    assert len(by_code.y) == 4
    every = eeg.read_windows(EEGConfig(data=str(tmp_path / "sub1-epo.fif"), window=(-0.5, 2.5)))
    assert every.classes == ["left", "right", "feet"] and every.y.tolist() == [0, 1, 2] * 4
    with pytest.raises(VoxfastError, match=r"does not lie within the epochs, which span \[-0.5, 2.5\) s"):
        eeg.read_windows(EEGConfig(data=str(tmp_path / "sub1-epo.fif"), window=(0.0, 3.0)))


def test_in_memory_epochs_train_through_the_task(tmp_path: Path) -> None:
    runs = [_epochs(seed) for seed in range(4)]
    cfg = Config(eeg=EEGConfig(data="unused", event_codes=("left", "right", "feet"), window=(0.0, 1.0),
                               time_shift=4),
                 train=TrainConfig(epochs=1, global_batch=8, micro_batch=8, device="cpu", precision="fp32",
                                   tensorboard=False, out_dir=str(tmp_path / "run"), cudnn_benchmark=False))
    data = eeg_mne.windows_from_epochs(runs, cfg.eeg, subjects=["a", "a", "b", "c"])
    assert data.x.shape == (48, 4, 200) and data.groups.tolist() == ["a"] * 24 + ["b"] * 12 + ["c"] * 12
    task = eeg.EEGTask(cfg, data=data)
    assert task.x.shape == (48, 4, 200) and task.classes == ["left", "right", "feet"]
    assert not set(data.groups[task.train_rows]) & set(data.groups[task.val_rows])
    model = task.build_model()
    batch = next(iter(task.train_batches(0, 0)))
    assert torch.isfinite(model(task.inputs(batch, torch.device("cpu")))).all()
    with pytest.raises(VoxfastError, match=r"item 0 is a list, not mne.Epochs"):
        eeg_mne.windows_from_epochs([[1]], cfg.eeg)


# ----------------------------------------------------------------------------------------------- preprocessing


def _windows(root: Path, **options) -> eeg.Windows:
    return eeg.read_windows(EEGConfig(data=str(root), event_codes=("T1", "T2"), **options))


def test_notch_removes_a_50_hz_tone_as_mne_s_notch_filter_does(tmp_path: Path) -> None:
    written = _write_subjects(tmp_path, subjects=1, runs=1, tone=1e-4)  # 100 uV of mains over 10 uV of EEG
    before, after = _windows(tmp_path), _windows(tmp_path, notch=(50.0,))

    def tone_power(x: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(x, axis=-1)) ** 2
        return float(spectrum[..., np.fft.rfftfreq(x.shape[-1], 1 / SFREQ) == 50].mean())

    assert tone_power(after.x) < 1e-3 * tone_power(before.x)
    direct = written["S00/S00R00_raw.fif"].copy().notch_filter(50.0, verbose="error")
    np.testing.assert_allclose(after.x, _direct_windows(direct, ("T1", "T2"), (0.0, 2.0)), rtol=1e-4, atol=1e-3)


def test_resample_changes_the_sample_count_and_matches_mne(tmp_path: Path) -> None:
    written = _write_subjects(tmp_path, subjects=1, runs=1)
    data = _windows(tmp_path, resample=100.0, window=(0.0, 1.5))
    assert data.x.shape == (4, 4, 150) and data.sfreq == 100.0
    direct = written["S00/S00R00_raw.fif"].copy().resample(100.0, verbose="error")
    np.testing.assert_allclose(data.x, _direct_windows(direct, ("T1", "T2"), (0.0, 1.5)), rtol=1e-4, atol=1e-3)
    with pytest.raises(VoxfastError, match=r"eeg.sfreq is 128"):
        _windows(tmp_path, resample=100.0, sfreq=128.0)


def test_average_reference_zeroes_the_channel_mean_and_picks_keep_the_named_channels(tmp_path: Path) -> None:
    _write_subjects(tmp_path, subjects=1, runs=1)
    plain = _windows(tmp_path)
    assert np.abs(plain.x.mean(axis=1)).max() > 1  # the channels' offsets (0, 2, 4, 6 uV) before
    average = _windows(tmp_path, reference="average")
    np.testing.assert_allclose(average.x.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(average.x, plain.x - plain.x.mean(axis=1, keepdims=True), atol=1e-4)

    to_cz = _windows(tmp_path, reference=("Cz",), picks=("C3", "C4"))
    assert to_cz.channels == ["C3", "C4"]
    np.testing.assert_allclose(to_cz.x, plain.x[:, [0, 2]] - plain.x[:, [1]], atol=1e-4)
    assert _windows(tmp_path, picks="eeg").channels == CHANNELS
    with pytest.raises(VoxfastError, match=r"eeg.picks .*the channels are: C3, Cz, C4, Pz"):
        _windows(tmp_path, picks=("O1",))


def test_baseline_zeroes_each_window_s_mean_over_its_span_and_bandpass_matches_the_other_readers(
        tmp_path: Path) -> None:
    written = _write_subjects(tmp_path, subjects=1, runs=1)
    plain = _windows(tmp_path, window=(-0.5, 1.5))
    data = _windows(tmp_path, window=(-0.5, 1.5), baseline=(-0.5, 0.0))
    np.testing.assert_allclose(data.x[..., :100].mean(axis=-1), 0, atol=1e-4)
    np.testing.assert_allclose(data.x, plain.x - plain.x[..., :100].mean(axis=-1, keepdims=True), atol=1e-4)
    with pytest.raises(VoxfastError, match=r"eeg.baseline"):
        _windows(tmp_path, baseline=(-1.0, 0.0))

    band = _windows(tmp_path, bandpass=(8.0, 30.0))
    signals = eeg.bandpass(written["S00/S00R00_raw.fif"].get_data() * 1e6, SFREQ, (8.0, 30.0))
    np.testing.assert_allclose(band.x[0], signals[:, 200:600], rtol=1e-4, atol=1e-3)  # T1 at 1.0 s


def test_mne_only_keys_are_refused_where_mne_does_not_read(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", x=np.zeros((4, 2, 32)), y=np.arange(4) % 2, sfreq=32.0)
    with pytest.raises(VoxfastError, match=r"eeg.notch, eeg.resample: applied by the MNE reader only"):
        eeg.read_windows(EEGConfig(data=str(tmp_path / "w.npz"), notch=(50.0,), resample=16.0))


# ----------------------------------------------------------------------------------------------- alignment


def test_euclidean_alignment_makes_each_subject_s_mean_covariance_the_identity(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mixing = {s: rng.standard_normal((4, 4)) + 2 * np.eye(4) for s in ("a", "b", "c")}
    subjects = np.repeat(["a", "b", "c"], [10, 20, 15])
    x = np.stack([mixing[s] @ rng.standard_normal((4, 300)) for s in subjects]).astype(np.float32)
    aligned = eeg.euclidean_align(x, subjects)
    assert aligned.dtype == np.float32 and aligned.shape == x.shape
    for s in mixing:
        xs = aligned[subjects == s].astype(np.float64)
        np.testing.assert_allclose(np.einsum("nct,ndt->cd", xs, xs) / (len(xs) * 300), np.eye(4), atol=1e-5)
        reference = x[subjects == s].astype(np.float64)  # float64 reference: R^-1/2 by eigendecomposition
        r = np.einsum("nct,ndt->cd", reference, reference) / (len(reference) * 300)
        w, v = np.linalg.eigh(r)
        np.testing.assert_allclose(aligned[subjects == s], np.einsum("cd,ndt->nct", v @ np.diag(w ** -0.5) @ v.T,
                                                                     reference), rtol=1e-4, atol=1e-5)
    # through the reader: per subject folder
    _write_subjects(tmp_path, subjects=3, runs=1)
    data = _windows(tmp_path, euclidean_alignment=True)
    for s in np.unique(data.subjects):
        xs = data.x[data.subjects == s].astype(np.float64)
        np.testing.assert_allclose(np.einsum("nct,ndt->cd", xs, xs) / (len(xs) * xs.shape[2]), np.eye(4), atol=1e-4)
    with pytest.raises(VoxfastError, match=r"covariance is singular .* average reference"):
        _windows(tmp_path, euclidean_alignment=True, reference="average")
