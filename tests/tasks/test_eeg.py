"""The EEG adapter: .npz and EDF windows, input errors, splits, band-pass, time shifts, batches, training runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import butter, sosfiltfilt

from voxfast.cli import main
from voxfast.config import Config, EEGConfig, TrainConfig, find_config
from voxfast.errors import VoxfastError
from voxfast.models import eeg as eeg_models
from voxfast.tasks import eeg
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.trainer import Trainer

DEMO_CONFIG = find_config("eeg_demo")


def _write_npz(path: Path, n: int = 40, channels: int = 3, samples: int = 64, **arrays: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    base = {"x": rng.standard_normal((n, channels, samples)), "y": np.array(["a", "b"])[np.arange(n) % 2],
            "groups": np.arange(n) % 5, "sfreq": np.float64(64.0)}
    np.savez(path, **{k: v for k, v in {**base, **arrays}.items() if v is not None})
    return path


def _config(data: Path, tmp_path: Path, **eeg_fields) -> Config:
    train = TrainConfig(epochs=1, global_batch=8, micro_batch=8, device="cpu", precision="fp32", tensorboard=False,
                        log_every=1000, out_dir=str(tmp_path / "run"), cudnn_benchmark=False)
    return Config(eeg=EEGConfig(data=str(data), **eeg_fields), train=train)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Models run on one thread (two threads on two shared cores thrash); the process gets its setting back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eeg.make_demo_data(tmp_path_factory.mktemp("eeg_demo"), seed=1, subjects=4, trials_per_class=32)


# ----------------------------------------------------------------------------------------------- reading


def test_npz_windows_are_read_labelled_and_standardised_with_training_statistics(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "eeg.npz")
    raw = np.load(path)["x"]
    data = eeg.read_windows(EEGConfig(data=str(path)))
    assert data.x.shape == (40, 3, 64) and data.x.dtype == np.float32 and data.sfreq == 64.0
    assert data.classes == ["a", "b"] and data.y.tolist() == [0, 1] * 20 and data.channels == ["0", "1", "2"]

    task = eeg.EEGTask(_config(path, tmp_path))
    train = raw[task.train_rows]
    stats = task.checkpoint_extra()["eeg"]
    np.testing.assert_allclose(stats["mean"], train.mean(axis=(0, 2)), atol=1e-6)
    np.testing.assert_allclose(stats["std"], train.std(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(task.x.numpy(), (raw - train.mean((0, 2))[:, None]) / train.std((0, 2))[:, None],
                               atol=1e-5)


def test_edf_recordings_are_cut_at_their_event_codes(tmp_path: Path) -> None:
    highlevel = pytest.importorskip("pyedflib.highlevel")
    sfreq, t = 128, np.arange(20 * 128) / 128
    signals = {name: np.stack([50 * np.sin(2 * np.pi * (c + 1) * t) + 10 * c + k for c in range(3)])
               for k, name in enumerate(["a.edf", "b.edf"])}
    events = {"a.edf": [(1.0, "T1"), (3.0, "T2"), (5.0, "T0"), (19.5, "T1")], "b.edf": [(2.0, "T2"), (4.0, "T1")]}
    for name, x in signals.items():
        headers = highlevel.make_signal_headers(["C3", "Cz", "C4"], sample_frequency=sfreq, physical_min=-200,
                                                physical_max=200)
        highlevel.write_edf(str(tmp_path / name), x, headers,
                            header={"annotations": [[onset, 0.5, code] for onset, code in events[name]]})

    cfg = EEGConfig(data=str(tmp_path), event_codes=("T1", "T2"), window=(0.5, 1.5))
    data = eeg.read_windows(cfg)  # a.edf's event at 19.5 s has no whole window before the end: dropped
    assert data.x.shape == (4, 3, 128) and data.sfreq == 128 and data.channels == ["C3", "Cz", "C4"]
    assert data.y.tolist() == [0, 1, 1, 0] and data.classes == ["T1", "T2"]
    assert data.groups.tolist() == ["a.edf", "a.edf", "b.edf", "b.edf"]
    np.testing.assert_allclose(data.x[1], signals["a.edf"][:, 448:576], atol=0.01)  # (3.0 + 0.5) s * 128

    with pytest.raises(VoxfastError, match="codes found are: T0, T1, T2"):
        eeg.read_windows(EEGConfig(data=str(tmp_path), event_codes=("769", "770")))


def test_edf_without_pyedflib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyedflib", None)  # import fails
    (tmp_path / "a.edf").write_bytes(b"")
    with pytest.raises(VoxfastError, match=r"needs pyedflib: pip install 'voxfast\[eeg\]'"):
        eeg.read_windows(EEGConfig(data=str(tmp_path / "a.edf"), event_codes=("T1",)))


@pytest.mark.parametrize(("arrays", "message"), [
    ({"y": None}, r"no `y` array \(found: x, groups, sfreq\)"),
    ({"y": np.zeros(39)}, r"`y` has 39 entries but `x` has 40 windows \(`x` shape \(40, 3, 64\)\)"),
    ({"groups": np.zeros(41)}, r"`groups` has 41 entries but `x` has 40 windows"),
    ({"y": np.zeros((40, 2))}, r"`y` has shape \(40, 2\); expected one entry per window"),
    ({"x": np.zeros((40, 64))}, r"`x` has shape \(40, 64\) \(float64\); expected"),
    ({"sfreq": None}, "no sampling rate"),
])
def test_malformed_npz_names_the_file_the_key_and_the_shapes(tmp_path: Path, arrays: dict, message: str) -> None:
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(VoxfastError, match=rf"bad\.npz: .*{message}"):
        eeg.read_windows(EEGConfig(data=str(path)))


# ----------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", range(5))
def test_group_split_never_puts_a_group_in_both_sets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.choice(np.array(["s1", "s2", "s3", "s4", "s5", "s6", "s7"]), 300)
    train, val = eeg.split_windows(rng.integers(0, 4, 300), groups, "group", 0.3, seed)
    assert not set(groups[train]) & set(groups[val]) and len(set(groups[val])) == 2
    assert sorted([*train, *val]) == list(range(300))


def test_random_split_is_stratified_and_one_group_is_refused() -> None:
    y = np.repeat([0, 1, 2], [50, 30, 20])
    train, val = eeg.split_windows(y, None, "random", 0.2, 0)
    assert np.bincount(y[val]).tolist() == [10, 6, 4] and len(train) == 80
    with pytest.raises(VoxfastError, match=r"at least 2 groups .* eeg.split=random"):
        eeg.split_windows(y, np.zeros(100), "group", 0.2, 0)


# ----------------------------------------------------------------------------------------------- signal


def test_bandpass_matches_scipy_and_keeps_only_the_pass_band() -> None:
    sfreq, t = 128.0, np.arange(1024) / 128.0
    tones = {f: np.sin(2 * np.pi * f * t) for f in (2.0, 12.0, 50.0)}
    x = np.stack([sum(tones.values()), tones[12.0]])[None]  # (1 window, 2 channels, samples)
    out = eeg.bandpass(x, sfreq, (8.0, 30.0))
    reference = sosfiltfilt(butter(4, [8.0, 30.0], btype="bandpass", fs=sfreq, output="sos"), x, axis=-1)
    np.testing.assert_allclose(out, reference, atol=1e-5)
    amplitude = {f: 2 * np.abs(np.fft.rfft(out[0, 0, 256:768]))[int(f * 4)] / 512 for f in tones}  # 0.25 Hz bins
    assert amplitude[12.0] > 0.97 and amplitude[2.0] < 0.01 and amplitude[50.0] < 0.01
    with pytest.raises(VoxfastError, match=r"eeg\.bandpass: expected 0 < low < high < 64"):
        eeg.bandpass(x, sfreq, (8.0, 70.0))


def test_time_shift_matches_a_per_window_numpy_reference() -> None:
    x = torch.randn(6, 3, 20)
    shifts = torch.tensor([0, 3, -4, 19, -25, 1])
    out = eeg.shift_time(x, shifts).numpy()
    for window, s, got in zip(x.numpy(), shifts.tolist(), out, strict=True):
        padded = np.pad(window, ((0, 0), (max(s, 0), max(-s, 0))), mode="edge")  # edge-repeat, then crop
        np.testing.assert_array_equal(got, padded[:, max(-s, 0):][:, :20])


# ----------------------------------------------------------------------------------------------- batches


def test_batches_are_the_same_after_skipping_and_shifts_are_drawn_per_epoch_and_batch(tmp_path: Path) -> None:
    task = eeg.EEGTask(_config(_write_npz(tmp_path / "eeg.npz", n=100), tmp_path, time_shift=5))
    full = list(task.train_batches(2))
    assert len(full) == len(task.train_rows) // 8 and all(len(b["label"]) == 8 for b in full)
    for a, b in zip(list(task.train_batches(2, skip=3)), full[3:], strict=True):
        assert a.keys() == b.keys() == {"x", "label", "index", "shift"}
        assert all(torch.equal(a[k], b[k]) for k in a)
    other = list(task.train_batches(3))
    assert not torch.equal(full[0]["index"], other[0]["index"])
    shifts = torch.cat([b["shift"] for b in full])
    assert shifts.abs().max() <= 5 and len(shifts.unique()) > 5
    assert torch.equal(full[0]["x"], task.x[full[0]["index"]]) and set(torch.cat([b["index"] for b in full]).tolist()
                                                                       ) <= set(task.train_rows.tolist())


def test_ranks_take_every_world_th_batch_and_the_same_count(tmp_path: Path) -> None:
    cfg = _config(_write_npz(tmp_path / "eeg.npz", n=100), tmp_path)
    single = [b["index"] for b in eeg.EEGTask(cfg).train_batches(0)]
    ranks = [[b["index"] for b in eeg.EEGTask(cfg, rank, 3).train_batches(0)] for rank in range(3)]
    assert len({len(r) for r in ranks}) == 1
    for rank, batches in enumerate(ranks):
        assert all(torch.equal(a, b) for a, b in zip(batches, single[rank::3], strict=False))


def test_both_models_map_windows_to_class_scores(one_thread: None) -> None:
    x = torch.randn(4, 16, 256)
    for model in (eeg_models.EEGNet(16, 256, 4, 128.0), eeg_models.SEResNet1d(16, 4)):
        out = model(x)
        out.sum().backward()
        assert out.shape == (4, 4)


# ----------------------------------------------------------------------------------------------- training


def test_a_short_training_run_beats_chance(demo: Path, tmp_path: Path, one_thread: None) -> None:
    cfg = _config(demo, tmp_path, bandpass=(4.0, 40.0), time_shift=8, split="random")
    cfg.train.epochs, cfg.train.lr, cfg.train.global_batch, cfg.train.micro_batch = 12, 0.003, 16, 16
    trainer = Trainer(eeg.EEGTask(cfg), cfg.train, tmp_path / "run")
    trainer.fit()
    metrics = trainer.evaluate()
    assert metrics["n_val"] == 104  # a fifth of each class: 4 x round(0.2 x 128)
    assert metrics["balanced_accuracy"] > 0.5, metrics  # chance: 0.25; about 0.65 in 12 epochs


def test_cli_trains_the_demo_config_and_the_checkpoint_keeps_the_statistics(
        demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: None) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--task", "eeg", "--config", str(DEMO_CONFIG), f"eeg.data={demo}", "eeg.model=se_resnet1d",
               f"train.out_dir={out}", "train.epochs=1", "train.validate_every=1", "train.device=cpu",
               "train.tensorboard=false"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"accuracy", "balanced_accuracy", "n_val", "train_samples_per_s"} <= printed.keys()
    state = load_checkpoint(out / "checkpoints" / "best.pt")
    assert state["task"] == "eeg" and len(state["eeg"]["mean"]) == len(state["eeg"]["std"]) == 16
    assert state["eeg"]["classes"] == sorted(eeg.DEMO_CLASSES) and state["eeg"]["channels"][9] == "Cz"
