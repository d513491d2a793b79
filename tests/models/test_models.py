import math

import numpy as np
import pytest
import torch

from voxfast.errors import VoxfastError
from voxfast.models.heads import MarginHead, create_head
from voxfast.models.registry import available_models, create_model


@pytest.mark.parametrize("name", available_models())
def test_registered_model_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, embed_dim=64)
    wave = torch.randn(3, 16000)
    emb = model(wave)  # (B, T) -> (B, D)
    assert emb.shape == (3, 64) and torch.isfinite(emb).all()
    emb.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", available_models())
def test_model_accepts_other_lengths_in_eval(name):
    model = create_model(name).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 12345)).shape[0] == 1


# Published embedding-network sizes (None: a voxfast-only model). A new model must be listed here.
PUBLISHED_PARAMS = {
    "resnetse_demo": None, "resnetse34l": 1.437e6, "resnetse34v2": 8.03e6, "resnet34": 6.63e6, "se_resnet34": None,
    "ecapa_tdnn": 6.19e6, "ecapa_tdnn_c1024": 14.65e6,
    "ecapa_tdnn_sb": 20.8e6,  # SpeechBrain spkrec-ecapa-voxceleb: 20.8 M on its model card (20,767,552 counted)
}


@pytest.mark.parametrize("name", available_models())
def test_parameter_count_matches_the_published_model(name):
    assert name in PUBLISHED_PARAMS, f"add {name}'s published parameter count (or None) to PUBLISHED_PARAMS"
    target = PUBLISHED_PARAMS[name]
    count = sum(p.numel() for p in create_model(name).parameters())
    if target is not None:
        assert abs(count - target) / target < 0.01, (count, target)


def test_unknown_model_lists_the_available_names():
    with pytest.raises(VoxfastError, match=r"unknown model 'nope'; available: .*resnetse_demo"):
        create_model("nope")


def test_unknown_head_lists_the_available_names():
    with pytest.raises(VoxfastError, match="unknown head 'arc'; available: softmax, am, aam"):
        create_head("arc", 8, 4)


def _reference_logits(emb, weight, labels, margin, scale, angular):
    """Float64 numpy ArcFace / CosFace logits from the definitions."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    cos = np.clip(e @ w.T, -1, 1)
    out = cos.copy()
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        if not angular:
            out[i, y] = cos[i, y] - margin
        elif theta + margin <= math.pi:
            out[i, y] = math.cos(theta + margin)
        else:
            out[i, y] = cos[i, y] - math.sin(math.pi - margin) * margin
    return out * scale


@pytest.mark.parametrize("angular", [True, False])
def test_margin_head_logits_match_float64_reference(angular):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((16, 8))
    head = MarginHead(8, 5, margin=0.3, scale=20.0, angular=angular)
    weight = head.weight.detach().double().numpy()
    emb[0] = -weight[2]  # theta = pi: exercises the fallback past pi - m
    labels = rng.integers(0, 5, 16)
    labels[0] = 2
    loss, logits = head(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels))
    ref = _reference_logits(emb, weight, labels, 0.3, 20.0, angular)
    np.testing.assert_allclose(logits.detach().numpy(), ref, atol=2e-4)
    ref_loss = np.mean(np.log(np.exp(ref).sum(1)) - ref[np.arange(16), labels])
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-4)
