"""The image task: both data formats and their errors, the stratified split, device augmentation against a numpy
reference, crop padding scaled to the image side and flips off unless asked for, exact mid-epoch batches, and short
training runs through the Trainer and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from voxfast.cli import main
from voxfast.config import ImageConfig, find_config, load_config
from voxfast.errors import ConfigError, VoxfastError
from voxfast.tasks.classification import epoch_generator as augment_generator
from voxfast.tasks.image import (
    ImageTask,
    augment_draws,
    crop_flip,
    crop_pixels,
    make_demo_data,
    read_images,
    stratified_split,
)
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo set: 10 classes x 60 images of 16x16 pixels."""
    return make_demo_data(tmp_path_factory.mktemp("image"), seed=1, per_class=60, size=16)


def _cfg(data, out, *extra):
    return load_config(None, [f"image.data={data}", f"train.out_dir={out}", "image.width=8", "data.num_workers=0",
                              "train.micro_batch=32", "train.global_batch=32", "train.device=cpu",
                              "train.tensorboard=false", "train.log_every=5", *extra])


# ----------------------------------------------------------------------------------------------- formats


def test_npz_gray_uint8_and_rgb_float(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=gray, labels=np.arange(6) % 2)
    images, labels = read_images(tmp_path / "gray.npz", 32)
    assert images.shape == (6, 1, 5, 7) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 0], gray)
    np.testing.assert_array_equal(labels, np.arange(6) % 2)

    rgb = rng.random((4, 5, 7, 3))
    np.savez(tmp_path / "rgb.npz", images=rgb, labels=np.array(["cat", "dog", "cat", "dog"]))
    images, labels = read_images(tmp_path / "rgb.npz", 32)
    assert images.shape == (4, 3, 5, 7) and images.dtype == np.float32
    np.testing.assert_allclose(images, rgb.transpose(0, 3, 1, 2), rtol=1e-6)
    assert list(labels) == ["cat", "dog", "cat", "dog"]


def test_npz_errors_name_the_key_and_shapes(tmp_path):
    path = tmp_path / "images.npz"
    np.savez(path, images=np.zeros((1000, 8, 8), np.uint8), labels=np.zeros(999, np.int64))
    with pytest.raises(VoxfastError, match=r"images\.npz: `labels` has 999 entries but `images` has 1000"):
        read_images(path, 8)
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(VoxfastError, match=r"images\.npz: no `labels` array \(found: images\)"):
        read_images(path, 8)
    np.savez(path, images=np.zeros((4, 64), np.uint8), labels=np.zeros(4, np.int64))
    with pytest.raises(VoxfastError, match=r"`images` has shape \(4, 64\)"):
        read_images(path, 8)
    np.savez(path, images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.zeros(4, np.int64))
    with pytest.raises(VoxfastError, match=r"\(4, 3, 8, 8\), which looks channels-first"):
        read_images(path, 8)
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros((4, 2), np.int64))
    with pytest.raises(VoxfastError, match=r"`labels` has shape \(4, 2\)"):
        read_images(path, 8)
    with pytest.raises(VoxfastError, match=r"missing\.npz: no such file"):
        read_images(tmp_path / "missing.npz", 8)


def test_png_folder_is_read_and_resized(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for name, count in (("bird", 2), ("fish", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            image_module.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    image_module.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "fish" / "gray.png")  # promoted to RGB
    images, labels = read_images(tmp_path, 8)
    assert images.shape == (6, 3, 8, 8) and images.dtype == np.uint8
    assert list(labels) == ["bird"] * 2 + ["fish"] * 4

    (tmp_path / "fish" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(VoxfastError, match=r"fish/broken\.png: unreadable image"):
        read_images(tmp_path, 8)
    (tmp_path / "fish" / "broken.png").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(VoxfastError, match="empty: class folder holds no PNG/JPEG images"):
        read_images(tmp_path, 8)


def test_stratified_split_keeps_class_shares():
    labels = np.repeat([0, 1, 2], [100, 40, 10])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val]).tolist() == [20, 8, 2]
    assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == len(labels)
    np.testing.assert_array_equal(val, stratified_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=4)[1])
    assert len(stratified_split(np.array([0, 1, 1]), 0.9, seed=0)[0]) == 2  # every class keeps a training image


