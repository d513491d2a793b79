"""Typed configuration: nested dataclasses loaded from YAML with strict validation.

A typo in a config silently falling back to a default wastes a GPU-day, so unknown keys and wrong
types are rejected, and every problem is reported at once with its YAML path (``train.lr``) rather
than one per run. Command-line overrides (``train.lr=1e-3``) are coerced to the field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml

from voxfast.errors import ConfigError


@dataclass
class DataConfig:
    train_list: str = "demo_data/train_list.txt"  # VoxCeleb-style `speaker path` list, or a Kaldi dir
    train_root: str | None = None  # folder the list's paths are relative to (default: the list's folder)
    store: str | None = None  # packed store from `voxfast pack`: crops are slices of it, no decoding
    sample_rate: int = 16000  # every file must have this rate (a packed store was resampled to it)
    resample: bool = False  # resample files of another rate on read (default: reject, suggest `voxfast pack`)
    num_frames: int = 200  # training crop in 10 ms frames: frames*160+240 samples (voxceleb_trainer)
    n_per_speaker: int = 1  # crops of one speaker next to each other in a batch; a speaker never fills two slots
    max_seg_per_spk: int = 0  # cap on utterances per speaker per epoch (0 = all)
    num_workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    pin_memory: bool = True  # copy each batch to page-locked memory for an async upload; only used with CUDA
    persistent_workers: bool = True  # keep workers (and their open files and memmaps) across epochs
    prefetch_factor: int = 4  # batches each worker keeps ready
    max_consecutive_failures: int = 20  # unreadable files in a row before the run stops


@dataclass
class AugmentConfig:
    enabled: bool = False  # add noise / reverb to training crops
    placement: Literal["cpu", "device"] = "cpu"  # cpu: in loader workers; device: batched FFTs on the model's device
    noise_dir: str | None = None  # MUSAN-style folder (or packed store) with noise/, speech/, music/ subfolders
    rir_dir: str | None = None  # folder (or packed store) of room impulse responses
    # weights of none, reverb, music, babble, noise (voxceleb_trainer: uniform)
    mix: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    noise_snr: tuple[float, float] = (0.0, 15.0)  # dB range for MUSAN noise (voxceleb_trainer)
    music_snr: tuple[float, float] = (5.0, 15.0)  # dB range for music
    speech_snr: tuple[float, float] = (13.0, 20.0)  # dB range for each babble voice
    babble_count: tuple[int, int] = (3, 7)  # voices mixed into babble (at most 7)
    speed_perturb: bool = False  # speeds 0.9/1.0/1.1, each a new speaker id (WeSpeaker, 3D-Speaker)


@dataclass
class ModelConfig:
    name: str = "resnetse_demo"  # a name from the model registry (`voxfast models` lists them)
    n_mels: int | None = None  # mel / fbank bins of the front end (null: the model's published setting)
    embed_dim: int | None = None  # speaker-embedding size (null: the model's published setting)
    pooling: Literal["sap", "asp", "tstp", "astp", "ecapa"] | None = None  # temporal pooling (null: the model's own)
    # front end by registered name (`voxfast models` lists them; null: the model's own): an imported model keeps
    # the features its source computed, e.g. speechbrain_fbank for SpeechBrain's ECAPA
    frontend: str | None = None


@dataclass
class HeadConfig:
    # training head: a classifier over the training speakers (softmax, am, aam, sub_center_aam) or a metric-learning
    # loss over the batch's speakers (proto, angleproto, softmaxproto, ge2e: need data.n_per_speaker >= 2)
    name: Literal["softmax", "am", "aam", "sub_center_aam", "proto", "angleproto", "softmaxproto", "ge2e"] = "aam"
    margin: float = 0.2  # additive (am) or angular (aam, sub_center_aam) margin once fully ramped up
    scale: float = 30.0  # logit scale s
    # epochs [start, end]: margin 0 before start, full after end; null: WeSpeaker's ramp (epochs 20-40 of 150) as
    # fractions of train.epochs (a full margin from the first step stalls AAM on real speech); [0, 0]: no ramp
    margin_ramp: tuple[float, float] | None = None
    margin_increase: Literal["exp", "linear"] = "exp"  # shape of the ramp (WeSpeaker's MarginScheduler)
    sub_centers: int = 3  # sub_center_aam: centres per speaker
    top_k: int = 5  # sub_center_aam: hardest non-target classes given an extra penalty (inter-top-k)
    top_k_margin: float = 0.06  # sub_center_aam: that penalty


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training list (with budget_minutes: the length the schedules stretch over)
    budget_minutes: float = 0.0  # > 0: train this many wall-clock minutes; LR, warm-up, margin ramp follow elapsed
    global_batch: int = 128  # samples per optimizer step, over all micro-batches and processes
    micro_batch: int = 128  # samples per forward pass and process; accumulation = global / (micro * processes)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # no weight decay on norms and biases for any of them
    lr: float = 3e-3  # peak learning rate (at lr_reference_batch samples per step when that is set)
    lr_reference_batch: int = 0  # > 0: lr scales linearly with global_batch / lr_reference_batch
    momentum: float = 0.9  # SGD momentum (Nesterov) / Adam beta1
    weight_decay: float = 5e-5  # decoupled for AdamW, L2 for SGD and Adam
    scheduler: Literal["cosine", "exp", "step"] = "cosine"  # after warm-up: cosine, exponential (WeSpeaker), step
    warmup_epochs: float = 1.0  # linear LR warm-up from 0 to the peak
    min_lr_ratio: float = 0.02  # cosine and exp: final LR as a fraction of the peak
    step_epochs: float = 10.0  # step: multiply the LR by step_gamma every step_epochs (voxceleb_trainer)
    step_gamma: float = 0.95
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPUs without bf16
    device: str = "auto"  # auto, cpu, cuda, cuda:N (under torchrun: the local rank's GPU)
    tf32: bool = True  # TF32 matmuls and convolutions on Ampere+ GPUs
    cudnn_benchmark: bool = True  # let cuDNN time its algorithms (fixed crop lengths make this pay)
    deterministic: bool = False  # deterministic algorithms (the reproducible preset); slower
    channels_last: bool = False  # NHWC memory format for 2-D convolutional models
    compile: bool = False  # torch.compile the model (before DDP; checkpoints keep the plain module)
    clip_grad_norm: float = 5.0  # max gradient norm (0 disables clipping)
    max_nonfinite: int = 20  # this many non-finite steps in a row abort the run (each one is skipped)
    seed: int = 1234  # seeds python, numpy and torch; loader crops derive their own seeds from it
    log_every: int = 10  # optimizer steps between log lines (the only host syncs of the loop)
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: at epoch ends only)
    keep_last: int = 3  # epoch checkpoints kept besides best.pt and last.pt (0 keeps all)
    average_last: int = 0  # `voxfast recipe`: the model scored is the mean of the last N epoch checkpoints (0: last.pt)
    # A checkpoint whose weights start this run (fine-tuning, a large-margin stage); optimizer, schedule and epoch
    # count start afresh. The task decides what must match (speaker: the embedder; the head is kept if it fits).
    init_from: str | None = None
    # with init_from: fractional epochs the loaded embedder stays frozen (eval mode, no gradients) while a new head
    # learns the new speakers, so the first steps' random head does not wreck pretrained features (speaker task)
    freeze_epochs: float = 0.0
    validate_every: int = 0  # epochs between validations on eval.trials (0: none); best.pt then follows the EER
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    out_dir: str = "runs/demo"  # run folder: resolved config, checkpoints, scores, metrics
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    # Cross-validation of the image and EEG tasks (voxfast.tasks.cv): 0 = one split (the task's own); k >= 2 = k folds
    # (EEG with eeg.split=group: group k-fold, no group in two folds; otherwise stratified by class), each trained
    # into RUN/fold_K/ and summarised in RUN/cv.json and RUN/cv.md; -1 = leave one group out (EEG groups).
    cv_folds: int = 0
    # also fit the classical baseline on the same split or folds: CSP + LDA for EEG, logistic regression on pixels
    # for images (scikit-learn: pip install "voxfast[baseline]"); its figures sit beside the model's
    baseline: bool = False


@dataclass
class EvalConfig:
    trials: str = "demo_data/trials.txt"  # trial list: `label enroll test` or `enroll test target|nontarget`
    root: str | None = None  # folder the trial paths are relative to (default: the trial list's folder)
    max_seconds: float = 0.0  # cap on the audio embedded per utterance (0 = whole utterance)
    batch_seconds: float = 120.0  # audio seconds per embedding batch (utterances of similar length)
    mode: Literal["full", "crops"] = "full"  # whole utterances, or `crops` evenly spaced crops (voxceleb_trainer)
    crops: int = 10  # crops mode: crops per utterance
    crop_seconds: float = 4.0  # crops mode: crop length (shorter utterances are wrap-padded)
    crop_score: Literal["mean_embedding", "mean_pairwise"] = "mean_embedding"  # crops: cosine of the mean crop
    # vector, or the mean cosine over all crop pairs (voxceleb_trainer averages their Euclidean distance instead)
    cohort: int = 0  # > 0: AS-norm against this many training-list utterances drawn with train.seed
    top_n: int = 300  # AS-norm: top cohort scores per utterance


@dataclass
class ImageConfig:
    data: str = "image_demo/images.npz"  # .npz with `images` (N,H,W[,C]) and `labels` (N,), or a class-per-folder tree
    val_data: str | None = None  # separate validation file/folder (default: split val_fraction off `data`)
    val_fraction: float = 0.1  # stratified by class, with train.seed
    image_size: int = 32  # folder images are resized to image_size x image_size
    # random crop after zero-padding by this fraction of the image side (on the device, in batch): rounded, at least
    # 1 px from 8 px up, so 8x8 digits get 1 px and 32x32 images 4; a fixed count of pixels would shift small images
    # off their own frame (4 px of 8 lost digits half their strokes)
    crop_fraction: float = 0.125
    crop_padding: int | None = None  # pixels instead of crop_fraction (configs written before crop_fraction)
    # random horizontal flips (on the device, in batch): off, since a mirrored image must still be the same class;
    # they suit natural images (animals, vehicles, scenes), not digits, letters, text or medical images whose
    # left-right orientation means something
    flip: bool = False
    model: str = "se_resnet_image"  # a registered image model (`voxfast models`): SE-ResNet of the speaker blocks
    width: int = 32  # channels of the first stage (doubled per stage)
    blocks: tuple[int, int, int] = (1, 1, 1)  # SE blocks per stage


@dataclass
class EEGConfig:
    data: str = "eeg_demo/eeg.npz"  # .npz with `x` (N, channels, samples), `y` (N,), optional `groups`, `sfreq`;
    # or a folder of EDF/BDF files with event annotations (optional extra: pip install "voxfast[eeg]", pyedflib)
    event_codes: tuple[str, ...] = ()  # EDF/BDF: annotation codes to cut windows at; label i = position in this list
    window: tuple[float, float] = (0.0, 2.0)  # EDF/BDF: window start and end in seconds relative to each event
    sfreq: float | None = None  # sampling rate; None: from the file (required there)
    val_fraction: float = 0.2
    split: Literal["group", "random"] = "group"  # group: no subject/run in both train and validation
    bandpass: tuple[float, float] | None = None  # Hz, zero-phase Butterworth before standardisation
    time_shift: int = 0  # max random shift in samples (augmentation, on the device)
    model: str = "eegnet"  # a registered EEG model (`voxfast models`): eegnet or se_resnet1d
    dropout: float = 0.25  # the model's dropout probability (EEGNet: after each of its two pooling stages)
    # Recordings through MNE-Python (pip install "voxfast[eeg]"): any format it reads (EDF, BDF, GDF, BrainVision
    # .vhdr, EEGLAB .set, FIF) and -epo.fif epochs; auto: MNE for all but .npz and EDF/BDF (pyedflib), and MNE for
    # EDF/BDF too when a preprocessing key below is set. These keys apply to the MNE path only (null: off).
    reader: Literal["auto", "pyedflib", "mne"] = "auto"
    reference: tuple[str, ...] | str | None = None  # "average", or the reference channel names
    picks: tuple[str, ...] | str | None = None  # channels kept: names, or a type such as "eeg" (after re-referencing)
    notch: tuple[float, ...] | None = None  # Hz, e.g. [50.0, 100.0]: mains and harmonics, before resampling
    resample: float | None = None  # Hz, before the band-pass and the windows
    baseline: tuple[float, float] | None = None  # seconds relative to the event: that span's mean is subtracted
    group_by: Literal["subject", "run"] = "subject"  # MNE path: what eeg.split=group holds out (run: one file)
    # regex on each file's path under eeg.data; subject = its first group (e.g. "A(\\d\\d)" for BCI IV 2a's
    # A01T/A01E); null: the first folder under eeg.data (S001/S001R04.edf -> S001), else the file's name
    subject_pattern: str | None = None
    # every reader: whiten each subject's windows by their mean covariance R, X <- R^-1/2 X (He & Wu 2019), so
    # subjects share one reference frame; subjects: MNE path as above, .npz `subjects` or else `groups`, EDF a file
    euclidean_alignment: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # `voxfast train --task image`
    eeg: EEGConfig = field(default_factory=EEGConfig)  # `voxfast train --task eeg`


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] = (), presets: typing.Sequence[str | Path] = ()
) -> Config:
    """Build a Config from an optional YAML file, preset files laid over it, then ``section.key=value`` overrides.

    `path` is a YAML file or the name of a config shipped with voxfast (`demo`); a preset is a YAML file or a
    shipped preset's name (`speed`, `reproducible`). A preset is a partial config: its keys replace the file's,
    so a recipe keeps its data and model while the preset decides how fast or how reproducibly it runs;
    command-line overrides come last. Raises ConfigError listing every unknown key, wrong type and malformed override.
    """
    raw: dict[str, Any] = _read_yaml(find_config(path)) if path is not None else {}
    for preset in presets:
        _merge(raw, _read_yaml(find_preset(preset)))
    errors: list[str] = []
    for item in overrides:
        _apply_override(raw, item, errors)
    return _validated(raw, str(path) if path is not None else "defaults", errors)


def load_config_dict(raw: dict[str, Any], source: str = "checkpoint") -> Config:
    """Rebuild a Config from its dict form (as stored in checkpoints), with the same validation."""
    return _validated(raw, source, [])


def _validated(raw: dict[str, Any], source: str, errors: list[str]) -> Config:
    cfg = _build(Config, raw, "", errors)
    errors.extend(_check_values(cfg))
    if len(errors) == 1:
        raise ConfigError(f"invalid config ({source}): {errors[0]}")
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise ConfigError(f"invalid config ({source}), {len(errors)} problems:\n{lines}")
    return cfg


def with_overrides(cfg: Config, overrides: typing.Sequence[str], source: str = "checkpoint") -> Config:
    """`cfg` with ``section.key=value`` overrides applied and validated (e.g. a checkpoint's config evaluated
    under another protocol)."""
    raw, errors = config_to_dict(cfg), []
    for item in overrides:
        _apply_override(raw, item, errors)
    return _validated(raw, source, errors)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dicts and lists (tuples become lists) that YAML and checkpoints store as they are."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in items})


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config so a run folder alone says how it was produced."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def shipped_configs(folder: str = "") -> list[str]:
    """Names of the configs shipped in the package (`folder="presets"`: the presets), sorted.

    Configs in subfolders are named by their path, `voxceleb/resnet34`, so a family of recipes shares a folder
    without prefixing every file name. The presets folder holds partial configs, not recipes: it is listed only
    by ``shipped_configs("presets")``, never as a config.
    """
    root = _SHIPPED.joinpath(folder) if folder else _SHIPPED
    return sorted(_yaml_names(root, "", () if folder else _NOT_RECIPES))


def _yaml_names(root: Traversable, prefix: str, skip: Sequence[str]) -> list[str]:
    """`prefix`-qualified stems of the .yaml files under `root`, at any depth, leaving out the folders in `skip`.

    Walks importlib.resources traversables rather than paths, so names are found inside a zipped install too.
    """
    names = []
    for entry in root.iterdir():
        if entry.is_dir():
            if entry.name not in skip and not entry.name.startswith(("_", ".")):  # __pycache__, editor folders
                names += _yaml_names(entry, f"{prefix}{entry.name}/", ())
        elif entry.name.endswith(".yaml"):
            names.append(prefix + entry.name.removesuffix(".yaml"))
    return names


def find_config(name: str | Path) -> Path:
    """A config file: an existing path, else the shipped config of that name (`demo`, `demo.yaml`,
    `voxceleb/resnet34`).

    Shipped configs are package data, so they are found after a plain `pip install` as well as in a checkout.
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = _shipped_file("", path.as_posix())
    if shipped is None:
        raise ConfigError(f"config file not found: {name} (pass an existing YAML file or the name of a shipped "
                          f"config: {', '.join(shipped_configs())})")
    return shipped


