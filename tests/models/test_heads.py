"""Sub-center AAM head with inter-top-k, checked against a float64 reference written from the definition."""

import math

import numpy as np
import pytest
import torch

from voxfast.errors import VoxfastError
from voxfast.models.heads import MarginHead, SoftmaxHead, SubCenterAAMHead, available_heads, create_head


def _reference(emb, weight, labels, margin, scale, k, top_k, top_k_margin):
    """Float64 numpy logits from the definition.

    Max over sub-centers, ArcFace on the target, cos(theta - m') on the top-k non-targets.
    """
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    n_classes = weight.shape[0] // k
    cos = np.clip(e @ w.T, -1, 1).reshape(len(emb), n_classes, k).max(axis=2)
    out = cos.copy()
    for i, y in enumerate(labels):
        negatives = [j for j in range(n_classes) if j != y]
        hardest = sorted(negatives, key=lambda j: -cos[i, j])[:top_k]
        for j in hardest:
            out[i, j] = math.cos(math.acos(cos[i, j]) - top_k_margin)
        theta = math.acos(cos[i, y])
        if theta + margin <= math.pi:
            out[i, y] = math.cos(theta + margin)
        else:
            out[i, y] = cos[i, y] - math.sin(math.pi - margin) * margin
    return out * scale, cos


def _loss(ref, labels):
    m = ref.max(axis=1, keepdims=True)
    lse = np.log(np.exp(ref - m).sum(1)) + m[:, 0]
    return np.mean(lse - ref[np.arange(len(labels)), labels])


def _run(head, emb, labels):
    loss, logits = head(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels))
    return loss, logits


@pytest.mark.parametrize(("k", "top_k"), [(3, 5), (2, 1), (1, 3), (3, 0)])
def test_sub_center_logits_and_loss_match_float64_reference(k, top_k):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    n_classes, dim, batch = 10, 8, 32
    head = SubCenterAAMHead(dim, n_classes, margin=0.3, scale=20.0, sub_centers=k, top_k=top_k, top_k_margin=0.1)
    weight = head.weight.detach().double().numpy()
    emb = rng.standard_normal((batch, dim))
    labels = rng.integers(0, n_classes, batch)
    emb[0] = -weight[2 * k]  # K = 1: theta = pi, the fallback branch (K > 1: see the next test)
    labels[0] = 2
    loss, logits = _run(head, emb, labels)
    ref, _ = _reference(emb, weight, labels, 0.3, 20.0, k, top_k, 0.1)
    np.testing.assert_allclose(logits.detach().numpy(), ref, atol=2e-4)
    assert float(loss.detach()) == pytest.approx(_loss(ref, labels), rel=1e-4)


def test_fallback_past_pi_minus_m_is_taken_with_sub_centers():
    """All K sub-centers of the target point away from the embedding, so theta + m > pi for the max too."""
    torch.manual_seed(0)
    k, n_classes, dim = 3, 6, 8
    head = SubCenterAAMHead(dim, n_classes, margin=0.5, scale=10.0, sub_centers=k, top_k=2, top_k_margin=0.06)
    with torch.no_grad():
        u = torch.randn(dim, dtype=torch.float64)
        u /= u.norm()
        # Sub-centers of class 1: -u plus tiny perturbations, all with theta > pi - m.
        head.weight[k : 2 * k] = (-u + 0.01 * torch.randn(k, dim, dtype=torch.float64)).float()
    emb = u.numpy()[None, :]
    labels = np.array([1])
    weight = head.weight.detach().double().numpy()
    ref, cos = _reference(emb, weight, labels, 0.5, 10.0, k, 2, 0.06)
    assert math.acos(cos[0, 1]) + 0.5 > math.pi
    loss, logits = _run(head, emb, labels)
    np.testing.assert_allclose(logits.detach().numpy(), ref, atol=2e-4)
    assert float(loss.detach()) == pytest.approx(_loss(ref, labels), rel=1e-4)


def test_inter_top_k_penalises_exactly_the_hardest_negatives():
    """Built so that the hardest negatives differ from a naive pick (first classes, or including the target)."""
    k, n_classes, dim = 2, 6, 6
    head = SubCenterAAMHead(dim, n_classes, margin=0.2, scale=1.0, sub_centers=k, top_k=2, top_k_margin=0.2)
    basis = torch.eye(dim)
    emb = basis[0] + 0.0
    # Class-level cosines (max over each class's 2 sub-centers): target 0 -> 0.9; negatives 4 and 5 the hardest,
    # with class 5's closeness carried by its *second* sub-center only.
    target_cos = {0: 0.9, 1: 0.1, 2: -0.2, 3: 0.3, 4: 0.8, 5: 0.6}
    with torch.no_grad():
        for c, cval in target_cos.items():
            far = -0.5 if c != 5 else cval
            near = cval if c != 5 else -0.5
            head.weight[c * k] = far * basis[0] + math.sqrt(1 - far**2) * basis[1 + (c % 5)]
            head.weight[c * k + 1] = near * basis[0] + math.sqrt(1 - near**2) * basis[1 + (c % 5)]
    labels = torch.tensor([0])
    _, logits = head(emb[None], labels)
    got = logits[0].detach().double().numpy()
    expected = np.array([math.cos(math.acos(c) + 0.2) if j == 0 else c for j, c in target_cos.items()])
    for j in (4, 5):
        expected[j] = math.cos(math.acos(target_cos[j]) - 0.2)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The penalty raises the hardest negatives' logits, and only theirs.
    raw = np.array(list(target_cos.values()))
    assert (got[[4, 5]] > raw[[4, 5]]).all() and np.allclose(got[[1, 2, 3]], raw[[1, 2, 3]], atol=1e-6)
    ref, _ = _reference(emb[None].double().numpy(), head.weight.detach().double().numpy(), [0], 0.2, 1.0, k, 2, 0.2)
    np.testing.assert_allclose(got, ref[0], atol=1e-5)


