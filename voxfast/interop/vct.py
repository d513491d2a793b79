"""voxceleb_trainer (clovaai/voxceleb_trainer) ``.model`` files: ResNetSE34L with SAP, ResNetSE34V2 with ASP.

voxceleb_trainer saves ``SpeakerNet.state_dict()``: the model under ``__S__.``, the training loss under ``__L__.``
(dropped: voxfast imports embedders only). Newer files wrap it as ``{"model_state_dict": ...}`` beside the
optimizer; ``{"model": ...}`` holds the model without the prefix. The file names no architecture, so it is read
from the tensors: the stem tells the two models apart (7x7 unbiased, 16 channels: ResNetSE34L; 3x3 biased, 32
channels: ResNetSE34V2), the projection's input width tells SAP from ASP, and the mel filterbank buffer (or, for
V2, the attention's width) gives ``n_mels``. Every other tensor must then be exactly where and as large as the
reference puts it, or the file is refused naming what differs.

The features are computed inside voxceleb_trainer's models, so the converted config names voxceleb_trainer's exact
front end (`voxfast.audio.frontends_vct`): mel banks from 0 Hz, reflect-padded pre-emphasis for V2, none for 34L.
The file's own window, mel filterbank and pre-emphasis filter are checked against it and then dropped (voxfast's
front ends hold no weights). voxceleb_trainer copies those buffers from the file when it loads one, so the file's
window is the one its features used: Hamming since August 2020, Hann in the ResNetSE34L of April 2020 that trained
the published ``baseline_lite_ap.model``; the front end follows the file. The logarithm is assumed (``--log_input``,
the setting of every published model and shipped config; the April 2020 ResNetSE34L always took it); a
voxceleb_trainer YAML config given as `config` is checked for it.

`config` is optional: a model name (``resnetse34l`` / ``ResNetSE34V2``) or voxceleb_trainer's YAML config, checked
against what the tensors say; it never overrides them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
import yaml

from voxfast.audio.frontends_vct import PRE_EMPHASIS, WIN, WINDOWS
from voxfast.config import load_config
from voxfast.errors import VoxfastError
from voxfast.interop import Imported
from voxfast.interop.common import listing, load_foreign, rename, require_fit

LAYERS = (3, 4, 6, 3)  # blocks per stage, both models
SAMPLE_RATE = 16000  # voxceleb_trainer's MelSpectrogram is built for 16 kHz
N_FREQ = 257  # n_fft 512
SE_REDUCTION = 8
ATTENTION_HIDDEN = 128  # ResNetSE34V2's attention bottleneck


@dataclass(frozen=True)
class Arch:
    """What tells a voxceleb_trainer model apart and what voxfast builds for it."""

    name: str  # voxfast's registered model
    widths: tuple[int, int, int, int]  # channels per stage
    stem_kernel: int
    stem_bias: bool
    stem_bn: int  # index of the stem's batch norm in voxfast's stem (2: after the ReLU, as V2)
    encoder: str  # the pooling voxfast reproduces for it
    frontends: dict[str, str]  # the file's STFT window -> voxfast.audio.frontends_vct's front end
    buffers: str  # prefix of the MelSpectrogram's buffers (V2 wraps it in a Sequential after PreEmphasis)
    published: str  # the published file of that kind


ARCHS = {
    "ResNetSE34L": Arch("resnetse34l", (16, 32, 64, 128), 7, False, 1, "SAP",
                        {"hamming": "vct_logmel_nopreemph", "hann": "vct_logmel_hann_nopreemph"}, "torchfb.",
                        "baseline_lite_ap.model"),
    "ResNetSE34V2": Arch("resnetse34v2", (32, 64, 128, 256), 3, True, 2, "ASP", {"hamming": "vct_logmel"},
                         "torchfb.1.", "baseline_v2_ap.model"),
}

_BLOCK_RULES = [  # inside a block: voxceleb_trainer's SEBasicBlock -> voxfast's body / shortcut Sequentials
    (r"^(blocks\.\d+)\.conv1\.", r"\1.body.0."),
    (r"^(blocks\.\d+)\.bn1\.", r"\1.body.2."),
    (r"^(blocks\.\d+)\.conv2\.", r"\1.body.3."),
    (r"^(blocks\.\d+)\.bn2\.", r"\1.body.4."),
    (r"^(blocks\.\d+)\.se\.fc\.0\.", r"\1.body.5.gate.1."),
    (r"^(blocks\.\d+)\.se\.fc\.2\.", r"\1.body.5.gate.3."),
    (r"^(blocks\.\d+)\.downsample\.", r"\1.shortcut."),
]


def convert(src: Path, config: Path | None) -> Imported:
    """A voxceleb_trainer ResNetSE34L / ResNetSE34V2 ``.model`` file (or the folder holding exactly one) as the
    voxfast embedder that computes the same embeddings."""
    path = _model_file(src)
    model = _model_state(load_foreign(path, "a voxceleb_trainer .model file"), path)
    arch, n_mels, n_out = _identify(model, path)
    spec = ARCHS[arch]
    if config is not None:
        _check_config(config, arch, n_mels, n_out)
    window = _window(model, arch, path)
    buffers = _frontend_buffers(arch, n_mels, window)
    require_fit(model, _reference_shapes(arch, n_mels, n_out), path, f"voxceleb_trainer's {arch}", ignore=buffers,
                shown=lambda k: f"__S__.{k}")
    notes = _check_frontend(model, buffers, arch, n_mels, path)
    frontend = spec.frontends[window]

    state = rename(model, _rules(arch), path, drop=[re.escape(k) for k in buffers])
    for key, value in state.items():
        if ".gate." in key and value.dim() == 2:
            state[key] = value[:, :, None, None]  # SE gate: Linear (out, in) -> voxfast's 1x1 Conv2d
    if arch == "ResNetSE34L":
        # SAP: score_t = v . tanh(W x_t + b). voxfast's SAP is two 1x1 Conv1d; the second has a bias, which the
        # softmax over time ignores, so it is 0.
        state["pool.attention.0.weight"] = state["pool.attention.0.weight"][:, :, None]  # (C, C) -> (C, C, 1)
        vector = state["pool.attention.2.weight"]  # (C, 1)
        state["pool.attention.2.weight"] = vector.T[:, :, None].contiguous()  # (1, C, 1)
        state["pool.attention.2.bias"] = torch.zeros(1, dtype=vector.dtype)

    cfg = load_config(None, [f"model.name={spec.name}", f"model.n_mels={n_mels}", f"model.embed_dim={n_out}",
                             f"model.pooling={spec.encoder.lower()}", f"model.frontend={frontend}",
                             f"data.sample_rate={SAMPLE_RATE}"])
    description = (f"voxceleb_trainer {arch} ({path.name}: encoder {spec.encoder}, n_mels {n_mels}, nOut {n_out}; "
                   f"front end {frontend}: {window} window)")
    return Imported(cfg, state, [path], description, notes)


def _model_file(src: Path) -> Path:
    if not src.is_dir():
        return src
    found = sorted(src.glob("*.model"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise VoxfastError(f"{src}: a folder must hold exactly one voxceleb_trainer .model file (found {names}); "
                           "pass the file itself")
    return found[0]


def _model_state(raw: Mapping[str, object], path: Path) -> dict[str, torch.Tensor]:
    """The model's tensors without the ``__S__.`` prefix, from any of voxceleb_trainer's save formats."""
    inner = raw.get("model_state_dict")
    if isinstance(inner, Mapping):  # trainSpeakerNet's newer format: with optimizer, scheduler and epoch
        raw = inner
    inner = raw.get("model")
    if len(raw) == 1 and isinstance(inner, Mapping):  # legacy: the model alone, unprefixed
        raw = {f"__S__.{k}": v for k, v in inner.items()}
    not_tensors = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not raw:
        found = f"found {listing(not_tensors)}" if not_tensors else "it is empty"
        raise VoxfastError(f"{path}: not a voxceleb_trainer model state dict (expected tensors named '__S__.*'; "
                           f"{found})")
    named = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in raw.items()}  # DDP-saved
    model = {k[len("__S__."):]: v for k, v in named.items() if k.startswith("__S__.")}
    if not model and "conv1.weight" in named:  # the model's own state_dict, saved without SpeakerNet around it
        return dict(named)  # type: ignore[arg-type]
    if not model:
        raise VoxfastError(f"{path}: no '__S__.' tensors, so not a voxceleb_trainer SpeakerNet state dict (found "
                           f"{listing(list(named))})")
    other = [k for k in named if not k.startswith(("__S__.", "__L__."))]
    if other:
        raise VoxfastError(f"{path}: tensors outside the model ('__S__.') and its loss ('__L__.'): {listing(other)}; "
                           "nothing was written")
    return model  # type: ignore[return-value]


def _identify(model: Mapping[str, torch.Tensor], path: Path) -> tuple[str, int, int]:
    """(architecture, n_mels, nOut) from the stem, the projection and the mel filterbank."""
    stem, fc = model.get("conv1.weight"), model.get("fc.weight")
    if stem is None or fc is None or fc.dim() != 2:
        found = "no conv1.weight" if stem is None else "no fc.weight" if fc is None else f"fc.weight {tuple(fc.shape)}"
        raise VoxfastError(f"{path}: not a voxceleb_trainer ResNetSE34L / ResNetSE34V2 ({found}; the model's tensors: "
                           f"{listing(list(model))}); nothing was written")
    shape, biased = tuple(stem.shape), "conv1.bias" in model
    arch = next((name for name, a in ARCHS.items()
                 if shape == (a.widths[0], 1, a.stem_kernel, a.stem_kernel) and biased == a.stem_bias), None)
    if arch is None:
        raise VoxfastError(f"{path}: the stem conv1.weight is {shape} {'with' if biased else 'without'} a bias; "
                           "voxfast imports voxceleb_trainer's ResNetSE34L ((16, 1, 7, 7), no bias) and ResNetSE34V2 "
                           "((32, 1, 3, 3), biased) only; nothing was written")
    spec = ARCHS[arch]
    width = spec.widths[-1]
    n_out, fc_in = (int(s) for s in fc.shape)
    fb = model.get(f"{spec.buffers}mel_scale.fb")
    n_mels_fb = int(fb.shape[1]) if fb is not None and fb.dim() == 2 and fb.numel() else None
    if arch == "ResNetSE34L":
        n_mels = n_mels_fb or 40  # trainSpeakerNet's default: averaging out frequency leaves no other trace of it
        frame_dim = width
    else:
        attention = model.get("attention.0.weight")
        if attention is None or attention.dim() != 3 or attention.shape[1] % width:
            found = "missing" if attention is None else str(tuple(attention.shape))
            raise VoxfastError(f"{path}: ResNetSE34V2 without a usable __S__.attention.0.weight ({found}; expected "
                               f"({ATTENTION_HIDDEN}, {width} x n_mels / 8, 1)); nothing was written")
        frame_dim = int(attention.shape[1])
        n_mels = 8 * frame_dim // width  # three stride-2 stages: 64 bands leave 8 bins of 256 channels
        if n_mels_fb is not None and n_mels_fb != n_mels:
            raise VoxfastError(f"{path}: the mel filterbank has {n_mels_fb} bands but attention.0.weight "
                               f"{tuple(attention.shape)} implies n_mels {n_mels}; not one consistent ResNetSE34V2")
    if fc_in != (2 if spec.encoder == "ASP" else 1) * frame_dim:
        found = {frame_dim: "SAP", 2 * frame_dim: "ASP"}.get(fc_in, f"an unknown encoder (fc.weight {tuple(fc.shape)})")
        raise VoxfastError(f"{path}: {arch} with {found}; voxfast reproduces {arch} with {spec.encoder} only (as the "
                           f"published {spec.published}): its pooling has no equivalent of the other; nothing was "
                           "written")
    return arch, n_mels, n_out


def _reference_shapes(arch: str, n_mels: int, n_out: int) -> dict[str, tuple[int, ...]]:
    """The model's tensors, front-end buffers aside, as voxceleb_trainer's ResNetSE builds them: name -> shape."""
    spec = ARCHS[arch]
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{prefix}.num_batches_tracked"] = ()

    c0 = spec.widths[0]
    shapes["conv1.weight"] = (c0, 1, spec.stem_kernel, spec.stem_kernel)
    if spec.stem_bias:
        shapes["conv1.bias"] = (c0,)
    bn("bn1", c0)
    inplanes = c0
    projects = [False, True, True, True]  # a projection shortcut opens stages 2-4 (a tuple stride is never 1)
    for stage, (depth, planes, project) in enumerate(zip(LAYERS, spec.widths, projects, strict=True), start=1):
        for j in range(depth):
            p = f"layer{stage}.{j}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            hidden = planes // SE_REDUCTION
            shapes.update({f"{p}.se.fc.0.weight": (hidden, planes), f"{p}.se.fc.0.bias": (hidden,),
                           f"{p}.se.fc.2.weight": (planes, hidden), f"{p}.se.fc.2.bias": (planes,)})
            if j == 0 and (project or inplanes != planes):
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    if arch == "ResNetSE34L":
        shapes.update({"sap_linear.weight": (inplanes, inplanes), "sap_linear.bias": (inplanes,),
                       "attention": (inplanes, 1)})
        fc_in = inplanes
    else:
        frame_dim = inplanes * (n_mels // 8)
        shapes.update({"attention.0.weight": (ATTENTION_HIDDEN, frame_dim, 1), "attention.0.bias": (ATTENTION_HIDDEN,)})
        bn("attention.2", ATTENTION_HIDDEN)
        shapes.update({"attention.3.weight": (frame_dim, ATTENTION_HIDDEN, 1), "attention.3.bias": (frame_dim,)})
        fc_in = 2 * frame_dim
    shapes.update({"fc.weight": (n_out, fc_in), "fc.bias": (n_out,)})
    return shapes


def _window(model: Mapping[str, torch.Tensor], arch: str, path: Path) -> str:
    """The STFT window the file's features used: its own window buffer, which voxceleb_trainer loads with it."""
    key = f"{ARCHS[arch].buffers}spectrogram.window"
    got = model.get(key)
    if got is None or got.numel() == 0:
        return "hamming"  # voxceleb_trainer's since August 2020 (noted by _check_frontend)
    for name in ARCHS[arch].frontends:
        if tuple(got.shape) == (WIN,) and float((got.float() - WINDOWS[name](WIN)).abs().max()) <= 1e-6:
            return name
    known = " or ".join(f"periodic {w} of {WIN}" for w in ARCHS[arch].frontends)
    raise VoxfastError(f"{path}: the STFT window __S__.{key} {tuple(got.shape)} is not the window voxceleb_trainer's "
                       f"{arch} used ({known}): the model was trained on features voxfast does not compute; nothing "
                       "was written")