# ----------------------------------------------------------------------------------------------- augmentation


def _reference(x, offsets, flips, padding):
    """Per sample: zero-pad, crop at the drawn offset, flip horizontally when drawn."""
    out = np.empty_like(x)
    h, w = x.shape[2:]
    for b, ((r, c), flip) in enumerate(zip(offsets, flips, strict=True)):
        crop = np.pad(x[b], ((0, 0), (padding, padding), (padding, padding)))[:, r : r + h, c : c + w]
        out[b] = crop[:, :, ::-1] if flip else crop
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_matches_numpy_reference(dtype):
    x = (torch.rand(16, 3, 9, 7) * 255).to(dtype)
    offsets, flips = augment_draws(16, 3, True, augment_generator(5, 2, 7, torch.device("cpu")))
    assert 0 < flips.sum() < 16 and offsets.min() >= 0 and offsets.max() <= 6
    got = crop_flip(x, offsets, flips, 3)
    np.testing.assert_array_equal(got.numpy(), _reference(x.numpy(), offsets.numpy(), flips.numpy(), 3))
    again = augment_draws(16, 3, True, augment_generator(5, 2, 7, torch.device("cpu")))
    assert torch.equal(again[0], offsets) and torch.equal(again[1], flips)  # same seed, epoch, batch: same draws


@pytest.mark.parametrize(("side", "pixels"), [(8, 1), (16, 2), (28, 4), (32, 4), (64, 8), (4, 1), (2, 0)])
def test_crop_padding_is_a_fraction_of_the_image_side(side, pixels):
    assert crop_pixels(ImageConfig(), side, side) == pixels  # 1/8 of the side, rounded half up
    assert crop_pixels(ImageConfig(), side, 3 * side) == pixels  # the shorter side decides
    assert crop_pixels(ImageConfig(crop_fraction=0.0), side, side) == 0


def test_crop_fraction_keeps_one_pixel_on_small_images_and_pixels_override_it():
    assert crop_pixels(ImageConfig(crop_fraction=0.05), 8, 8) == 1  # 0.4 px would round to no translation
    assert crop_pixels(ImageConfig(crop_fraction=0.05), 7, 7) == 0  # below 8 px the floor does not apply
    assert crop_pixels(ImageConfig(crop_padding=3), 8, 8) == 3  # configs written in pixels keep their meaning
    cfg = load_config(None, ["image.crop_padding=4"])  # an old config's key still loads
    assert cfg.image.crop_padding == 4 and crop_pixels(cfg.image, 32, 32) == 4


def test_flips_are_off_by_default_and_the_config_says_why():
    assert ImageConfig().flip is False
    assert load_config("image_demo").image.flip is False
    assert ImageTask.default_config == "image_demo"  # `voxfast train --task image` starts from these defaults
    source = (ROOT / "voxfast" / "config.py").read_text()
    comment = source[source.index("class ImageConfig"):source.index("flip: bool")]
    assert "natural images" in comment and "digits" in comment
    assert "natural images" in find_config("image_demo").read_text()