def test_top_k_penalty_raises_the_loss():
    torch.manual_seed(0)
    head = SubCenterAAMHead(16, 20, margin=0.2, scale=30.0, sub_centers=3, top_k=5, top_k_margin=0.06)
    emb, labels = torch.randn(64, 16), torch.randint(0, 20, (64,))
    with_penalty, _ = head(emb, labels)
    head.top_k = 0
    without, _ = head(emb, labels)
    assert float(with_penalty.detach()) > float(without.detach())


def test_top_k_beyond_the_negatives_penalises_all_of_them():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    head = SubCenterAAMHead(8, 4, margin=0.2, scale=10.0, sub_centers=2, top_k=5, top_k_margin=0.06)
    emb, labels = rng.standard_normal((6, 8)), rng.integers(0, 4, 6)
    _, logits = _run(head, emb, labels)
    ref, _ = _reference(emb, head.weight.detach().double().numpy(), labels, 0.2, 10.0, 2, 3, 0.06)
    np.testing.assert_allclose(logits.detach().numpy(), ref, atol=2e-4)


@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_one_sub_center_without_top_k_is_exactly_the_aam_head(margin):
    torch.manual_seed(0)
    aam = MarginHead(12, 7, margin=margin, scale=30.0, angular=True)
    sub = SubCenterAAMHead(12, 7, margin=margin, scale=30.0, sub_centers=1, top_k=0)
    with torch.no_grad():
        sub.weight.copy_(aam.weight)
    emb, labels = torch.randn(40, 12), torch.randint(0, 7, (40,))
    emb[0] = -aam.weight[3].detach()  # theta = pi: the fallback branch
    labels[0] = 3
    loss_a, logits_a = aam(emb, labels)
    loss_s, logits_s = sub(emb, labels)
    assert torch.equal(logits_a, logits_s)
    assert torch.equal(loss_a, loss_s)


def test_margin_is_a_live_attribute():
    torch.manual_seed(0)
    head = SubCenterAAMHead(8, 5, margin=0.0, scale=10.0, sub_centers=2, top_k=0)
    emb, labels = torch.randn(6, 8), torch.randint(0, 5, (6,))
    _, before = head(emb, labels)
    head.margin = 0.3
    _, after = head(emb, labels)
    rows = torch.arange(6)
    assert (after[rows, labels] < before[rows, labels]).all()


def test_gradients_are_finite_including_at_cos_plus_minus_one():
    torch.manual_seed(0)
    head = SubCenterAAMHead(8, 6, margin=0.2, scale=30.0, sub_centers=3, top_k=3)
    emb = torch.randn(10, 8)
    with torch.no_grad():
        emb[0] = head.weight[0]  # cos = +1 with the target's sub-center
        emb[1] = -head.weight[3]  # cos = -1 with a target sub-center
        emb[2] = head.weight[5]  # cos = +1 with a negative class
    emb.requires_grad_(True)
    labels = torch.tensor([0, 1, 3, 0, 1, 2, 3, 4, 5, 0])
    loss, _ = head(emb, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0


def test_cosines_stay_float32_under_autocast():
    torch.manual_seed(0)
    head = SubCenterAAMHead(8, 6, margin=0.2, scale=30.0, sub_centers=2, top_k=2)
    emb, labels = torch.randn(4, 8), torch.randint(0, 6, (4,))
    _, ref_logits = head(emb, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, logits = head(emb, labels)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref_logits)


def test_create_head_builds_sub_center_aam_with_options():
    head = create_head("sub_center_aam", 16, 10, margin=0.25, scale=32.0, sub_centers=2, top_k=4, top_k_margin=0.1)
    assert isinstance(head, SubCenterAAMHead)
    assert head.weight.shape == (20, 16)
    assert (head.margin, head.scale, head.sub_centers, head.top_k, head.top_k_margin) == (0.25, 32.0, 2, 4, 0.1)
    default = create_head("sub_center_aam", 16, 10)
    assert (default.sub_centers, default.top_k, default.top_k_margin, default.margin) == (3, 5, 0.06, 0.2)
    assert isinstance(create_head("softmax", 16, 10, sub_centers=2), SoftmaxHead)


def test_unknown_head_error_lists_every_name():
    assert available_heads() == ["softmax", "am", "aam", "sub_center_aam", "proto", "angleproto", "softmaxproto",
                                 "ge2e"]
    with pytest.raises(VoxfastError) as info:
        create_head("subcenter", 8, 4)
    message = str(info.value)
    assert "unknown head 'subcenter'" in message
    assert all(name in message for name in available_heads())
    assert "available: softmax, am, aam, sub_center_aam" in message


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"sub_centers": 0}, "sub_centers"),
        ({"sub_centers": 1.5}, "sub_centers"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_k_margin": -0.1}, "top_k_margin"),
        ({"top_k_margin": float("nan")}, "top_k_margin"),
    ],
)
def test_bad_sub_center_options_are_user_errors(options, word):
    with pytest.raises(VoxfastError, match=word):
        create_head("sub_center_aam", 8, 4, **options)