def _frontend_buffers(arch: str, n_mels: int, window: str) -> dict[str, torch.Tensor]:
    """The buffers voxceleb_trainer's front end saves (and uses again when it loads the file), with the values
    voxfast's vct front end computes: the periodic window, the HTK mel banks from 0 Hz, the pre-emphasis filter
    (V2)."""
    prefix = ARCHS[arch].buffers
    buffers = {
        f"{prefix}spectrogram.window": WINDOWS[window](WIN),
        f"{prefix}mel_scale.fb": torchaudio.functional.melscale_fbanks(N_FREQ, 0.0, SAMPLE_RATE / 2, n_mels,
                                                                        SAMPLE_RATE),
    }
    if arch == "ResNetSE34V2":
        buffers["torchfb.0.flipped_filter"] = torch.tensor([[[-PRE_EMPHASIS, 1.0]]])
    return buffers


def _check_frontend(model: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], arch: str, n_mels: int,
                    path: Path) -> list[str]:
    """The file's front-end buffers must hold what voxfast's vct front end computes, or the embeddings would
    differ; a missing or empty one (older torchaudio built the mel banks lazily) is assumed and noted."""
    notes: list[str] = []
    for key, want in buffers.items():
        got = model.get(key)
        if got is None or got.numel() == 0:
            what = f"n_mels {n_mels}" if key.endswith("fb") and arch == "ResNetSE34L" else "the published setting"
            notes.append(f"__S__.{key} is not in the file; voxceleb_trainer's current setting was assumed ({what})")
            continue
        if tuple(got.shape) != tuple(want.shape):
            raise VoxfastError(f"{path}: front-end buffer __S__.{key} is {tuple(got.shape)}; voxceleb_trainer's "
                               f"{arch} front end has {tuple(want.shape)}; nothing was written")
        diff = float((got.float() - want).abs().max())
        if diff > 1e-5:
            raise VoxfastError(f"{path}: front-end buffer __S__.{key} differs from voxceleb_trainer's {arch} front end "
                               f"(max |diff| {diff:.3g}): the model was trained on features voxfast does not compute; "
                               "nothing was written")
    return notes


