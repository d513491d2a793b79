"""SpeechBrain speaker models (``speechbrain/spkrec-ecapa-voxceleb``): ``embedding_model.ckpt`` + ``hyperparams.yaml``.

SpeechBrain's ``EncoderClassifier.encode_batch`` computes ``compute_features`` (``Fbank``), ``mean_var_norm``
(``InputNormalization``) and ``embedding_model`` (``ECAPA_TDNN``); the checkpoint holds only the last one's state
dict, so the front end's settings and the network's size come from ``hyperparams.yaml``. Every setting of the three
that changes the embedding is read there and must be one voxfast reproduces (``speechbrain_fbank``: Fbank with its
default STFT and mel settings, sentence mean normalisation without variance scaling; ``ecapa_tdnn_sb``: channels
``[1024, 1024, 1024, 1024, 3072]`` with SpeechBrain's default kernels, dilations, scales and ReLU); anything else is
refused naming the key, rather than imported into a model that would compute other embeddings.

hyperparams.yaml is HyperPyYAML (``!new:``, ``!name:``, ``!ref <key>`` tags). It is read with yaml's safe loader
taught to keep any ``!`` tag as data: nothing is imported or instantiated, and a plain ``!ref <key>`` (the published
file's ``input_size: !ref <n_mels>``) is looked up in the file. ``mean_var_norm_emb`` (applied only by
``encode_batch(normalize=True)``, not by SpeechBrain's verification) and the classifier are not imported.

Tensor names: voxfast's ``ecapa_tdnn_sb`` is ``voxfast.models.ecapa.ECAPATDNN`` with SpeechBrain's settings, so
`NAMES` maps SpeechBrain's module tree onto that one: its ``blocks.0`` is the ``stem`` and ``blocks.1-3`` are
``blocks.0-2``, whose ``tdnn1`` / ``res2net_block.blocks`` / ``tdnn2`` / ``se_block.conv1``, ``conv2`` are
``body.0`` / ``body.1.convs`` / ``body.2`` / ``body.3.gate.0``, ``gate.2``; ``asp`` is ``pool`` (its ``conv`` the
attention's ``score``), ``asp_bn`` is ``pool_bn`` and ``fc`` is ``embed``; SpeechBrain's ``Conv1d`` / ``BatchNorm1d``
wrappers hold the torch module as ``conv`` / ``norm``, so ``X.conv.conv.weight`` is ``X.conv.weight`` and
``X.norm.norm.weight`` is ``X.bn.weight``. For example ``blocks.1.res2net_block.blocks.0.norm.norm.running_mean`` is
``blocks.0.body.1.convs.0.bn.running_mean``. The file is checked against the expected names and shapes first (the
model's names mapped back by `NAMES`), so a problem is named as the file names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from voxfast.config import load_config
from voxfast.errors import VoxfastError
from voxfast.interop import Imported
from voxfast.interop.common import listing, load_foreign, rename, require_fit
from voxfast.models.registry import create_model

MODEL = "ecapa_tdnn_sb"
FRONTEND = "speechbrain_fbank"
CHECKPOINT = "embedding_model.ckpt"
HYPERPARAMS = "hyperparams.yaml"

FBANK = "speechbrain.lobes.features.Fbank"
NORM = "speechbrain.processing.features.InputNormalization"
ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"

# (SpeechBrain's, voxfast's) part of a tensor name, replaced in this order; a part starting with "." may stand
# anywhere in a name, any other starts it. Read backwards (voxfast's -> SpeechBrain's, last pair first), the same
# pairs give the names the checkpoint must hold; `_expected_shapes` checks that both ways agree.
NAMES = [
    ("blocks.0.", "stem."),  # SpeechBrain's blocks[0] is the TDNN stem, blocks[1:] the SE-Res2Net blocks
    ("blocks.1.", "blocks.0."),
    ("blocks.2.", "blocks.1."),
    ("blocks.3.", "blocks.2."),
    (".tdnn1.", ".body.0."),  # SERes2NetBlock -> ecapa.SERes2Block's body: TDNN, Res2Block, TDNN, SEBlock1d
    (".res2net_block.blocks.", ".body.1.convs."),
    (".tdnn2.", ".body.2."),
    (".se_block.conv1.conv.", ".body.3.gate.0."),
    (".se_block.conv2.conv.", ".body.3.gate.2."),
    ("asp.conv.conv.", "pool.score."),  # the attention's score conv
    ("asp.tdnn.", "pool.tdnn."),
    ("asp_bn.norm.", "pool_bn."),
    ("fc.conv.", "embed."),
    (".conv.conv.", ".conv."),  # SpeechBrain's Conv1d / BatchNorm1d wrappers -> the torch module inside them
    (".norm.norm.", ".bn."),
]


def _part(part: str) -> str:
    """A name part as a regex: anywhere when it starts with ".", else at the start of the name."""
    return re.escape(part) if part.startswith(".") else "^" + re.escape(part)


RULES = [(_part(theirs), ours) for theirs, ours in NAMES]  # SpeechBrain's names -> voxfast's
_BACK = [(_part(ours), theirs) for theirs, ours in reversed(NAMES)]  # voxfast's names -> SpeechBrain's

_REQUIRED = object()  # an argument SpeechBrain's class has no default for


@dataclass(frozen=True)
class _Arg:
    """One constructor argument: SpeechBrain's default, and the values voxfast reproduces (None: any)."""

    default: Any
    allowed: tuple[Any, ...] | None = None
    why: str = ""


