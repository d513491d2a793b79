"""Export parity for every registered model: waveform in, embedding out, any batch and length."""

import pytest
import torch

from voxfast.errors import VoxfastError
from voxfast.export import export_embedder
from voxfast.models.registry import available_models, create_model


@pytest.mark.parametrize("name", available_models())
def test_torchscript_export_matches_eager(name, tmp_path):
    torch.manual_seed(0)
    diff = export_embedder(create_model(name), tmp_path / f"{name}.ts", "torchscript")
    assert diff < 1e-4


@pytest.mark.parametrize("name", ["resnetse_demo", "resnet34", "ecapa_tdnn"])
def test_onnx_export_matches_eager(name, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the optional extra: pip install 'voxfast[onnx]'")
    pytest.importorskip("onnxruntime", reason="ONNX export needs the optional extra: pip install 'voxfast[onnx]'")
    torch.manual_seed(0)
    assert export_embedder(create_model(name), tmp_path / f"{name}.onnx", "onnx") < 1e-4


def test_unknown_format_lists_the_formats(tmp_path):
    with pytest.raises(VoxfastError, match="available: torchscript, onnx"):
        export_embedder(create_model("resnetse_demo"), tmp_path / "m", "tflite")
