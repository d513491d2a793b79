"""Every registered model under the speed switches: channels_last, autocast, torch.compile tracing."""

import pytest
import torch

from voxfast.models.registry import available_models, create_model


@pytest.fixture(scope="module")
def wave():
    torch.manual_seed(0)
    return torch.randn(2, 8000) * 0.1


@pytest.mark.parametrize("name", available_models())
def test_channels_last_and_autocast_keep_the_embedding(name, wave):
    torch.manual_seed(1)
    model = create_model(name).eval()
    with torch.inference_mode():
        ref = model(wave)
        fast = model.to(memory_format=torch.channels_last)(wave)
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(wave).float()
    assert torch.isfinite(low).all()
    cos = torch.nn.functional.cosine_similarity(low, ref, dim=1)
    assert (cos > 0.98).all()  # bf16 perturbs the embedding, it must not change it


@pytest.mark.parametrize("name", ["resnetse_demo", "ecapa_tdnn"])
def test_dynamo_traces_the_model(name, wave):
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = create_model(name).eval()
    compiled = torch.compile(model, backend="eager")  # graph capture only; inductor codegen is for the GPU run
    with torch.no_grad():
        torch.testing.assert_close(compiled(wave), model(wave))