def find_preset(name: str | Path) -> Path:
    """A preset: a YAML file (named by a .yaml/.yml path), else the shipped preset of that name (`speed`)."""
    if Path(name).suffix in (".yaml", ".yml"):
        return Path(name)
    shipped = _shipped_file("presets", str(name))
    if shipped is None:
        raise ConfigError(f"unknown preset {str(name)!r}: choose one of {shipped_configs('presets')} or pass a "
                          "YAML file")
    return shipped


def _shipped_file(folder: str, name: str) -> Path | None:
    stem = name.removesuffix(".yaml")
    # Only listed names resolve, so `../x` or `presets/speed` can never reach a file outside the shipped set.
    if not stem or stem not in shipped_configs(folder):
        return None
    node = _SHIPPED.joinpath(folder) if folder else _SHIPPED
    *dirs, last = stem.split("/")
    for part in dirs:
        node = node.joinpath(part)  # one part at a time: a traversable's joinpath need not accept "a/b"
    return Path(str(node.joinpath(f"{last}.yaml")))


_SHIPPED = importlib.resources.files("voxfast").joinpath("configs")  # package data: voxfast/configs/
_NOT_RECIPES = ("presets",)  # subfolders of configs/ that are not named configs (see shipped_configs)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing YAML file or a shipped config name, "
                          "e.g. demo)")
    try:
        data = yaml.safe_load(path.read_bytes())  # bytes: YAML decodes UTF-8/16 itself, bad bytes are a YAMLError
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested deeper than Python's stack") from None
    # Scalars that YAML's resolvers match but its constructors cannot build: 2024-02-30, an int of 5000 digits,
    # `!!timestamp x` (an AttributeError inside PyYAML).
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: a value YAML cannot read ({exc}); quote it to keep it a string") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> None:
    """Lay `layer` over `base` section by section (a preset sets single keys, not whole sections)."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = value


def _apply_override(raw: dict[str, Any], item: str, errors: list[str]) -> None:
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        errors.append(f"override {item!r}: expected section.key=value, e.g. train.lr=0.001")
        return
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        errors.append(f"override {item!r}: {parts[0]} is not a section")
        return
    section[parts[1]] = _OverrideText(value.strip())


class _OverrideText(str):
    """A value typed on the command line: coerced to the field's type rather than taken as a string."""


