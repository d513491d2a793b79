"""Image classification on the shared trainer: in-memory data, crops and flips on the device, a small SE-ResNet.

Small-image datasets (MNIST-, CIFAR-sized) fit in memory as uint8, so there is no loader: a micro-batch is one
`index_select` into a (pinned) buffer, uploaded asynchronously, and the augmentation (random crop after zero padding,
optional horizontal flip) runs on the device for the whole batch at once. The padding is a fraction of the image
side (`image.crop_fraction`), so one config augments 8x8 digits and 32x32 photos alike. The draws come from a
generator seeded by (train.seed, epoch, batch number), so a run resumed mid-epoch augments exactly as the
interrupted one would have.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from voxfast.config import Config, ImageConfig
from voxfast.errors import ConfigError, VoxfastError
from voxfast.models.registry import check_model, create_model
from voxfast.tasks.classification import ClassificationTask, Split, channel_stats, epoch_generator, take
from voxfast.train.task import split_batch

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes read as one channel


# ----------------------------------------------------------------------------------------------- data


@dataclass
class ImageSet:
    """Images as one (N, C, H, W) array (uint8, or float32) and their class indices (N,) int64."""

    images: np.ndarray
    labels: np.ndarray


def read_images(path: str | Path, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) images and their raw labels (ints or strings) from an .npz file or a class-per-folder tree.

    Folder images are resized to `image_size` (as the model needs one size per batch); .npz images are kept as
    they are, since whoever wrote the file already chose their size.
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, image_size)
    if not path.is_file():
        raise VoxfastError(f"{path}: no such file or folder (image.data / image.val_data: an .npz with `images` and "
                           "`labels`, or a folder with one sub-folder of PNG/JPEG images per class)")
    return _read_npz(path)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("images", "labels") if k not in npz.files]
            if missing:
                raise VoxfastError(f"{path}: no `{missing[0]}` array (found: {', '.join(npz.files) or 'none'}); "
                                   "expected `images` (N,H,W) or (N,H,W,C) and `labels` (N,)")
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError) as exc:  # not a zip file, object arrays (pickles), truncated arrays
        raise VoxfastError(f"{path}: not a readable .npz of `images` and `labels` ({exc})") from exc
    _check_arrays(path, images, labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


def _check_arrays(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Reject what would otherwise fail later with a shape error far from its cause."""
    if images.ndim not in (3, 4):
        raise VoxfastError(f"{path}: `images` has shape {images.shape}; expected (N, H, W) or (N, H, W, C)")
    if images.ndim == 4 and images.shape[3] > 4 >= images.shape[1]:
        raise VoxfastError(f"{path}: `images` has shape {images.shape}, which looks channels-first; expected "
                           "(N, H, W, C): transpose it with images.transpose(0, 2, 3, 1)")
    if labels.ndim != 1:
        raise VoxfastError(f"{path}: `labels` has shape {labels.shape}; expected (N,) with N = {len(images)}")
    if len(labels) != len(images):
        raise VoxfastError(f"{path}: `labels` has {len(labels)} entries but `images` has {len(images)} "
                           f"(`images` shape {images.shape}, `labels` shape {labels.shape})")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise VoxfastError(f"{path}: `images` has dtype {images.dtype}; expected uint8 or a float type")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise VoxfastError(f"{path}: `images` holds {np.count_nonzero(~np.isfinite(images))} NaN or infinite values")
    if labels.dtype.kind not in "iuU":
        raise VoxfastError(f"{path}: `labels` has dtype {labels.dtype}; expected integers or strings")


def _read_folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every PNG/JPEG of root/<class>/, decoded by threads (Pillow releases the GIL while decoding)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise VoxfastError(f"{root}: no class folders (expected one sub-folder of PNG/JPEG images per class)")
    files, labels = [], []
    for folder in folders:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise VoxfastError(f"{folder}: class folder holds no PNG/JPEG images")
        files += found
        labels += [folder.name] * len(found)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(partial(_read_image, size=size), files))
    if any(a.ndim == 3 for a in arrays):  # a mixed folder: gray images get three equal channels
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
    images = np.stack(arrays)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images), np.array(labels)