def test_digits_sized_task_crops_by_one_pixel_without_flips(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "digits.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
             labels=np.arange(40) % 4)
    task = ImageTask(_cfg(tmp_path / "digits.npz", tmp_path / "run", "image.val_fraction=0.25"))
    assert task.padding == 1
    batch = task.train_batches(1)[0]
    generator = augment_generator(task.seed, batch["epoch"], batch["index"], torch.device("cpu"))
    offsets, flips = augment_draws(len(batch["label"]), 1, False, generator)
    assert not flips.any() and offsets.max() <= 2
    expected = crop_flip(batch["x"], offsets, flips, 1).float()
    mean, std = task.mean.reshape(1, -1, 1, 1), task.std.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(task.inputs(batch, torch.device("cpu")).numpy(), (expected.numpy() - mean) / std,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("override", "message"), [
    ("image.crop_fraction=4", r"image\.crop_fraction: a fraction of the image side in \[0, 0\.5\).*got 4\.0; for 4 "
                              r"pixels set image\.crop_padding=4 instead"),
    ("image.crop_fraction=0.5", r"image\.crop_fraction: a fraction of the image side in \[0, 0\.5\)"),
    ("image.crop_fraction=-0.1", r"image\.crop_fraction: .*got -0\.1$"),
    ("image.crop_padding=-1", r"image\.crop_padding: must be >= 0 pixels"),
])
def test_bad_crop_settings_are_refused_naming_the_fix(demo, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        ImageTask(_cfg(demo, tmp_path, override))


def test_split_pieces_keep_the_batch_draws(demo, tmp_path):
    task = ImageTask(_cfg(demo, tmp_path))
    batch = task.train_batches(1)[2]
    whole = task.inputs(batch, torch.device("cpu"))
    pieces = [task.inputs(p, torch.device("cpu")) for p in task.split_batch(batch, 3)]
    assert torch.equal(torch.cat(pieces), whole)
    assert torch.equal(task.inputs(batch, torch.device("cpu")), whole)


# ----------------------------------------------------------------------------------------------- batches


def test_batches_resume_exactly_and_ranks_share_evenly(demo, tmp_path):
    cfg = _cfg(demo, tmp_path, "image.val_fraction=0.25", "train.micro_batch=16", "train.global_batch=16")
    task = ImageTask(cfg)
    full = task.train_batches(3)
    assert len(full) == 450 // 16 and all(len(b["label"]) == 16 for b in full)
    resumed = list(task.train_batches(3, skip=5))
    assert len(resumed) == len(full) - 5
    for a, b in zip(resumed, full[5:], strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["label"], b["label"]) and a["index"] == b["index"]
    assert not torch.equal(full[0]["label"], task.train_batches(4)[0]["label"])

    ranks = [ImageTask(cfg, rank, 3).train_batches(3) for rank in range(3)]
    assert {len(r) for r in ranks} == {len(full) // 3}
    indices = [b["index"] for r in ranks for b in r]
    assert len(set(indices)) == len(indices)


# ----------------------------------------------------------------------------------------------- training


def test_trainer_beats_chance(demo, tmp_path):
    cfg = _cfg(demo, tmp_path / "run", "train.epochs=8", "train.lr=0.01", "train.warmup_epochs=0.5",
               "image.crop_padding=0", "train.validate_every=4")
    task = ImageTask(cfg)
    trainer = Trainer(task, cfg.train, tmp_path / "run")
    trainer.fit()
    metrics = trainer.evaluate()
    assert metrics["n_val"] == 60 and len(metrics["per_class_accuracy"]) == 10
    assert metrics["accuracy"] >= 0.4  # chance is 0.1; this seed reaches 0.6 in 128 steps
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_cli_train(demo, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--task", "image", "--config", "image_demo",
                 f"image.data={demo}", f"train.out_dir={out}", "image.width=4", "image.blocks=1,1,1", "train.epochs=1",
                 "train.micro_batch=32", "train.global_batch=64", "train.device=cpu", "train.tensorboard=false",
                 "train.validate_every=1", "train.channels_last=false"])
    # channels_last off: with image.width=4, oneDNN's NHWC 1x1 convolution backward-weights kernel (torch 2.14.1,
    # AVX2) aborted at 1 thread and now and then deadlocked at 2 in this session (not seen at width 16)
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_val"] == 60 and 0.0 <= printed["accuracy"] <= 1.0 and printed["steps"] == 8
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == printed["accuracy"]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["task"] == "image" and state["classes"] == [str(i) for i in range(10)]
    assert len(state["normalisation"]["mean"]) == 3 and min(state["normalisation"]["std"]) > 0