def _build(cls: type, raw: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            errors.append(_unknown_key(prefix, str(key), list(fields)))
    kwargs = {}
    for name in fields:
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], f"{prefix}{name}.", errors)
        else:
            ok, value = _coerce(raw[name], tp)
            if ok:
                kwargs[name] = value
            else:
                errors.append(f"{prefix}{name}: expected {_type_name(tp)}, got {raw[name]!r}")
    return cls(**kwargs)


def _unknown_key(prefix: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{prefix}{key}: unknown key{hint} (allowed: {', '.join(allowed)})"


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value converted to type tp); command-line text is parsed, YAML values are checked."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        text = str(value) if isinstance(value, _OverrideText) else value
        return (text in typing.get_args(tp), text)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, _OverrideText) and value.lower() in ("null", "none", "~"):
            value = None
        if value is None:
            return (type(None) in typing.get_args(tp), None)
        for arg in typing.get_args(tp):
            if arg is not type(None):
                ok, out = _coerce(value, arg)
                if ok:
                    return True, out
        return False, None
    return _coerce_scalar(value, tp)


def _coerce_tuple(value: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
    """Fixed-length tuples: a YAML list, or `a,b` / `[a,b]` on the command line."""
    if isinstance(value, _OverrideText):
        text = value.strip("[]() ")
        value = [_OverrideText(v.strip()) for v in text.split(",")] if text else []
    if len(args) == 2 and args[1] is Ellipsis and isinstance(value, (list, tuple)):
        args = (args[0],) * len(value)  # tuple[X, ...]: any length
    if not isinstance(value, (list, tuple)) or len(value) != len(args):
        return False, None
    out = []
    for item, arg in zip(value, args, strict=True):
        ok, converted = _coerce(item, arg)
        if not ok:
            return False, None
        out.append(converted)
    return True, tuple(out)


def _coerce_scalar(value: Any, tp: Any) -> tuple[bool, Any]:
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, _OverrideText) and value.lower() in _BOOL_TEXT:
            return True, _BOOL_TEXT[value.lower()]
        return False, None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        return _parse(value, int) if isinstance(value, _OverrideText) else (False, None)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return True, float(value)
            except OverflowError:  # an int beyond float's range is infinite, as the same digits typed as text are
                return True, math.inf if value > 0 else -math.inf
        # Any string, not only command-line text: YAML 1.1 reads `1e-3` (no dot) as a string.
        return _parse(value, float) if isinstance(value, str) else (False, None)
    if tp is str:
        return (isinstance(value, str), str(value) if isinstance(value, str) else None)
    raise TypeError(f"config field type {tp!r} is not supported")  # internal: a new field type needs code


