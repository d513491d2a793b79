"""What the trainer, evaluation, the API and the benchmarks share about the machine they run on.

Device resolution, precision and autocast, the process-wide backend switches and seeding. It sits at the bottom
of the package (it imports only `errors`, `config` and torch), so extracting embeddings or loading a model for
`voxfast.load()` never imports the training loop.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from voxfast.config import TrainConfig
from voxfast.errors import VoxfastError


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU; under torchrun (`local_rank` given) `auto` and
    `cuda` mean GPU LOCAL_RANK.

    The one place a device string is checked (`voxfast.load`, extraction, training and the benchmarks all come
    here): a typo or a GPU this process cannot see fails now, naming the string and the fix, instead of as a
    torch error deep inside the first forward pass or checkpoint load.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise VoxfastError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        _check_cuda(name, device, local_rank)
    elif device.type != "cpu" and not _is_current_accelerator(device):
        raise VoxfastError(f"device {name!r} is not available: this torch sees no {device.type} device; use "
                           "device='cpu' or 'auto'")
    return device


def _check_cuda(name: str, device: torch.device, local_rank: int | None) -> None:
    """A CUDA device this process can use, or why not: no CUDA in this torch build, no GPU visible, or an index
    past the visible ones (under torchrun: more processes per node than GPUs)."""
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "this torch sees no GPU (check the driver and CUDA_VISIBLE_DEVICES)")
        raise VoxfastError(f"device {name!r} is not available: {why}; use device='cpu' or 'auto'")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        fix = (f"start torchrun with --nproc-per-node at most {count}" if local_rank is not None
               and device.index == local_rank else f"use cuda:0 to cuda:{count - 1}, 'cuda' or 'auto'")
        raise VoxfastError(f"device {name!r} is not available: this machine shows {count} GPU(s) and "
                           f"{device} is past them; {fix}")


def _is_current_accelerator(device: torch.device) -> bool:
    """Whether another accelerator type (mps, xpu...) is the one this torch build can use."""
    if not torch.accelerator.is_available():
        return False
    current = torch.accelerator.current_accelerator()
    return current is not None and current.type == device.type


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` picks bf16 (or fp16) on CUDA, and bf16 on a CPU only when it has native bf16 (AVX512-BF16/AMX).

    On CPUs without it, bf16 autocast is emulated and slower than fp32, so auto stays in fp32 there.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    capability = torch.backends.cpu.get_cpu_capability()
    return "bf16" if ("BF16" in capability or "AMX" in capability) else "fp32"


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for a resolved precision (bf16/fp16); fp32 adds none, so a caller's own autocast still applies."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise VoxfastError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def configure_backends(cfg: TrainConfig) -> None:
    """TF32, cuDNN autotuning and deterministic algorithms: process-wide switches, set once per run."""
    precision = "tf32" if cfg.tf32 and not cfg.deterministic else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (numpy takes seeds below 2**32 only)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
