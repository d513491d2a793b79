"""WeSpeaker (wenet-e2e/wespeaker) ``avg_model.pt`` + ``config.yaml``: ResNet34 and ECAPA-TDNN (GLOB, C=512 / 1024).

These are the architectures of WeSpeaker's published VoxCeleb models (voxceleb_resnet34, voxceleb_resnet34_LM,
voxceleb_ECAPA512, voxceleb_ECAPA1024). ``avg_model.pt`` is the model's plain state dict (averaged epochs, so its
BatchNorm counters may be floats), usually with the training head under ``projection.`` (dropped: voxfast imports
embedders only). The tensors do not say which model or front end made them, so ``config.yaml`` does: ``model``,
``model_args`` (feat_dim, embed_dim, pooling_func, two_emb_layer / emb_bn) and ``dataset_args`` (frontend,
resample_rate, fbank_args, cmvn, cmvn_args). Every setting voxfast cannot reproduce is refused naming its key and
what is supported, and the file must then hold exactly the tensors of that model, or it is refused naming what
differs (under WeSpeaker's names).

Features: WeSpeaker's extraction computes ``kaldi.fbank(wave * 2**15, num_mel_bins, frame_length=25,
frame_shift=10, dither=0, window_type="hamming")`` and subtracts the utterance's mean per bin. The Hamming window is
not Kaldi's default (Povey), so the converted config names the ``wespeaker_fbank`` front end (voxfast's KaldiFbank
with a Hamming window).

Where the architectures differ, the weights absorb it, exactly at inference:

- ECAPA's Res2Net block: WeSpeaker convolves channel groups 0..6 and passes group 7 through, appended last; voxfast
  passes group 0 through first and convolves groups 1..7. Rotating the groups by one (the rows of the 1x1 layer
  before the block, the columns of the one after) makes the two the same function.
- ECAPA's SE gate uses Linear layers, voxfast 1x1 Conv1d: the same matrix with a trailing axis.
- ECAPA's multi-layer aggregation is conv + ReLU without batch norm: voxfast's ``mfa.bn`` gets the identity.
- ``emb_bn`` (a batch norm after the embedding layer) is folded into that layer.

The pooling formulas are WeSpeaker's own in voxfast: resnet34's TSTP uses the unbiased std + 1e-7, and ECAPA takes
``pooling: astp`` (WeSpeaker's attentive statistics pooling with global context).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from voxfast.config import load_config
from voxfast.errors import VoxfastError
from voxfast.interop import Imported
from voxfast.interop.common import load_foreign, rename, require_fit
from voxfast.tasks.speaker import build_embedder

CHECKPOINT = "avg_model.pt"
CONFIG = "config.yaml"
FRONTEND = "wespeaker_fbank"
SAMPLE_RATE = 16000  # KaldiFbank frames 400 / 160 samples: WeSpeaker's 25 / 10 ms at 16 kHz only
RESNET34_BLOCKS = (3, 4, 6, 3)
RES2_SCALE = 8  # WeSpeaker's ECAPA SE_Res2Block: scale=8
BN_EPS = 1e-5  # torch's BatchNorm default, which WeSpeaker keeps
DROP = (r"projection\..*",)  # the training head (margin softmax weights)


@dataclass(frozen=True)
class Model:
    """A WeSpeaker model voxfast reproduces."""

    voxfast: str  # registered voxfast model
    pooling_func: str  # the one WeSpeaker pooling it reproduces (model_args.pooling_func)
    voxfast_pooling: str
    args: tuple[str, ...]  # WeSpeaker constructor's model_args


MODELS = {
    "ResNet34": Model("resnet34", "TSTP", "tstp", ("feat_dim", "embed_dim", "pooling_func", "two_emb_layer")),
    "ECAPA_TDNN_GLOB_c512": Model("ecapa_tdnn", "ASTP", "astp", ("feat_dim", "embed_dim", "pooling_func", "emb_bn")),
    "ECAPA_TDNN_GLOB_c1024": Model("ecapa_tdnn_c1024", "ASTP", "astp",
                                   ("feat_dim", "embed_dim", "pooling_func", "emb_bn")),
}
_WHY_NOT = {  # WeSpeaker models close to a supported one, and what voxfast lacks for them
    "ECAPA_TDNN_c512": "its attention pooling without global context",
    "ECAPA_TDNN_c1024": "its attention pooling without global context",
    "ResNet18": "ResNet18", "ResNet50": "bottleneck ResNets", "ResNet101": "bottleneck ResNets",
    "ResNet152": "bottleneck ResNets", "ResNet221": "bottleneck ResNets", "ResNet293": "bottleneck ResNets",
}
_FBANK_ARGS = ("num_mel_bins", "frame_length", "frame_shift", "dither")  # processor.compute_fbank's arguments


@dataclass(frozen=True)
class Source:
    """What config.yaml says about the model and its features."""

    model: str
    feat_dim: int
    embed_dim: int
    emb_bn: bool  # ECAPA: BatchNorm1d after the embedding layer (folded into it)


Fail = Callable[[str, str], VoxfastError]  # (config key, problem) -> the error naming both and the file


def convert(src: Path, config: Path | None) -> Imported:
    """A WeSpeaker ``avg_model.pt`` (or the folder holding it) with its ``config.yaml`` (`config`, else the one beside
    it) as the voxfast embedder that computes the same embeddings."""
    ckpt, cfg_path = _locate(src, config)
    source = _read_config(cfg_path)
    spec = MODELS[source.model]
    cfg = load_config(None, [f"model.name={spec.voxfast}", f"model.n_mels={source.feat_dim}",
                             f"model.embed_dim={source.embed_dim}", f"model.pooling={spec.voxfast_pooling}",
                             f"model.frontend={FRONTEND}", f"data.sample_rate={SAMPLE_RATE}"])
    raw = _state_dict(load_foreign(ckpt, "a WeSpeaker avg_model.pt"), ckpt)
    resnet = source.model == "ResNet34"
    pairs = _resnet_pairs() if resnet else _ecapa_pairs()
    own = {k: tuple(v.shape) for k, v in build_embedder(cfg).state_dict().items()}
    expected = _expected_shapes(own, pairs, source)
    dropped = {k for k in raw if any(re.fullmatch(d, k) for d in DROP)}
    require_fit(raw, expected, ckpt, f"WeSpeaker's {source.model} as {cfg_path.name} describes it (feat_dim "
                f"{source.feat_dim}, embed_dim {source.embed_dim})", ignore=dropped)

    emb_bn = {k: raw.pop(k) for k in list(raw) if k.startswith("bn2.")}
    state = rename(raw, [(rf"^{re.escape(theirs)}\.", f"{ours}.") for theirs, ours in pairs], ckpt, drop=DROP)
    notes: list[str] = []
    if not resnet:
        _ecapa_weights(state, own)
        notes.append("WeSpeaker's ECAPA aggregates its three blocks with conv + ReLU and no batch norm: voxfast's "
                     "mfa.bn is set to the identity (exact for embeddings; in training mode it normalises with batch "
                     "statistics, so fine-tuning starts from a slightly different function)")
        if source.emb_bn:
            _fold_batch_norm(state, emb_bn)
            notes.append("model_args.emb_bn: the batch norm after the embedding layer is folded into it")
    description = (f"WeSpeaker {source.model} ({cfg_path.name}: model {source.model}, feat_dim {source.feat_dim}, "
                   f"embed_dim {source.embed_dim}, pooling_func {spec.pooling_func}; front end {FRONTEND})")
    return Imported(cfg, state, [ckpt, cfg_path], description, notes)


def _locate(src: Path, config: Path | None) -> tuple[Path, Path]:
    """The checkpoint and its config: SRC itself or SRC/avg_model.pt (or SRC/models/avg_model.pt, an experiment
    folder); config.yaml beside the checkpoint or one folder up (an experiment folder's models/)."""
    ckpt = src
    if src.is_dir():
        found = [p for p in (src / CHECKPOINT, src / "models" / CHECKPOINT) if p.is_file()]
        if not found:
            raise VoxfastError(f"{src}: no {CHECKPOINT} in it (or in its models/); pass the checkpoint file itself")
        ckpt = found[0]
    if config is not None:
        if not config.is_file():
            raise VoxfastError(f"{config}: not found (the WeSpeaker config.yaml given with --config)")
        return ckpt, config
    beside = [p for p in (ckpt.parent / CONFIG, ckpt.parent.parent / CONFIG) if p.is_file()]
    if not beside:
        raise VoxfastError(f"{ckpt}: no {CONFIG} beside it, so the model and its features are unknown; pass the "
                           f"training config with --config")
    return ckpt, beside[0]


def _read_config(path: Path) -> Source:
    """The model and front end config.yaml describes; anything voxfast cannot reproduce is refused, naming the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise VoxfastError(f"{path}: cannot read it as YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, Mapping):
        raise VoxfastError(f"{path}: not a WeSpeaker config (a YAML mapping with model, model_args, dataset_args)")

    def fail(key: str, problem: str) -> VoxfastError:
        return VoxfastError(f"{path}: {key}: {problem}")

    model = raw.get("model")
    if not isinstance(model, str) or model not in MODELS:
        why = f" (voxfast lacks {_WHY_NOT[model]})" if isinstance(model, str) and model in _WHY_NOT else ""
        shown = "missing" if model is None else f"{model!r} is not supported{why}"
        raise fail("model", f"{shown}; supported: {', '.join(MODELS)}")
    spec = MODELS[model]
    args = _section(raw, "model_args", fail)
    unknown = [k for k in args if k not in spec.args]
    if unknown:
        raise fail(f"model_args.{unknown[0]}", f"not an argument of WeSpeaker's {model} (those are: "
                   f"{', '.join(spec.args)})")
    feat_dim, embed_dim = (_positive_int(args, k, "model_args", fail) for k in ("feat_dim", "embed_dim"))
    pooling = args.get("pooling_func", spec.pooling_func)
    if pooling != spec.pooling_func:
        raise fail("model_args.pooling_func", f"{pooling!r} is not supported for {model}; supported: "
                   f"{spec.pooling_func}")
    if _flag(args, "two_emb_layer", False, "model_args", fail):
        raise fail("model_args.two_emb_layer", "true is not supported (voxfast's resnet34 has one embedding layer); "
                   "supported: false")
    emb_bn = _flag(args, "emb_bn", False, "model_args", fail)

    data = _section(raw, "dataset_args", fail)
    frontend = data.get("frontend", "fbank")
    if frontend != "fbank":
        raise fail("dataset_args.frontend", f"{frontend!r} is not supported; supported: fbank")
    rate = data.get("resample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise fail("dataset_args.resample_rate", f"{rate!r} is not supported; supported: {SAMPLE_RATE}")
    fbank = _section(data, "fbank_args", fail, "dataset_args.")
    unknown = [k for k in fbank if k not in _FBANK_ARGS]
    if unknown:
        raise fail(f"dataset_args.fbank_args.{unknown[0]}", f"not an argument of WeSpeaker's compute_fbank (those "
                   f"are: {', '.join(_FBANK_ARGS)})")
    bins = fbank.get("num_mel_bins", 80)
    if bins != feat_dim:
        raise fail("dataset_args.fbank_args.num_mel_bins", f"{bins!r} differs from model_args.feat_dim {feat_dim}; "
                   "the model reads the fbank's bins as its input features")
    for key, value in (("frame_length", 25), ("frame_shift", 10)):
        given = fbank.get(key, value)
        if isinstance(given, bool) or not isinstance(given, int | float) or given != value:
            raise fail(f"dataset_args.fbank_args.{key}", f"{given!r} ms is not supported; supported: {value}")
    dither = fbank.get("dither", 1.0)  # training only: WeSpeaker's extraction sets it to 0, as voxfast computes
    if isinstance(dither, bool) or not isinstance(dither, int | float):
        raise fail("dataset_args.fbank_args.dither", f"{dither!r} is not a number")
    if not _flag(data, "cmvn", True, "dataset_args", fail):
        raise fail("dataset_args.cmvn", "false is not supported (voxfast's fbank subtracts the mean); supported: true")
    cmvn = _section(data, "cmvn_args", fail, "dataset_args.")
    if not _flag(cmvn, "norm_mean", True, "dataset_args.cmvn_args", fail):
        raise fail("dataset_args.cmvn_args.norm_mean", "false is not supported; supported: true")
    if _flag(cmvn, "norm_var", False, "dataset_args.cmvn_args", fail):
        raise fail("dataset_args.cmvn_args.norm_var", "true is not supported; supported: false")
    return Source(model, feat_dim, embed_dim, emb_bn)


def _section(raw: Mapping[str, Any], key: str, fail: Fail, prefix: str = "") -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise fail(f"{prefix}{key}", f"{value!r} is not a mapping")
    return value


def _positive_int(args: Mapping[str, Any], key: str, section: str, fail: Fail) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(f"{section}.{key}", "missing" if value is None else f"{value!r} is not a positive integer")
    return value


def _flag(args: Mapping[str, Any], key: str, default: bool, section: str, fail: Fail) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise fail(f"{section}.{key}", f"{value!r} is not true or false")
    return value


def _state_dict(raw: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The model's tensors: avg_model.pt is the plain state dict; a ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper and DDP's ``module.`` prefix are taken off."""
    for wrapper in ("state_dict", "model"):
        if isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
    not_tensors = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not raw:
        listed = ", ".join(not_tensors[:5]) if not_tensors else "nothing"
        raise VoxfastError(f"{path}: not a WeSpeaker model state dict (entries that are not tensors: {listed})")
    if all(str(k).startswith("module.") for k in raw):
        raw = {str(k)[len("module."):]: v for k, v in raw.items()}
    return {str(k): v for k, v in raw.items()}


def _resnet_pairs() -> list[tuple[str, str]]:
    """(WeSpeaker module, voxfast module) for ResNet34: stem, 16 basic blocks, the embedding layer."""
    pairs = [("conv1", "stem.0"), ("bn1", "stem.1")]
    block = 0
    for layer, depth in enumerate(RESNET34_BLOCKS, start=1):
        for i in range(depth):
            theirs, ours = f"layer{layer}.{i}", f"blocks.{block}"
            pairs += [(f"{theirs}.conv1", f"{ours}.body.0"), (f"{theirs}.bn1", f"{ours}.body.1"),
                      (f"{theirs}.conv2", f"{ours}.body.3"), (f"{theirs}.bn2", f"{ours}.body.4"),
                      (f"{theirs}.shortcut.0", f"{ours}.shortcut.0"), (f"{theirs}.shortcut.1", f"{ours}.shortcut.1")]
            block += 1
    return [*pairs, ("seg_1", "embed")]


def _ecapa_pairs() -> list[tuple[str, str]]:
    """(WeSpeaker module, voxfast module) for ECAPA_TDNN_GLOB: stem, three SE-Res2Blocks, MFA, pooling, BN, linear."""
    pairs = [("layer1.conv", "stem.conv"), ("layer1.bn", "stem.bn")]
    for block, layer in enumerate((2, 3, 4)):
        theirs, ours = f"layer{layer}.se_res2block", f"blocks.{block}.body"
        pairs += [(f"{theirs}.0.conv", f"{ours}.0.conv"), (f"{theirs}.0.bn", f"{ours}.0.bn")]
        for i in range(RES2_SCALE - 1):
            pairs += [(f"{theirs}.1.convs.{i}", f"{ours}.1.convs.{i}.conv"),
                      (f"{theirs}.1.bns.{i}", f"{ours}.1.convs.{i}.bn")]
        pairs += [(f"{theirs}.2.conv", f"{ours}.2.conv"), (f"{theirs}.2.bn", f"{ours}.2.bn"),
                  (f"{theirs}.3.linear1", f"{ours}.3.gate.0"), (f"{theirs}.3.linear2", f"{ours}.3.gate.2")]
    return [*pairs, ("conv", "mfa.conv"), ("pool.linear1", "pool.linear1"), ("pool.linear2", "pool.linear2"),
            ("bn", "pool_bn"), ("linear", "embed")]


def _expected_shapes(own: Mapping[str, tuple[int, ...]], pairs: list[tuple[str, str]],
                     source: Source) -> dict[str, tuple[int, ...]]:
    """WeSpeaker's tensor names and shapes for the model config.yaml describes, derived from the voxfast model's:
    what voxfast has and WeSpeaker does not (ECAPA's mfa.bn) is left out, SE Linear weights lose the conv axis."""
    theirs_of = {ours: theirs for theirs, ours in pairs}
    expected: dict[str, tuple[int, ...]] = {}
    for key, shape in own.items():
        module, _, leaf = key.rpartition(".")
        if module not in theirs_of:
            continue  # set by the converter (mfa.bn)
        expected[f"{theirs_of[module]}.{leaf}"] = shape[:2] if ".gate." in key and leaf == "weight" else shape
    if source.emb_bn:
        expected.update({f"bn2.{leaf}": (source.embed_dim,) for leaf in ("weight", "bias", "running_mean",
                                                                         "running_var")})
        expected["bn2.num_batches_tracked"] = ()
    return expected


def _ecapa_weights(state: dict[str, torch.Tensor], own: Mapping[str, tuple[int, ...]]) -> None:
    """WeSpeaker's ECAPA tensors, renamed, made voxfast's: SE Linear -> 1x1 conv, Res2 groups rotated, mfa.bn = 1."""
    for key, value in list(state.items()):
        if ".gate." in key and key.endswith(".weight"):
            state[key] = value[:, :, None]
    channels = own["stem.conv.weight"][0]
    width = channels // RES2_SCALE
    # voxfast channel c of the Res2 block's input and output is WeSpeaker's channel order[c]: voxfast's group 0
    # (passed through) is WeSpeaker's last group, voxfast's group g >= 1 WeSpeaker's group g - 1.
    order = torch.tensor([((c // width - 1) % RES2_SCALE) * width + c % width for c in range(channels)])
    for key in list(state):
        if re.fullmatch(r"blocks\.\d+\.body\.0\.(conv\.weight|conv\.bias|bn\.(weight|bias|running_mean|running_var))",
                        key):
            state[key] = state[key][order]  # the 1x1 layer before the Res2 block: its output channels
        elif re.fullmatch(r"blocks\.\d+\.body\.2\.conv\.weight", key):
            state[key] = state[key][:, order]  # the 1x1 layer after it: its input channels
    mfa = own["mfa.bn.weight"][0]
    state.update({"mfa.bn.weight": torch.ones(mfa), "mfa.bn.bias": torch.zeros(mfa),
                  "mfa.bn.running_mean": torch.zeros(mfa), "mfa.bn.running_var": torch.full((mfa,), 1.0 - BN_EPS),
                  "mfa.bn.num_batches_tracked": torch.zeros((), dtype=torch.long)})


def _fold_batch_norm(state: dict[str, torch.Tensor], bn: Mapping[str, torch.Tensor]) -> None:
    """embed := bn2(embed(x)) at inference: scale the rows of the embedding layer, shift its bias (float64)."""
    scale = bn["bn2.weight"].double() / (bn["bn2.running_var"].double() + BN_EPS).sqrt()
    weight, bias = state["embed.weight"], state["embed.bias"]
    state["embed.weight"] = (weight.double() * scale[:, None]).to(weight.dtype)
    state["embed.bias"] = ((bias.double() - bn["bn2.running_mean"].double()) * scale
                           + bn["bn2.bias"].double()).to(bias.dtype)
