"""Optimizer construction, and an optimizer step that a non-finite gradient skips without a host sync.

Fused optimizers (one kernel for all parameters) are used where the installed torch has them for the
device: besides being faster, they take ``optimizer.found_inf`` and skip a step on the device, so the
training loop never waits on the GPU to learn whether the gradients were finite.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from voxfast.config import TrainConfig
from voxfast.train.schedule import peak_lr

log = logging.getLogger(__name__)

_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: `weight_decay` on matrices and kernels, none on 1-D tensors (biases, norm scales).

    Decaying norm scales and biases only pulls them towards 0 without regularising anything useful.
    Both groups are always present, even when empty, so the optimizer state layout (and checkpoints)
    do not depend on the model.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _hyper_parameters(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.optimizer == "sgd":
        # Nesterov needs momentum > 0 (torch raises otherwise); momentum 0 is plain SGD.
        return {"momentum": cfg.momentum, "nesterov": cfg.momentum > 0}
    if cfg.optimizer in ("adam", "adamw"):
        return {"betas": (cfg.momentum, 0.999)}
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected adamw, adam or sgd)")


@functools.cache
def supports_fused(optimizer: str, device: torch.device) -> bool:
    """Whether the fused `optimizer` ("sgd", "adam", "adamw") builds and steps, found_inf included, on `device`.

    Tried on a throw-away parameter rather than inferred from the torch version: fused kernels exist
    for some devices and builds only, and a failure should cost a slower optimizer, not the run.
    """
    cls = _OPTIMIZERS[optimizer]
    kwargs: dict[str, Any] = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
    try:
        p = nn.Parameter(torch.zeros(4, device=device))
        p.grad = torch.zeros_like(p)
        opt = cls([p], lr=0.0, fused=True, **kwargs)
        step_skipping_nonfinite(opt, torch.zeros(1, device=device))
        step_skipping_nonfinite(opt, torch.ones(1, device=device))
    except Exception as exc:  # any failure (unsupported device, dtype, build) means: use the default
        log.info("fused %s not available on %s (%s); using the default implementation", optimizer, device, exc)
        return False
    return True


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `cfg` asks for over `model`'s trainable parameters, at the peak LR, fused if possible.

    SGD uses Nesterov momentum `cfg.momentum` (voxceleb_trainer, WeSpeaker); Adam and AdamW use it as
    beta1. Weight decay follows :func:`param_groups`. The LR starts at :func:`peak_lr`; the trainer
    multiplies it by the schedule each step. Fused is chosen only when every parameter is a floating
    point tensor on `device`, since the fused kernels reject anything else at the first step.
    """
    groups = param_groups(model, cfg.weight_decay)
    kwargs = _hyper_parameters(cfg)
    params = [p for g in groups for p in g["params"]]
    on_device = all(p.device.type == device.type and p.is_floating_point() for p in params)
    if on_device and supports_fused(cfg.optimizer, torch.device(device)):
        kwargs["fused"] = True
    return _OPTIMIZERS[cfg.optimizer](groups, lr=peak_lr(cfg), **kwargs)


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    # Only the optimizers whose fused found_inf handling was checked (Adam/AdamW roll back their step
    # counters, SGD has none); every group must be fused, as the others assert found_inf is None.
    return (isinstance(optimizer, (torch.optim.Adam, torch.optim.SGD))
            and getattr(optimizer, "_step_supports_amp_scaling", False)
            and all(g.get("fused") for g in optimizer.param_groups))


def _init_sgd_momentum(optimizer: torch.optim.SGD) -> bool:
    """Give fused SGD zero momentum buffers where it has none yet; False where that would change the step.

    Fused SGD's first step allocates the buffers uninitialised and lets the kernel fill them with the
    gradient; a skipped first step leaves that garbage in the state (seen as 1e35 on CPU, torch 2.14).
    A zero buffer gives the same first step (``0 * m + g = g``) provided dampening is 0.
    """
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            if p.grad is None or optimizer.state[p].get("momentum_buffer") is not None:
                continue
            if group["dampening"] != 0:
                return False
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
    return True


def step_skipping_nonfinite(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()``, unless `found_inf` (one element; nonzero, inf or NaN = skip) says the gradients are bad.

    A skipped step leaves parameters and optimizer state (moments, momentum buffers, step counts) as
    they were. For fused SGD/Adam/AdamW the decision is made on the device, as GradScaler does: the
    flag goes in as ``optimizer.found_inf`` and the kernels skip the update, Adam subtracting it from
    the step counters it has just incremented, so the host never waits for the GPU. Other optimizers
    read the flag on the host (one sync per step).
    """
    if not _is_fused(optimizer) or (isinstance(optimizer, torch.optim.SGD) and not _init_sgd_momentum(optimizer)):
        if not found_inf.item():
            optimizer.step()
        return
    # Exactly 0.0 or 1.0, 0-d, float32, like GradScaler's: the fused kernels skip only when the flag
    # equals 1 (2.0 or inf would step), fused Adam then does ``steps -= found_inf`` (so any other value
    # corrupts the step counts), and that in-place subtraction on 0-d counters rejects a [1]-shaped flag.
    flag = (found_inf.reshape(()) != 0).to(torch.float32)
    optimizer.found_inf = flag  # type: ignore[attr-defined]
    optimizer.grad_scale = None  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]
        del optimizer.grad_scale  # type: ignore[attr-defined]