def _read_image(path: Path, size: int) -> np.ndarray:
    image_module = _pillow()
    try:
        with image_module.open(path) as im:
            im = im.convert("L" if im.mode in _GRAY_MODES else "RGB")
            return np.asarray(im.resize((size, size), image_module.Resampling.BILINEAR))
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise VoxfastError(f"{path}: unreadable image ({exc})") from exc


def _pillow() -> Any:
    """PIL.Image, imported only for image folders: .npz data needs no optional dependency."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise VoxfastError("reading an image folder needs Pillow: pip install 'voxfast[image]' (or convert the "
                           "images to an .npz with `images` and `labels`)") from exc
    return Image


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) indices with about `fraction` of every class in validation.

    Per class, so rare classes are validated too; a class keeps at least one training image.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[: min(round(fraction * len(members)), len(members) - 1)])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def load_splits(cfg: ImageConfig, seed: int, choose: Callable[[int, Callable[[], Split]], Split] | None = None
                ) -> tuple[ImageSet, ImageSet, list[str]]:
    """Training and validation sets with class indices, and the class names (index order).

    `choose(n, default)`: the (train, validation) indices into image.data to use instead of the stratified split
    `default()` (`ClassificationTask.choose_split`: a cross-validation fold); image.val_data must then be unset.
    """
    images, raw = read_images(cfg.data, cfg.image_size)
    classes = np.unique(raw)
    if len(classes) < 2:
        raise VoxfastError(f"{cfg.data}: {len(classes)} class(es); classification needs at least 2")
    labels = np.searchsorted(classes, raw).astype(np.int64)
    names = [str(c) for c in classes]
    if cfg.val_data is None:
        default = partial(stratified_split, labels, cfg.val_fraction, seed)
        train_idx, val_idx = default() if choose is None else choose(len(labels), default)
        return ImageSet(images[train_idx], labels[train_idx]), ImageSet(images[val_idx], labels[val_idx]), names
    if choose is not None:
        raise ConfigError(f"image.val_data={cfg.val_data}: explicit splits (train.cv_folds) are cut from image.data "
                          "alone; set image.val_data: null")
    val_images, val_raw = read_images(cfg.val_data, cfg.image_size)
    unknown = sorted(set(val_raw.tolist()) - set(classes.tolist()))
    if unknown:
        raise VoxfastError(f"{cfg.val_data}: labels {unknown[:5]} are not among the training classes of {cfg.data}")
    if val_images.shape[1:] != images.shape[1:] or val_images.dtype != images.dtype:
        raise VoxfastError(f"{cfg.val_data}: images of shape (C, H, W) = {val_images.shape[1:]} and dtype "
                           f"{val_images.dtype}, but {cfg.data} has {images.shape[1:]} and {images.dtype}")
    val = ImageSet(val_images, np.searchsorted(classes, val_raw).astype(np.int64))
    return ImageSet(images, labels), val, names



# ----------------------------------------------------------------------------------------------- augmentation


def crop_pixels(ic: ImageConfig, height: int, width: int) -> int:
    """Zero padding in pixels for random crops of (height, width) images: `image.crop_padding` when set, else
    `image.crop_fraction` of the shorter side, rounded half up, at least 1 px from 8 px up.

    A fraction, because a shift that is mild on 32 px (4 px) moves half of an 8 px digit out of its frame; the 1 px
    floor keeps some translation where a small fraction of a small side rounds to nothing (0.05 of 8 px).
    """
    if ic.crop_padding is not None:
        return ic.crop_padding
    side = min(height, width)
    pixels = int(ic.crop_fraction * side + 0.5)
    return max(pixels, 1) if ic.crop_fraction > 0 and side >= 8 else pixels


def augment_draws(n: int, padding: int, flip: bool, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets (n, 2) as (row, column) in [0, 2*padding], and horizontal flips (n,) bool."""
    device = generator.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    if flip:
        return offsets, torch.rand(n, generator=generator, device=device) < 0.5
    return offsets, torch.zeros(n, dtype=torch.bool, device=device)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crops of zero-padded images, then flips, for a whole (B, C, H, W) batch in one gather.

    Sample b is ``pad(x[b])[:, r:r+H, c:c+W]`` with (r, c) = offsets[b], reversed along W where flips[b].
    Works on uint8, so the gather moves a quarter of the bytes of float images.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).flatten(1)  # (B, H*W) into the padded plane
    return padded.flatten(2).gather(2, index[:, None].expand(-1, c, -1)).view(b, c, h, w)


