"""`voxfast bench-model`: training throughput of each registered model under each speed switch.

Forward plus backward on random 2 s waveforms (front end included), timed after warm-up iterations,
for plain fp32 and for autocast, channels_last and both, with the speedup over plain fp32 measured in
the same run. Autocast uses bf16 on CPUs and fp16 on CUDA, whatever the CPU supports natively: the
point is to show what each switch does on this machine.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass

import torch

from voxfast.audio.features import crop_samples
from voxfast.errors import VoxfastError
from voxfast.models.registry import available_models, create_model

MODES = ("fp32", "autocast", "channels_last", "channels_last+autocast")


@dataclass
class ModelBench:
    model: str
    params_m: float
    mode: str
    samples_per_s: float
    speedup: float


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(name: str, mode: str, device: torch.device, batch: int, frames: int, seconds: float) -> float:
    """Samples per second of forward + backward for one model and mode."""
    torch.manual_seed(0)
    model = create_model(name).to(device).train()
    if "channels_last" in mode:
        model = model.to(memory_format=torch.channels_last)
    wave = torch.randn(batch, crop_samples(frames), device=device) * 0.1
    use_amp = "autocast" in mode

    def step() -> None:
        with _autocast(device, use_amp):
            loss = model(wave).float().pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: allocator, oneDNN / cuDNN algorithm choice
        step()
    _sync(device)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        step()
        count += 1
    _sync(device)
    return count * batch / (time.perf_counter() - start)


def run_model_bench(models: list[str] | None, device: torch.device, batch: int, frames: int, seconds: float,
                    modes: tuple[str, ...] = MODES) -> list[ModelBench]:
    unknown = sorted(set(models or ()) - set(available_models())) + sorted(set(modes) - set(MODES))
    if unknown:
        raise VoxfastError(f"unknown model or mode {', '.join(unknown)}; models: {', '.join(available_models())}; "
                           f"modes: {', '.join(MODES)}")
    results = []
    for name in models or available_models():
        params = sum(p.numel() for p in create_model(name).parameters()) / 1e6
        base = None
        for mode in modes:
            sps = time_model(name, mode, device, batch, frames, seconds)
            base = base or sps
            results.append(ModelBench(name, round(params, 3), mode, sps, sps / base))
    return results


def format_model_results(results: list[ModelBench], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(r) for r in results], indent=2)
    lines = [f"{'model':<18} {'params (M)':>10} {'mode':<24} {'samples/s':>10} {'speedup':>8}"]
    lines += [f"{r.model:<18} {r.params_m:>10.3f} {r.mode:<24} {r.samples_per_s:>10.1f} {r.speedup:>7.2f}x"
              for r in results]
    return "\n".join(lines)
