"""Export the embedding network of a training checkpoint: waveform (B, T) in, embedding (B, D) out.

TorchScript needs nothing beyond torch; ONNX needs the optional `onnx` extra (`pip install
'voxfast[onnx]'`). Both keep batch and length dynamic, and both are checked against the eager model
on an input of another length than the one used to export, so a shape baked in by tracing is caught
at export time rather than in a user's service.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import torch
from torch import nn

from voxfast.audio.features import FramedPowerSpectrum
from voxfast.errors import VoxfastError

FORMATS = ("torchscript", "onnx")


def export_embedder(embedder: nn.Module, out: str | Path, fmt: str, sample_rate: int = 16000) -> float:
    """Write `embedder` to `out` and return the largest |difference| from eager on a fresh input."""
    if fmt not in FORMATS:
        raise VoxfastError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    embedder = embedder.float().eval().cpu()
    example = torch.randn(2, 2 * sample_rate) * 0.1
    check = torch.randn(3, 3 * sample_rate + 321) * 0.1
    with torch.inference_mode():
        expected = embedder(check)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_and_run = _torchscript if fmt == "torchscript" else _onnx
    got = write_and_run(embedder, example, check, out)
    return float((got - expected).abs().max())


def _torchscript(embedder: nn.Module, example: torch.Tensor, check: torch.Tensor, out: Path) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's own deprecation notice
        traced = torch.jit.trace(embedder, example, check_trace=False)
        torch.jit.save(traced, str(out))
        return torch.jit.load(str(out))(check)


def _onnx(embedder: nn.Module, example: torch.Tensor, check: torch.Tensor, out: Path) -> torch.Tensor:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise VoxfastError(f"ONNX export needs {' and '.join(missing)}: pip install 'voxfast[onnx]' "
                           "(or use --format torchscript)")
    import onnxruntime  # optional dependency, imported only here

    embedder = copy.deepcopy(embedder)
    for module in embedder.modules():
        if isinstance(module, FramedPowerSpectrum):
            module.matrix_dft = True  # ONNX has no complex FFT nor dynamic unfold; a strided Conv1d exports
    try:
        torch.onnx.export(embedder, (example,), str(out), input_names=["wave"], output_names=["embedding"],
                          dynamic_axes={"wave": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}}, dynamo=False)
    except torch.onnx.errors.SymbolicValueError as exc:
        # Known gap: torch's ONNX exporter has no complex STFT, which the mel front ends use.
        raise VoxfastError(f"ONNX export failed: {str(exc).splitlines()[0]} (use --format torchscript)") from exc
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"wave": check.numpy()})[0])
