"""ECAPA-TDNN: published sizes, forward/backward, variable length, and the attentive pooling from its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from voxfast.audio.features import KaldiFbank
from voxfast.models.ecapa import ECAPATDNN, ContextAttentiveStatsPool
from voxfast.models.registry import create_model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "target"), [("ecapa_tdnn", 6.19e6), ("ecapa_tdnn_c1024", 14.65e6)])
def test_parameter_count_matches_published_size(name: str, target: float) -> None:
    model = create_model(name)
    assert isinstance(model.front, KaldiFbank) and _n_params(model.front) == 0  # swappable, parameter-free front end
    assert abs(_n_params(model) - target) / target < 0.01


def test_forward_backward_is_finite() -> None:
    torch.manual_seed(0)
    model = create_model("ecapa_tdnn")
    emb = model(torch.randn(2, 16000))  # (B, T) -> (B, 192)
    assert emb.shape == (2, 192) and model.embed_dim == 192 and torch.isfinite(emb).all()
    emb.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_on_another_length() -> None:
    torch.manual_seed(0)
    model = create_model("ecapa_tdnn_c1024", embed_dim=64).eval()
    with torch.inference_mode():
        emb = model(torch.randn(1, 7321))
    assert emb.shape == (1, 64) and torch.isfinite(emb).all()


def _reference_pool(x: np.ndarray, pool: ContextAttentiveStatsPool) -> np.ndarray:
    """Float64 attentive statistics pooling with global context, written from the ECAPA-TDNN definition."""
    p = {k: v.detach().double().numpy() for k, v in pool.state_dict().items() if v.is_floating_point()}
    eps, bn_eps = pool.eps, pool.tdnn.bn.eps
    frames = x.shape[-1]
    g_mean = x.mean(axis=-1, keepdims=True)
    g_std = np.sqrt(np.maximum(((x - g_mean) ** 2).mean(axis=-1, keepdims=True), eps))
    ctx = np.concatenate([x, np.repeat(g_mean, frames, -1), np.repeat(g_std, frames, -1)], axis=1)  # (B, 3C, T)
    h = np.einsum("oc,bct->bot", p["tdnn.conv.weight"][:, :, 0], ctx) + p["tdnn.conv.bias"][:, None]
    h = np.maximum(h, 0.0)
    h = (h - p["tdnn.bn.running_mean"][:, None]) / np.sqrt(p["tdnn.bn.running_var"][:, None] + bn_eps)
    h = np.tanh(h * p["tdnn.bn.weight"][:, None] + p["tdnn.bn.bias"][:, None])
    e = np.einsum("ca,bat->bct", p["score.weight"][:, :, 0], h) + p["score.bias"][:, None]  # (B, C, T)
    w = np.exp(e - e.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    mean = (w * x).sum(axis=-1)
    std = np.sqrt(np.maximum((w * (x - mean[..., None]) ** 2).sum(axis=-1), eps))
    return np.concatenate([mean, std], axis=1)


def test_attentive_pooling_matches_float64_reference() -> None:
    torch.manual_seed(0)
    channels, bottleneck = 12, 5
    pool = ContextAttentiveStatsPool(channels, bottleneck).eval()
    with torch.no_grad():
        for p in pool.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        pool.tdnn.bn.running_mean.uniform_(-0.5, 0.5)
        pool.tdnn.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, channels, 37) * 2 + 1
    x[0, 0] = 0.25  # a constant channel exercises the std floor
    with torch.no_grad():
        out = pool(x)  # (B, C, T) -> (B, 2C)
    ref = _reference_pool(x.double().numpy(), pool)
    assert out.shape == (3, 2 * channels)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-5, atol=1e-5)
    # the attention is not trivially uniform: the weighted mean differs from the plain one
    assert not np.allclose(ref[:, :channels], x.double().numpy().mean(axis=-1), atol=1e-3)


def test_unknown_pooling_lists_the_allowed_one() -> None:
    with pytest.raises(ValueError, match=r"unknown pooling 'asp'.*available: ecapa"):
        create_model("ecapa_tdnn", pooling="asp")
    with pytest.raises(ValueError, match="available: ecapa"):
        ECAPATDNN(8, n_mels=16, pooling="tstp")