def _parse(text: str, cast: type) -> tuple[bool, Any]:
    try:
        return True, cast(text)
    except ValueError:
        return False, None


_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _non_finite(cfg: Config) -> list[str]:
    """Every float field (and float in a list field) that is NaN or infinite, by its path: a range check such as
    `v <= 0` is False for NaN, so without this a NaN learning rate trains to NaN weights with exit status 0."""
    errors = []
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            values = value if isinstance(value, tuple | list) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                errors.append(f"{section.name}.{f.name}: must be finite, got {value}")
    return errors


def _bounded(cfg: Config) -> dict[str, tuple[float, int, str]]:
    """Counts and sizes that set how much memory is allocated at start, with a ceiling far above any real
    setting: a typo such as num_workers=2000 is refused here instead of forking 2000 processes or filling
    shared memory. (The batch ring also checks its size against the free memory before allocating it.)"""
    c = cfg
    return {
        "data.num_workers": (c.data.num_workers, 256, "one process each"),
        "data.prefetch_factor": (c.data.prefetch_factor, 64, "batches held per worker"),
        "data.num_frames": (c.data.num_frames, 6000, "a 60 s training crop"),
        "train.micro_batch": (c.train.micro_batch, 16384, "crops in one forward pass"),
        "train.global_batch": (c.train.global_batch, 2**20, "crops per optimizer step"),
        "train.threads": (c.train.threads, 1024, "CPU threads"),
        "eval.crops": (c.eval.crops, 1000, "crops per utterance in one batch"),
        "eval.batch_seconds": (c.eval.batch_seconds, 36000, "audio seconds in one embedding batch"),
    }