# Each class's arguments. An argument not listed is refused (a newer SpeechBrain's option voxfast does not know).
FBANK_ARGS = {
    "n_mels": _Arg(40),
    "sample_rate": _Arg(16000),
    "deltas": _Arg(False, (False,), "voxfast's front end has no delta features"),
    "context": _Arg(False, (False,), "voxfast's front end adds no context frames"),
    "requires_grad": _Arg(False, (False,), "learned filterbanks are not in embedding_model.ckpt"),
    "f_min": _Arg(0, (0,)),
    "f_max": _Arg(None),  # None or sample_rate // 2: checked once sample_rate is known
    "n_fft": _Arg(400, (400,)),
    "win_length": _Arg(25, (25,)),
    "hop_length": _Arg(10, (10,)),
    "filter_shape": _Arg("triangular", ("triangular",)),
    # no effect on embeddings: context frames are off, the filters frozen, random filter changes only in training
    "left_frames": _Arg(5),
    "right_frames": _Arg(5),
    "param_change_factor": _Arg(1.0),
    "param_rand_factor": _Arg(0.0),
}
NORM_ARGS = {
    "norm_type": _Arg("global", ("sentence",), "voxfast reproduces per-utterance ('sentence') normalisation only; "
                      "'global' statistics live in another file"),
    "mean_norm": _Arg(True, (True,)),
    "std_norm": _Arg(True, (False,), "the published model subtracts the mean only, as voxfast's speechbrain_fbank"),
    "length_dim": _Arg(1, (1,)),
    # no effect on sentence normalisation without variance scaling, or on whole utterances
    "avg_factor": _Arg(None),
    "requires_grad": _Arg(False),
    "update_until_epoch": _Arg(3),
    "avoid_padding_norm": _Arg(False),
    "epsilon": _Arg(1e-10),
    "device": _Arg("cpu"),
}
ECAPA_ARGS = {
    "input_size": _Arg(_REQUIRED),
    "lin_neurons": _Arg(192),
    "channels": _Arg([512, 512, 512, 512, 1536], ([1024, 1024, 1024, 1024, 3072],),
                     "voxfast's ecapa_tdnn_sb is the published C=1024 model"),
    "kernel_sizes": _Arg([5, 3, 3, 3, 1], ([5, 3, 3, 3, 1],)),
    "dilations": _Arg([1, 2, 3, 4, 1], ([1, 2, 3, 4, 1],)),
    "attention_channels": _Arg(128, (128,)),
    "res2net_scale": _Arg(8, (8,)),
    "se_channels": _Arg(128, (128,)),
    "global_context": _Arg(True, (True,)),
    "groups": _Arg([1, 1, 1, 1, 1], ([1, 1, 1, 1, 1],)),
    "activation": _Arg("torch.nn.ReLU", ("torch.nn.ReLU",)),
    "dropout": _Arg(0.0),  # inactive when embedding
    "device": _Arg("cpu"),
}


@dataclass(frozen=True)
class _Tagged:
    """A HyperPyYAML tagged node (``!new:torch.nn.ReLU``, ``!ref <n_mels>``...), kept as data."""

    tag: str
    value: Any


