"""The model registry: an explicit name -> builder dict filled by ``@register_model``, grouped by task.

Configs name models by string; an unknown name is a user error that lists what exists. Every model of every
task (speaker embedders, image and EEG classifiers) is registered here, so `voxfast models` shows them all and
a config typo gets the same message whichever task it is for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from torch import nn

from voxfast.errors import ConfigError

TASK_MODEL_KEYS = {"speaker": "model.name", "image": "image.model", "eeg": "eeg.model"}  # the config key per task

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TASK_OF: dict[str, str] = {}

Builder = Callable[..., nn.Module]


@overload
def register_model(fn: Builder) -> Builder: ...
@overload
def register_model(*, task: str) -> Callable[[Builder], Builder]: ...
def register_model(fn: Builder | None = None, *, task: str = "speaker") -> Any:
    """Register a variant function under its own name (a speaker embedder unless `task` says otherwise).

    `@register_model` and `@register_model(task="image")` both work; names must be unique across tasks.
    """
    if task not in TASK_MODEL_KEYS:
        raise ValueError(f"unknown task {task!r} for a model; one of {list(TASK_MODEL_KEYS)}")  # a programming error

    def register(f: Builder) -> Builder:
        if f.__name__ in _MODELS:
            raise ValueError(f"model {f.__name__!r} is registered twice")  # a programming error, not user input
        _MODELS[f.__name__] = f
        _TASK_OF[f.__name__] = task
        return f

    return register(fn) if fn is not None else register


def available_models(task: str | None = "speaker") -> list[str]:
    """Registered names for one task (speaker embedders by default), or every name when `task` is None."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if task is None or _TASK_OF[n] == task)


def models_by_task() -> dict[str, list[str]]:
    """{task: sorted model names}, in the order of TASK_MODEL_KEYS, for `voxfast models`."""
    return {task: available_models(task) for task in TASK_MODEL_KEYS}


def create_model(name: str, task: str = "speaker", **kwargs: Any) -> nn.Module:
    """Build a registered model of `task`; an unknown name raises a ConfigError naming the key and the choices."""
    check_model(name, task)
    return _MODELS[name](**kwargs)


def check_model(name: str, task: str) -> None:
    """Raise a ConfigError unless `name` is a registered model of `task` (early, before any data is read)."""
    _ensure_loaded()
    if _TASK_OF.get(name) == task:
        return
    where = f" for the {task} task (it is registered for the {_TASK_OF[name]} task)" if name in _MODELS else ""
    raise ConfigError(f"unknown model {name!r}{where}; available: {', '.join(available_models(task))} "
                      f"(set {TASK_MODEL_KEYS[task]})")


def _ensure_loaded() -> None:
    from voxfast.models import ecapa, ecapa_sb, eeg, image, se_resnet  # noqa: F401  (each registers its variants)