def _check_values(cfg: Config) -> list[str]:
    """Range checks that types alone cannot express."""
    errors = _non_finite(cfg)
    positive = {
        "data.sample_rate": cfg.data.sample_rate,
        "data.num_frames": cfg.data.num_frames,
        "data.n_per_speaker": cfg.data.n_per_speaker,
        "data.max_consecutive_failures": cfg.data.max_consecutive_failures,
        "data.prefetch_factor": cfg.data.prefetch_factor,
        "model.n_mels": cfg.model.n_mels or 1,
        "model.embed_dim": cfg.model.embed_dim or 1,
        "train.epochs": cfg.train.epochs,
        "train.global_batch": cfg.train.global_batch,
        "train.micro_batch": cfg.train.micro_batch,
        "train.lr": cfg.train.lr,
        "train.log_every": cfg.train.log_every,
        "train.max_nonfinite": cfg.train.max_nonfinite,
        "train.step_epochs": cfg.train.step_epochs,
        "train.step_gamma": cfg.train.step_gamma,
        "head.scale": cfg.head.scale,
        "eval.batch_seconds": cfg.eval.batch_seconds,
        "eval.crops": cfg.eval.crops,
        "eval.crop_seconds": cfg.eval.crop_seconds,
        "eval.top_n": cfg.eval.top_n,
    }
    errors += [f"{k}: must be > 0, got {v}" for k, v in positive.items() if v <= 0]
    non_negative = {
        "data.num_workers": cfg.data.num_workers,
        "data.max_seg_per_spk": cfg.data.max_seg_per_spk,
        "train.weight_decay": cfg.train.weight_decay,
        "train.warmup_epochs": cfg.train.warmup_epochs,
        "train.clip_grad_norm": cfg.train.clip_grad_norm,
        "train.threads": cfg.train.threads,
        "train.lr_reference_batch": cfg.train.lr_reference_batch,
        "train.momentum": cfg.train.momentum,
        "train.checkpoint_every": cfg.train.checkpoint_every,
        "train.keep_last": cfg.train.keep_last,
        "train.average_last": cfg.train.average_last,
        "train.freeze_epochs": cfg.train.freeze_epochs,
        "train.validate_every": cfg.train.validate_every,
        "train.budget_minutes": cfg.train.budget_minutes,
        "eval.max_seconds": cfg.eval.max_seconds,
        "eval.cohort": cfg.eval.cohort,
        "head.margin": cfg.head.margin,
    }
    errors += [f"{k}: must be >= 0, got {v}" for k, v in non_negative.items() if v < 0]
    errors += [f"{k}: must be at most {hi} ({why}), got {v}" for k, (v, hi, why) in _bounded(cfg).items() if v > hi]
    if cfg.head.name in ("proto", "angleproto", "softmaxproto", "ge2e") and (
            cfg.data.n_per_speaker < 2 or cfg.train.micro_batch % cfg.data.n_per_speaker
            or cfg.train.micro_batch < 2 * cfg.data.n_per_speaker):
        errors.append(f"head.name={cfg.head.name} compares crops of a speaker within a micro-batch: it needs "
                      "data.n_per_speaker >= 2 and train.micro_batch a multiple of it holding at least 2 speakers "
                      f"(got {cfg.data.n_per_speaker} and {cfg.train.micro_batch})")
    if cfg.eval.cohort > 0 and cfg.eval.crop_score == "mean_pairwise" and cfg.eval.mode == "crops":
        errors.append("eval.crop_score=mean_pairwise with eval.cohort: AS-norm scores unit vectors, so the crops' "
                      "mean would be renormalised; use eval.crop_score=mean_embedding with a cohort")
    if cfg.train.freeze_epochs > 0 and not cfg.train.init_from:
        errors.append("train.freeze_epochs keeps a loaded embedder frozen: it needs train.init_from (or set it to 0)")
    if cfg.train.freeze_epochs > 0 and cfg.head.name == "proto":
        errors.append("train.freeze_epochs: head.name=proto has no weights, so nothing would learn while the embedder "
                      "is frozen; set it to 0 or use a head with weights (softmaxproto, aam, ...)")
    if 0 < cfg.train.keep_last < cfg.train.average_last:
        errors.append(f"train.keep_last ({cfg.train.keep_last}) must keep the {cfg.train.average_last} epoch "
                      "checkpoints train.average_last averages (raise it, or 0 keeps all)")
    if cfg.train.micro_batch > 0 and cfg.train.global_batch % cfg.train.micro_batch:  # <= 0: reported above
        errors.append(
            f"train.global_batch ({cfg.train.global_batch}) must be a multiple of train.micro_batch "
            f"({cfg.train.micro_batch}); accumulation steps are global_batch / micro_batch"
        )
    if cfg.head.margin_ramp is not None and not 0 <= cfg.head.margin_ramp[0] <= cfg.head.margin_ramp[1]:
        errors.append(f"head.margin_ramp: expected [start, end] epochs with 0 <= start <= end, got "
                      f"{list(cfg.head.margin_ramp)}")
    if cfg.data.n_per_speaker > 0 and cfg.train.micro_batch % cfg.data.n_per_speaker:  # <= 0: reported above
        errors.append(f"train.micro_batch ({cfg.train.micro_batch}) must be a multiple of data.n_per_speaker "
                      f"({cfg.data.n_per_speaker})")
    errors += _check_augment(cfg.augment)
    if not 0.0 < cfg.train.min_lr_ratio <= 1.0:
        errors.append(f"train.min_lr_ratio: must be in (0, 1], got {cfg.train.min_lr_ratio}")
    if not 0.0 <= cfg.eeg.dropout < 1.0:
        errors.append(f"eeg.dropout: a probability in [0, 1), got {cfg.eeg.dropout}")
    return errors


