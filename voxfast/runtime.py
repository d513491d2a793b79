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
    `cuda` mean GPU LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(name)


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