class _HyperPyYAMLLoader(yaml.SafeLoader):
    """yaml's safe loader that keeps ``!``-tagged nodes as `_Tagged` instead of refusing them."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return _Tagged("!" + suffix, value)


_HyperPyYAMLLoader.add_multi_constructor("!", _construct_tagged)


def convert(src: Path, config: Path | None) -> Imported:
    """SpeechBrain's ``embedding_model.ckpt`` (or its folder) and ``hyperparams.yaml`` (`config`, else beside it)
    as the voxfast ``ecapa_tdnn_sb`` whose embeddings equal ``EncoderClassifier.encode_batch``'s."""
    ckpt, hparams = _files(src, config)
    n_mels, sample_rate, embed_dim, notes = _settings(hparams)
    source = load_foreign(ckpt, f"SpeechBrain's {CHECKPOINT}")
    not_tensors = [str(k) for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if not_tensors or not source:
        raise VoxfastError(f"{ckpt}: not a SpeechBrain embedding_model state dict (expected tensors; found "
                           f"{listing(not_tensors or list(source))}); nothing was written")
    require_fit(source, _expected_shapes(n_mels, embed_dim), ckpt, f"the ECAPA-TDNN {hparams.name} describes")
    state = rename(source, RULES, ckpt)
    cfg = load_config(None, [f"model.name={MODEL}", f"model.frontend={FRONTEND}", f"model.n_mels={n_mels}",
                             f"model.embed_dim={embed_dim}", f"data.sample_rate={sample_rate}"])
    description = (f"SpeechBrain ECAPA-TDNN ({hparams.name}: channels [1024, 1024, 1024, 1024, 3072], lin_neurons "
                   f"{embed_dim}; Fbank n_mels {n_mels} at {sample_rate} Hz, sentence mean normalisation)")
    return Imported(cfg, state, [ckpt, hparams], description, notes)


def _files(src: Path, config: Path | None) -> tuple[Path, Path]:
    """(checkpoint, hyperparams): SRC is the checkpoint or its folder; hyperparams.yaml is `config` or beside it."""
    if src.is_dir():
        ckpt = src / CHECKPOINT
        if not ckpt.is_file():
            found = ", ".join(sorted(p.name for p in src.glob("*.ckpt"))) or "no .ckpt files"
            raise VoxfastError(f"{src}: no {CHECKPOINT} in this folder (found {found}); pass SpeechBrain's embedding "
                               "model checkpoint or the folder holding it")
    else:
        ckpt = src
    if config is not None:
        if not config.is_file():
            raise VoxfastError(f"--config {config}: not found (pass the model's {HYPERPARAMS})")
        return ckpt, config
    hparams = ckpt.parent / HYPERPARAMS
    if not hparams.is_file():
        raise VoxfastError(f"{hparams}: not found; SpeechBrain's checkpoint does not say which front end and model "
                           f"size it needs: pass the model's {HYPERPARAMS} with --config")
    return ckpt, hparams


def _settings(path: Path) -> tuple[int, int, int, list[str]]:
    """(n_mels, sample_rate, embed_dim, notes) from hyperparams.yaml, refusing what voxfast cannot reproduce."""
    try:
        doc = yaml.load(path.read_text(), Loader=_HyperPyYAMLLoader)  # a SafeLoader: builds no objects
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise VoxfastError(f"{path}: not a readable HyperPyYAML file ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, Mapping):
        raise VoxfastError(f"{path}: not a SpeechBrain hyperparams file (a {type(doc).__name__}, not a mapping)")
    fbank = _component(doc, "compute_features", FBANK, FBANK_ARGS, path)
    _component(doc, "mean_var_norm", NORM, NORM_ARGS, path)
    ecapa = _component(doc, "embedding_model", ECAPA, ECAPA_ARGS, path)
    n_mels, sample_rate, embed_dim = fbank["n_mels"], fbank["sample_rate"], ecapa["lin_neurons"]
    for key, value in (("compute_features.n_mels", n_mels), ("compute_features.sample_rate", sample_rate),
                       ("embedding_model.lin_neurons", embed_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise VoxfastError(f"{path}: {key} is {value!r}; a positive integer is needed")
    if fbank["f_max"] is not None and not _same(fbank["f_max"], sample_rate // 2):
        raise VoxfastError(f"{path}: compute_features.f_max is {fbank['f_max']!r}; voxfast's speechbrain_fbank "
                           f"reproduces the default (sample_rate // 2 = {sample_rate // 2}) only")
    if ecapa["input_size"] != n_mels:
        raise VoxfastError(f"{path}: embedding_model.input_size is {ecapa['input_size']!r} but compute_features."
                           f"n_mels is {n_mels}; not one consistent model")
    notes = []
    if ecapa["dropout"]:
        notes.append(f"embedding_model.dropout {ecapa['dropout']} is not applied when voxfast trains the model "
                     "further (it is inactive when embedding)")
    if fbank["param_rand_factor"]:
        notes.append(f"compute_features.param_rand_factor {fbank['param_rand_factor']} (random filter changes in "
                     "SpeechBrain's training) is not applied when voxfast trains the model further")
    return n_mels, sample_rate, embed_dim, notes


def _component(doc: Mapping[str, Any], key: str, cls: str, args: Mapping[str, _Arg], path: Path) -> dict[str, Any]:
    """The keyword arguments of ``key: !new:cls`` with SpeechBrain's defaults filled in, each checked."""
    node = doc.get(key)
    if node is None:
        raise VoxfastError(f"{path}: no {key!r}; SpeechBrain's EncoderClassifier needs compute_features, "
                           "mean_var_norm and embedding_model (is this the model's hyperparams.yaml?)")
    if not isinstance(node, _Tagged) or node.tag != f"!new:{cls}":
        found = node.tag if isinstance(node, _Tagged) else repr(node)
        raise VoxfastError(f"{path}: {key} is {found}; voxfast imports SpeechBrain's ECAPA speaker model, whose {key} "
                           f"is !new:{cls}")
    given = node.value if node.value not in (None, "") else {}
    if not isinstance(given, Mapping):
        raise VoxfastError(f"{path}: {key} passes positional arguments to {cls}; voxfast reads keyword arguments only")
    unknown = [f"{key}.{name}" for name in given if name not in args]
    if unknown:
        raise VoxfastError(f"{path}: {', '.join(unknown)}: not an argument voxfast knows for {cls}, so it cannot say "
                           "the model computes what voxfast would")
    values: dict[str, Any] = {}
    for name, arg in args.items():
        where = f"{key}.{name}"
        value = _resolve(given[name], doc, where, path) if name in given else arg.default
        if value is _REQUIRED:
            raise VoxfastError(f"{path}: {where} is missing; SpeechBrain's {cls} requires it")
        if name == "activation" and name in given:
            value = _class_name(value, where, path)
        values[name] = value
        if arg.allowed is not None and not any(_same(value, a) for a in arg.allowed):
            why = f" ({arg.why})" if arg.why else ""
            shown = " or ".join(repr(a) for a in arg.allowed)
            raise VoxfastError(f"{path}: {where} is {value!r}; voxfast reproduces {shown} only{why}")
    return values


def _resolve(value: Any, doc: Mapping[str, Any], where: str, path: Path, depth: int = 0) -> Any:
    """A value with HyperPyYAML's ``!ref <key>`` / ``!copy <key>`` looked up (dotted keys too), lists element-wise."""
    if depth > 20:
        raise VoxfastError(f"{path}: {where}: the !ref chain does not end (a reference loop?)")
    if isinstance(value, list):
        return [_resolve(v, doc, where, path, depth + 1) for v in value]
    if not isinstance(value, _Tagged) or value.tag not in ("!ref", "!copy"):
        return value
    found = re.fullmatch(r"\s*<([^<>\s]+)>\s*", str(value.value))
    if found is None:
        raise VoxfastError(f"{path}: {where} is {value.tag} {value.value!r}, an expression voxfast does not evaluate; "
                           "write the value itself")
    target: Any = doc
    for part in found.group(1).split("."):
        if not isinstance(target, Mapping) or part not in target:
            raise VoxfastError(f"{path}: {where} refers to <{found.group(1)}>, which the file does not define")
        target = target[part]
    return _resolve(target, doc, where, path, depth + 1)


def _class_name(value: Any, where: str, path: Path) -> str:
    """``!name:torch.nn.ReLU`` (or ``!new:``) -> ``torch.nn.ReLU``."""
    if isinstance(value, _Tagged) and value.tag.startswith(("!name:", "!new:")) and value.value in (None, "", {}):
        return value.tag.split(":", 1)[1]
    raise VoxfastError(f"{path}: {where} is {value!r}; voxfast reproduces !name:torch.nn.ReLU only")


def _same(value: Any, allowed: Any) -> bool:
    """Equal as SpeechBrain would use it: 25 == 25.0, but False is not 0 and "25" is not 25."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    if isinstance(value, list) and isinstance(allowed, list):
        return len(value) == len(allowed) and all(_same(v, a) for v, a in zip(value, allowed, strict=True))
    if isinstance(value, int | float) and isinstance(allowed, int | float):
        return value == allowed
    return type(value) is type(allowed) and value == allowed


def _expected_shapes(n_mels: int, embed_dim: int) -> dict[str, tuple[int, ...]]:
    """SpeechBrain's tensor names and shapes for the model voxfast builds (on the meta device: no memory)."""
    with torch.device("meta"):
        model = create_model(MODEL, n_mels=n_mels, embed_dim=embed_dim)
    shapes = {}
    for key, value in model.state_dict().items():
        theirs = _renamed(key, _BACK)
        if _renamed(theirs, RULES) != key:  # a programming error: NAMES does not read the same both ways
            raise RuntimeError(f"NAMES maps {key!r} to SpeechBrain's {theirs!r}, which maps back elsewhere")
        shapes[theirs] = tuple(value.shape)
    return shapes


def _renamed(key: str, rules: list[tuple[str, str]]) -> str:
    """`key` through every (regex, replacement) of `rules` in order, as `rename` maps a checkpoint's names."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key
