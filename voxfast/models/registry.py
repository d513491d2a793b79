"""The model registry: an explicit name -> builder dict filled by ``@register_model``.

Configs name models by string; an unknown name is a user error that lists what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from voxfast.errors import VoxfastError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a variant function under its own name; names must be unique."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")  # a programming error, not user input
    _MODELS[fn.__name__] = fn
    return fn


def available_models() -> list[str]:
    _ensure_loaded()
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises a VoxfastError listing the available ones."""
    _ensure_loaded()
    if name not in _MODELS:
        raise VoxfastError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))} (set model.name)")
    return _MODELS[name](**kwargs)


def _ensure_loaded() -> None:
    from voxfast.models import ecapa, se_resnet  # noqa: F401  (registers its variants on import)