def _rules(arch: str) -> list[tuple[str, str]]:
    """voxceleb_trainer's names -> voxfast's (SEResNet: stem, blocks numbered across stages, pool, embed)."""
    rules = [(r"^conv1\.", "stem.0."), (r"^bn1\.", f"stem.{ARCHS[arch].stem_bn}.")]
    first = 0
    for stage, depth in enumerate(LAYERS, start=1):
        rules += [(rf"^layer{stage}\.{j}\.", f"blocks.{first + j}.") for j in range(depth)]
        first += depth
    rules += _BLOCK_RULES
    if arch == "ResNetSE34L":
        rules += [(r"^sap_linear\.", "pool.attention.0."), (r"^attention$", "pool.attention.2.weight")]
    else:
        rules += [(r"^attention\.", "pool.attention.")]
    return [*rules, (r"^fc\.", "embed.")]


def _check_config(config: Path, arch: str, n_mels: int, n_out: int) -> None:
    """`config` is a model name or voxceleb_trainer's YAML config: checked against the tensors, never obeyed
    (the tensors decide; a config that disagrees means the wrong file or the wrong config)."""
    spec = ARCHS[arch]
    if not config.is_file():
        names = {n.lower() for n in ARCHS} | {a.name for a in ARCHS.values()}
        if str(config).lower() not in names:
            raise VoxfastError(f"--config {config}: neither a file nor a model name ({', '.join(sorted(names))})")
        if str(config).lower() not in (arch.lower(), spec.name):
            raise VoxfastError(f"--config {config}: the .model file holds {arch} ({spec.name})")
        return
    try:
        given = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise VoxfastError(f"{config}: not a readable voxceleb_trainer YAML config ({exc})") from exc
    if not isinstance(given, Mapping):
        raise VoxfastError(f"{config}: not a voxceleb_trainer YAML config (it holds a {type(given).__name__})")
    want = {"model": arch, "encoder_type": spec.encoder, "n_mels": n_mels, "nOut": n_out, "log_input": True}
    wrong = [f"{k} {given[k]!r} (the .model file: {v!r})" for k, v in want.items() if k in given and given[k] != v]
    if wrong:
        raise VoxfastError(f"{config}: does not describe the model in the .model file: {'; '.join(wrong)}"
                           + (" (voxfast reproduces log-mel inputs only)" if given.get("log_input") is False else ""))
