"""Classical baselines: CSP against an independent whitening + PCA computation and known mixing directions, CSP +
LDA and pixel logistic regression on separable data, and the baselines on the real EEG and image tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voxfast.cli import main
from voxfast.config import Config, EEGConfig, ImageConfig, TrainConfig
from voxfast.errors import ConfigError
from voxfast.tasks import baselines, eeg, image, run

CHANNELS, SAMPLES = 6, 200


def _mixed_trials(n_per_class: int, seed: int, classes: int = 2, mixing_seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (N, channels, samples), y, mixing A): class c has a strong source c and the other classes' sources weak,
    seen through a random mixing A (drawn from `mixing_seed`); the remaining sources have the same variance in
    every class, so only the demixing rows of the class sources separate the classes."""
    mixing = np.random.default_rng([mixing_seed, 99]).standard_normal((CHANNELS, CHANNELS))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    scale = np.ones((len(y), CHANNELS))
    scale[:, :classes] = 0.3
    scale[np.arange(len(y)), y] = 3.0
    sources = rng.standard_normal((len(y), CHANNELS, SAMPLES)) * scale[..., None]
    return np.einsum("cs,nst->nct", mixing, sources), y, mixing


def _whitening_pca(cov_a: np.ndarray, cov_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The textbook CSP (Ramoser et al. 2000), float64: whiten C_a + C_b, then PCA of the whitened C_a; (filters
    as rows, eigenvalues), largest first."""
    d, u = np.linalg.eigh(cov_a + cov_b)
    whiten = (u / np.sqrt(d)).T
    values, vectors = np.linalg.eigh(whiten @ cov_a @ whiten.T)
    order = np.argsort(values)[::-1]
    return (vectors[:, order].T @ whiten), values[order]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_csp_matches_whitening_then_pca() -> None:
    x, y, _ = _mixed_trials(40, seed=0)
    covs = baselines.class_covariances(x, y)
    filters, values = baselines.csp_pair(covs[0], covs[1], pairs=CHANNELS // 2)
    ref_filters, ref_values = _whitening_pca(covs[0], covs[1])
    np.testing.assert_allclose(values, ref_values, rtol=1e-9, atol=1e-12)
    cosines = np.abs(np.sum(_unit(filters) * _unit(ref_filters), axis=1))  # same direction, up to sign and scale
    np.testing.assert_allclose(cosines, 1.0, atol=1e-8)
    # eigh's scaling: w' (C_a + C_b) w = 1, the whitened space's unit vectors
    np.testing.assert_allclose(np.einsum("fc,cd,fd->f", filters, covs[0] + covs[1], filters), 1.0, rtol=1e-9)


def test_csp_recovers_the_mixing_directions_and_classifies_near_perfectly() -> None:
    x, y, mixing = _mixed_trials(60, seed=1)
    covs = baselines.class_covariances(x, y)
    filters, values = baselines.csp_pair(covs[0], covs[1], pairs=1)
    demixing = np.linalg.inv(mixing)  # row i extracts source i
    assert abs(_unit(filters[0]) @ _unit(demixing[0])) > 0.99  # class 0's strong source: the largest eigenvalue
    assert abs(_unit(filters[1]) @ _unit(demixing[1])) > 0.99  # class 1's: the smallest
    assert values[0] > 0.9 and values[1] < 0.1
    fresh, y_fresh, _ = _mixed_trials(60, seed=2)  # new trials through the same mixing
    assert (baselines.csp_lda(x, y, fresh) == y_fresh).mean() > 0.97


def test_one_vs_rest_csp_separates_three_classes() -> None:
    x, y, _ = _mixed_trials(50, seed=3, classes=3)
    csp = baselines.CSP(pairs=2).fit(x[::2], y[::2])
    assert csp.filters.shape == (3 * 4, CHANNELS)
    assert (baselines.csp_lda(x[::2], y[::2], x[1::2]) == y[1::2]).mean() > 0.95


def test_pixel_logistic_regression_learns_separable_images() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    images = rng.integers(0, 60, (120, 1, 8, 8)).astype(np.uint8)
    for c in range(3):
        images[y == c, 0, c * 2 : c * 2 + 2] += 150  # a bright band per class
    predicted = baselines.pixel_logistic(images[:80], y[:80], images[80:])
    assert (predicted == y[80:]).mean() == 1.0


def _train(out: Path) -> TrainConfig:
    return TrainConfig(epochs=1, global_batch=8, micro_batch=8, device="cpu", precision="fp32", tensorboard=False,
                       log_every=1000, out_dir=str(out), cudnn_benchmark=False)


def test_csp_lda_on_the_eeg_task_uses_its_split(tmp_path: Path) -> None:
    data = eeg.make_demo_data(tmp_path, seed=0, subjects=3, trials_per_class=8)
    task = eeg.EEGTask(Config(eeg=EEGConfig(data=str(data), bandpass=(8.0, 30.0)), train=_train(tmp_path / "run")))
    result = baselines.run_baseline(task)
    assert result["method"] == "csp_lda" and result["n_val"] == len(task.val_rows) == len(task.val_labels)
    assert {"accuracy", "balanced_accuracy", "per_class_accuracy"} <= result.keys()
    x_train, _, _, y_val = baselines.baseline_arrays(task)
    assert np.array_equal(y_val, task.val_labels) and len(x_train) == len(task.train_rows)


def test_pixel_baseline_on_the_image_task(tmp_path: Path) -> None:
    data = image.make_demo_data(tmp_path, seed=0, per_class=6, size=8)
    task = image.ImageTask(Config(image=ImageConfig(data=str(data), val_fraction=0.34), train=_train(tmp_path / "r")))
    result = baselines.run_baseline(task)
    assert result["method"] == "pixel_logistic" and result["n_val"] == len(task.val_labels) == 20


def test_a_task_without_a_baseline_is_refused_before_training(tmp_path: Path) -> None:
    cfg = Config(train=_train(tmp_path / "run"))
    cfg.train.baseline = True
    with pytest.raises(ConfigError, match="no classical baseline for the speaker task"):
        run.train_and_score(cfg, tmp_path / "run", task_name="speaker")


def test_cli_prints_the_baseline_beside_the_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = eeg.make_demo_data(tmp_path, seed=0, subjects=3, trials_per_class=4)
    out = tmp_path / "run"
    rc = main(["train", "--task", "eeg", "--baseline", f"eeg.data={data}", "eeg.model=eegnet", f"train.out_dir={out}",
               "train.epochs=1", "train.micro_batch=8", "train.global_batch=8", "train.device=cpu",
               "train.tensorboard=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "balanced_accuracy: model " in printed and "baseline (csp_lda) " in printed
    assert json.loads((out / "baseline.json").read_text())["method"] == "csp_lda"
