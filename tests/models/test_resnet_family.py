"""The ResNet family and the attentive poolings: published sizes, pooling maths against float64 references."""

import numpy as np
import pytest
import torch

from voxfast.audio.features import KaldiFbank
from voxfast.models.pooling import ASP, ASTP, create_pooling
from voxfast.models.registry import create_model

NEW_VARIANTS = ["resnetse34l", "resnetse34v2", "resnet34", "se_resnet34"]


@pytest.mark.parametrize(
    ("name", "published"),
    [("resnetse34l", 1.437e6), ("resnetse34v2", 8.03e6), ("resnet34", 6.63e6)],
)
def test_parameter_count_matches_the_published_figure(name, published):
    """Embedding network (front end included, head elsewhere) at its defaults, within 1 %."""
    model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / published - 1) < 0.01, f"{name}: {count} parameters vs published {published:.0f}"


@pytest.mark.parametrize(
    ("name", "n_mels", "embed_dim", "pooling"),
    [("resnetse34l", 40, 512, "sap"), ("resnetse34v2", 64, 512, "asp"), ("resnet34", 80, 256, "tstp"),
     ("se_resnet34", 80, 256, "tstp"), ("resnetse_demo", 40, 256, "tstp")],
)
def test_variants_default_to_their_published_setting(name, n_mels, embed_dim, pooling):
    model = create_model(name)
    assert model.front.n_mels == n_mels and model.embed_dim == embed_dim
    assert type(model.pool) is type(create_pooling(pooling, 8))


def test_resnet34_front_end_is_a_parameter_free_kaldi_fbank():
    model = create_model("resnet34")
    assert isinstance(model.front, KaldiFbank) and model.front.n_mels == 80
    assert not list(model.front.parameters())


def test_se_resnet34_is_resnet34_plus_se_gates():
    plain = sum(p.numel() for p in create_model("resnet34").parameters())
    se = sum(p.numel() for p in create_model("se_resnet34").parameters())
    # each of the 16 blocks adds 2*C*C/8 + C/8 + C parameters
    widths = [32] * 3 + [64] * 4 + [128] * 6 + [256] * 3
    assert se - plain == sum(2 * c * (c // 8) + c // 8 + c for c in widths)


@pytest.mark.parametrize("name", NEW_VARIANTS)
def test_new_variant_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, embed_dim=32)
    emb = model(torch.randn(2, 16000))  # (B, T) -> (B, D)
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    emb.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_channels_last_gives_the_same_embedding():
    torch.manual_seed(0)
    model = create_model("resnetse34l", embed_dim=32).eval()
    wave = torch.randn(2, 4000)
    with torch.no_grad():
        ref = model(wave)
        out = model.to(memory_format=torch.channels_last)(wave)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["asp", "astp", "sap", "tstp"])
@pytest.mark.parametrize("frames", [1, 7])
def test_pooling_shape_and_finite(name, frames):
    torch.manual_seed(0)
    pool = create_pooling(name, 16).eval()
    with torch.no_grad():
        out = pool(torch.randn(3, 16, frames))  # (B, C, T) -> (B, D)
    assert out.shape == (3, pool.out_dim) and torch.isfinite(out).all()


def test_unknown_pooling_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown pooling 'xvec'; available: asp, astp, sap, tstp"):
        create_pooling("xvec", 8)


def _softmax_time(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _conv1x1(w, b, x):
    """A kernel-size-1 Conv1d from its definition: (O, I, 1), (O,), (B, I, T) -> (B, O, T)."""
    return np.einsum("oi,bit->bot", w[:, :, 0], x) + b[None, :, None]


def _weighted_mean_std(x, w, eps):
    """The references' weighted statistics: mu = sum w x, sigma = sqrt(max(sum w x^2 - mu^2, eps))."""
    mu = (x * w).sum(-1)
    return np.concatenate([mu, np.sqrt(np.maximum((x**2 * w).sum(-1) - mu**2, eps))], axis=1)


def _randomise(module, rng):
    """Non-trivial weights and batch-norm statistics, so a wrong formula cannot pass by symmetry."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.tensor(rng.standard_normal(p.shape) * 0.3))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.tensor(rng.standard_normal(m.num_features) * 0.2))
                m.running_var.copy_(torch.tensor(rng.uniform(0.5, 2.0, m.num_features)))
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items() if v.dim() > 0}


def test_asp_matches_float64_reference():
    rng = np.random.default_rng(0)
    pool = ASP(12, hidden=6).eval()
    p = _randomise(pool, rng)
    x = rng.standard_normal((3, 12, 9)) * 1.5 + 0.5
    h = np.maximum(_conv1x1(p["attention.0.weight"], p["attention.0.bias"], x), 0)
    h = (h - p["attention.2.running_mean"][None, :, None]) / np.sqrt(p["attention.2.running_var"][None, :, None] + 1e-5)
    h = h * p["attention.2.weight"][None, :, None] + p["attention.2.bias"][None, :, None]
    w = _softmax_time(_conv1x1(p["attention.3.weight"], p["attention.3.bias"], h))
    ref = _weighted_mean_std(x, w, 1e-5)
    out = pool(torch.tensor(x, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_astp_matches_float64_reference():
    rng = np.random.default_rng(1)
    pool = ASTP(10, hidden=5).eval()
    p = _randomise(pool, rng)
    x = rng.standard_normal((3, 10, 11)) * 1.5 - 0.3
    mean = np.broadcast_to(x.mean(-1, keepdims=True), x.shape)
    std = np.broadcast_to(np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-10), x.shape)
    ctx = np.concatenate([x, mean, std], axis=1)
    a = _conv1x1(p["linear2.weight"], p["linear2.bias"], np.tanh(_conv1x1(p["linear1.weight"], p["linear1.bias"], ctx)))
    ref = _weighted_mean_std(x, _softmax_time(a), 1e-10)
    out = pool(torch.tensor(x, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_attentive_pooling_of_a_constant_sequence_is_the_constant():
    """Weights sum to one over time: any attention gives mean = the value and std = sqrt(eps)."""
    x = torch.full((2, 6, 5), 3.0)
    for pool in (ASP(6).eval(), ASTP(6).eval()):
        out = pool(x)
        torch.testing.assert_close(out[:, :6], torch.full((2, 6), 3.0))
        torch.testing.assert_close(out[:, 6:], torch.full((2, 6), pool.eps**0.5))
