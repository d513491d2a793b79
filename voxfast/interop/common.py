"""What every format converter shares: safe loading, tensor renaming and the exact-fit check."""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from voxfast.errors import VoxfastError
from voxfast.train.checkpoint import load_checkpoint


def load_foreign(path: Path, what: str) -> dict[str, Any]:
    """A checkpoint of another toolkit, loaded with ``weights_only=True`` (never runs code from the file)."""
    if not path.is_file():
        raise VoxfastError(f"{path}: not found ({what})")
    state = load_checkpoint(path)
    if not isinstance(state, Mapping):
        raise VoxfastError(f"{path}: holds a {type(state).__name__}, not a dict of tensors ({what})")
    return dict(state)


def rename(state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]], src: Path,
           drop: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Map the source's tensor names onto voxfast's: each key goes through every (regex, replacement) rule in
    order; keys matching a `drop` regex (e.g. a training head, BatchNorm counters) are left out."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(re.fullmatch(d, key) for d in drop):
            continue
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new)
        if new in out:
            raise VoxfastError(f"{src}: tensors {key!r} and another both map to {new!r}; not a checkpoint of the "
                               "architecture this format expects")
        out[new] = value
    return out


def require_fit(found: Mapping[str, torch.Tensor], expected: Mapping[str, Sequence[int]], src: Path, what: str,
                ignore: Container[str] = (), shown: Callable[[str], str] = str) -> None:
    """The one exact-fit check of every format: raise, naming up to 5 of each (as `shown` spells a key, e.g. with
    the file's own prefix), when a tensor of `expected` is missing or misshaped in `found`, or `found` holds one
    that is neither expected nor in `ignore`; the message says nothing was written."""
    missing = [shown(k) for k in expected if k not in found]
    unexpected = [shown(k) for k in found if k not in expected and k not in ignore]
    shapes = [f"{shown(k)} {tuple(found[k].shape)} (expected {tuple(v)})" for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v)]
    problems = [f"{len(items)} {name}: {listing(items)}"
                for name, items in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", shapes))
                if items]
    if problems:
        raise VoxfastError(f"{src}: does not match {what} ({'; '.join(problems)}); nothing was written")


def listing(items: Sequence[str]) -> str:
    """Up to 5 names, and how many there are when more."""
    return ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")


def load_exact(model: nn.Module, state: Mapping[str, torch.Tensor], src: Path) -> None:
    """Load `state` into `model` only when it fits exactly (:func:`require_fit`); nothing is loaded otherwise."""
    own = model.state_dict()
    require_fit(state, {k: v.shape for k, v in own.items()}, src, "the model it should hold (is it the architecture "
                "and size the format and its config name?)")
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def seeded_state(shapes: Sequence[tuple[str, Sequence[int]]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic, well-scaled weights for a (source key, shape) list: the parity fixtures of `tools/` give a
    reference implementation these weights, and the tests rebuild them from the seed instead of shipping
    megabytes of tensors. numpy's PCG64 streams are stable across versions; each tensor draws from
    (seed, its position). Scales keep activations O(1) through deep stacks: weights ~ N(0, 1/fan_in), BatchNorm
    near identity, biases and running statistics small; integer counters (num_batches_tracked) are 0."""
    import numpy as np

    out: dict[str, torch.Tensor] = {}
    for i, (key, shape) in enumerate(shapes):
        shape = tuple(int(s) for s in shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
            continue
        draw = np.random.default_rng([seed, i]).standard_normal(shape)
        if key.endswith("running_var"):
            values = 1.0 + 0.2 * np.abs(draw)
        elif len(shape) <= 1 and key.endswith("weight"):  # norm scales
            values = 1.0 + 0.1 * draw
        elif len(shape) <= 1:  # biases, running means
            values = 0.1 * draw
        else:
            values = draw / np.sqrt(float(np.prod(shape[1:])))
        out[key] = torch.from_numpy(values.astype(np.float32))
    return out