# The augmentation kinds that augment.mix weighs, in its order (voxfast.audio.augment numbers them so).
AUGMENT_KINDS = ("none", "reverb", "music", "babble", "noise")
MAX_BABBLE = 7  # most voices in one babble crop: an augmentation plan has this many noise slots


def augment_problems(
    mix: Sequence[float],
    noise_snr: Sequence[float],
    music_snr: Sequence[float],
    speech_snr: Sequence[float],
    babble_count: Sequence[int],
) -> list[str]:
    """Every problem of an augmentation distribution, one message each, named by its ``augment.*`` key.

    The one check for both callers: config validation (every problem of a file at once) and
    :class:`voxfast.audio.augment.AugmentSpec` (built by tools and tests without a config), so the two accept
    and reject the same settings with the same words.
    """
    problems = []
    if len(mix) != len(AUGMENT_KINDS) or not all(math.isfinite(w) and w >= 0 for w in mix) or sum(mix) <= 0:
        problems.append(f"augment.mix: expected {len(AUGMENT_KINDS)} weights >= 0 ({', '.join(AUGMENT_KINDS)}) "
                        f"with a positive sum, got {list(mix)}")
    for name, (lo, hi) in (("noise_snr", noise_snr), ("music_snr", music_snr), ("speech_snr", speech_snr)):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            problems.append(f"augment.{name}: expected finite [low, high] dB with low <= high, got {[lo, hi]}")
    lo, hi = babble_count
    if not 1 <= lo <= hi <= MAX_BABBLE:
        problems.append(f"augment.babble_count: expected [low, high] voices with 1 <= low <= high <= {MAX_BABBLE}, "
                        f"got {[lo, hi]}")
    return problems


def _check_augment(aug: AugmentConfig) -> list[str]:
    errors = augment_problems(aug.mix, aug.noise_snr, aug.music_snr, aug.speech_snr, aug.babble_count)
    if aug.enabled:
        _, reverb, music, babble, noise = aug.mix
        if reverb > 0 and not aug.rir_dir:
            errors.append("augment.rir_dir: needed for reverb (set it, or set the reverb weight of augment.mix to 0)")
        if max(music, babble, noise) > 0 and not aug.noise_dir:
            errors.append("augment.noise_dir: needed for music, babble, noise (set it, or zero their mix weights)")
    return errors