# ----------------------------------------------------------------------------------------------- task


class ImageTask(ClassificationTask):
    """Image classification: cross-entropy on a registered image model, validated by accuracy."""

    name = "image"
    unit = "images"
    default_config = "image_demo"  # `voxfast train --task image` without --config: defaults tuned for images
    takes_split = True

    def __init__(self, cfg: Config, rank: int = 0, world: int = 1, split: Split | None = None) -> None:
        """`split`: (train, validation) indices into image.data instead of the stratified image.val_fraction split
        (a cross-validation fold, `voxfast.tasks.cv`)."""
        super().__init__(cfg, rank, world, split)
        _check_config(cfg.image)
        check_model(cfg.image.model, "image")
        train, val, self.classes = load_splits(cfg.image, self.seed, None if split is None else self.choose_split)
        self.train_x, self.train_y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
        self.val_x, self.val_labels = torch.from_numpy(val.images), val.labels
        self.train_rows = np.arange(len(train.labels))
        self.mean, self.std = channel_stats(train.images)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.check_batches(cfg.image.data)
        self.padding = crop_pixels(cfg.image, *train.images.shape[2:])
        log.info("%d training and %d validation images of %d classes, shape (C, H, W) = %s, from %s",
                 len(train.labels), len(val.labels), len(self.classes), tuple(train.images.shape[1:]), cfg.image.data)
        log.info("augmentation: random crops with %d px of zero padding, horizontal flips %s", self.padding,
                 "on (natural images only: mirrored digits or text change class)" if cfg.image.flip else "off")

    @classmethod
    def fold_targets(cls, cfg: Config) -> tuple[np.ndarray, np.ndarray | None]:
        """The class index of every image of image.data (no groups: cross-validation folds are stratified)."""
        if cfg.image.val_data is not None:
            raise ConfigError(f"image.val_data={cfg.image.val_data}: cross-validation (train.cv_folds) cuts its folds "
                              "from image.data alone; set image.val_data: null")
        _, raw = read_images(cfg.image.data, cfg.image.image_size)
        return np.unique(raw, return_inverse=True)[1].astype(np.int64), None

    def checkpoint_state(self) -> dict[str, Any]:
        """Class names and the normalisation, which classifying new images needs."""
        return {"classes": self.classes, "normalisation": {"mean": self.mean.tolist(), "std": self.std.tolist()}}

    def build_model(self) -> nn.Module:
        ic = self.cfg.image
        return create_model(ic.model, "image", in_channels=self.train_x.shape[1], n_classes=len(self.classes),
                            width=ic.width, blocks=ic.blocks)

    def gather(self, rows: np.ndarray, number: int, epoch: int) -> dict[str, Any]:
        idx = torch.from_numpy(rows)
        return {"x": take(self.train_x, idx, self.pin), "label": take(self.train_y, idx, self.pin),
                "index": number, "epoch": epoch}

    def split_batch(self, batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
        """Pieces of a micro-batch (after out-of-memory) that keep the whole batch's augmentation draws."""
        pieces, first = split_batch(batch, parts), 0
        for piece in pieces:
            piece["span"] = (first, len(batch["label"]))
            first += len(piece["label"])
        return pieces

    def inputs(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """The batch on `device`: cropped and flipped with its own draws, normalised, as float32."""
        ic, n = self.cfg.image, len(batch["label"])
        first, full = batch.get("span", (0, n))
        generator = epoch_generator(self.seed, batch["epoch"], batch["index"], device)
        offsets, flips = augment_draws(full, self.padding, ic.flip, generator)
        x = batch["x"].to(device, non_blocking=True)
        return self._normalise(crop_flip(x, offsets[first : first + n], flips[first : first + n], self.padding))

    def eval_inputs(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self._normalise(self.val_x[positions].to(device))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._stats:
            self._stats[x.device] = tuple(torch.tensor(s, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
                                          for s in (self.mean, self.std))
        mean, std = self._stats[x.device]
        x = (x.float() - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    @classmethod
    def make_demo_data(cls, out: str | Path, seed: int = 0, **options: Any) -> Path:
        """out/images.npz: ten shape and texture classes (see :func:`make_demo_data`)."""
        return make_demo_data(out, seed, **options)


def _check_config(ic: ImageConfig) -> None:
    """Ranges the config types cannot express, all reported at once."""
    problems = []
    if not 0.0 <= ic.val_fraction < 1.0:
        problems.append(f"image.val_fraction: must be in [0, 1), got {ic.val_fraction}")
    if ic.image_size < 1 or ic.width < 1 or min(ic.blocks) < 1:
        problems.append(f"image.image_size, image.width, image.blocks: must be >= 1, got {ic.image_size}, "
                        f"{ic.width}, {list(ic.blocks)}")
    if ic.crop_padding is not None and ic.crop_padding < 0:
        problems.append(f"image.crop_padding: must be >= 0 pixels (or null to use image.crop_fraction), got "
                        f"{ic.crop_padding}")
    if not 0.0 <= ic.crop_fraction < 0.5:
        fix = (f"; for {ic.crop_fraction:g} pixels set image.crop_padding={int(ic.crop_fraction)} instead"
               if ic.crop_fraction >= 1 and float(ic.crop_fraction).is_integer() else "")
        problems.append(f"image.crop_fraction: a fraction of the image side in [0, 0.5), e.g. 0.125 = 1/8 of the "
                        f"side, got {ic.crop_fraction}{fix}")
    if problems:
        raise ConfigError("invalid image config: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------- demo data


def make_demo_data(out: str | Path, seed: int = 0, per_class: int = 600, size: int = 32) -> Path:
    """Write out/images.npz: `per_class` RGB images of 10 shape and texture classes, `size` pixels square.

    Each image draws its own foreground and background colours, position, scale and noise, so the mean colour
    says nothing about the class: a model has to learn the shapes (disc, ring, square, frame, triangle, plus,
    cross, horizontal and vertical stripes, checkerboard).
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(_SHAPES)), per_class))
    n = len(labels)
    grid = (np.arange(size) + 0.5) / size
    centre = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    radius = rng.uniform(0.18, 0.32, (n, 1, 1))
    u = (grid[None, :, None] - centre[0]) / radius  # (N, S, 1): rows in units of the shape's radius
    v = (grid[None, None, :] - centre[1]) / radius  # (N, 1, S): columns
    mask = np.zeros((n, size, size), dtype=bool)
    for k, shape in enumerate(_SHAPES):
        sel = labels == k
        mask[sel] = np.broadcast_to(shape(u[sel], v[sel]), (int(sel.sum()), size, size))
    fg = rng.uniform(0.0, 1.0, (n, 1, 1, 3))
    bg = (fg + rng.uniform(0.3, 0.7, (n, 1, 1, 3))) % 1.0  # every channel differs from the foreground
    images = np.where(mask[..., None], fg, bg) + rng.normal(0.0, 0.08, (n, size, size, 3))
    path = Path(out) / "images.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=(np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8), labels=labels)
    return path


def _box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v))


_SHAPES = (
    lambda u, v: u**2 + v**2 < 1.0,  # disc
    lambda u, v: (u**2 + v**2 < 1.0) & (u**2 + v**2 > 0.4),  # ring
    lambda u, v: _box(u, v) < 0.8,  # square
    lambda u, v: (_box(u, v) < 0.9) & (_box(u, v) > 0.55),  # frame
    lambda u, v: (u < 0.8) & (np.abs(v) < 0.6 * (u + 0.9)),  # triangle, apex up
    lambda u, v: ((np.abs(u) < 0.3) | (np.abs(v) < 0.3)) & (_box(u, v) < 1.0),  # plus
    lambda u, v: ((np.abs(u - v) < 0.4) | (np.abs(u + v) < 0.4)) & (_box(u, v) < 1.0),  # diagonal cross
    lambda u, v: (np.sin(u * 3 * np.pi) > 0) & (_box(u, v) < 1.0),  # horizontal stripes
    lambda u, v: (np.sin(v * 3 * np.pi) > 0) & (_box(u, v) < 1.0),  # vertical stripes
    lambda u, v: ((np.floor(u * 1.5) + np.floor(v * 1.5)) % 2 == 0) & (_box(u, v) < 1.0),  # checkerboard
)
