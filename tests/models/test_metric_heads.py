"""The metric-learning objectives of "In defence of metric learning" against float64 numpy references written from
the papers' formulas (Snell et al. 2017, Chung et al. 2020, Wan et al. 2018), on random (N speakers x M crops)."""

import numpy as np
import pytest
import torch

from voxfast.errors import VoxfastError
from voxfast.models.heads import AngleProtoHead, GE2EHead, ProtoHead, SoftmaxProtoHead, create_head

N, M, D = 5, 3, 8


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, M, D))
    x[:, 1:] += 0.5 * x[:, :1]  # crops of a speaker look alike, so the loss is not at its random value
    return x, torch.tensor(x.reshape(N * M, D), dtype=torch.float32, requires_grad=True)


def _ce(logits, target):
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(target)), target].mean()


def _cos(a, b):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T


def _labels():
    return torch.arange(N).repeat_interleave(M) + 7  # speaker ids of the training set: not positions


def test_prototypical_matches_the_reference():
    x, emb = _batch()
    queries, protos = x[:, 0], x[:, 1:].mean(1)
    logits = -((queries[:, None] - protos[None]) ** 2).sum(-1)
    loss, out = ProtoHead(M)(emb, _labels())
    np.testing.assert_allclose(out.detach().numpy(), logits, rtol=1e-5, atol=1e-4)
    assert loss.item() == pytest.approx(_ce(logits, np.arange(N)), rel=1e-5)


def test_angular_prototypical_matches_the_reference_and_learns_w_and_b():
    x, emb = _batch(1)
    head = AngleProtoHead(M)
    with torch.no_grad():
        head.w.fill_(7.0), head.b.fill_(-2.0)
    logits = 7.0 * _cos(x[:, 0], x[:, 1:].mean(1)) - 2.0
    loss, out = head(emb, _labels())
    np.testing.assert_allclose(out.detach().numpy(), logits, rtol=1e-5, atol=1e-5)
    assert loss.item() == pytest.approx(_ce(logits, np.arange(N)), rel=1e-5)
    loss.backward()
    assert head.w.grad is not None and head.b.grad is not None and emb.grad.abs().sum() > 0
    assert head.target(_labels()).tolist() == list(range(N))


def test_ge2e_matches_the_reference_with_leave_one_out_centroids():
    x, emb = _batch(2)
    head = GE2EHead(M)
    with torch.no_grad():
        head.w.fill_(4.0), head.b.fill_(1.0)
    ref = np.empty((N, M, N))
    for j in range(N):
        for i in range(M):
            for k in range(N):
                c = np.delete(x[k], i, axis=0).mean(0) if k == j else x[k].mean(0)
                ref[j, i, k] = 4.0 * _cos(x[j, i][None], c[None])[0, 0] + 1.0
    loss, out = head(emb, _labels())
    np.testing.assert_allclose(out.detach().numpy(), ref.reshape(N * M, N), rtol=1e-5, atol=1e-5)
    assert loss.item() == pytest.approx(_ce(ref.reshape(N * M, N), np.repeat(np.arange(N), M)), rel=1e-5)
    assert head.target(_labels()).tolist() == np.repeat(np.arange(N), M).tolist()


def test_softmax_proto_is_the_sum_of_its_two_losses():
    _, emb = _batch(3)
    head = SoftmaxProtoHead(D, 20, M)
    labels = _labels()
    loss, logits = head(emb, labels)
    softmax_loss, _ = head.softmax(emb, labels)
    proto_loss, _ = head.proto(emb, labels)
    assert loss.item() == pytest.approx(softmax_loss.item() + proto_loss.item(), rel=1e-6)
    assert logits.shape == (N * M, 20) and torch.equal(head.target(labels), labels)


def test_metric_heads_need_groups_of_crops():
    with pytest.raises(VoxfastError, match=r"set data\.n_per_speaker >= 2"):
        create_head("angleproto", D, 10, n_per_speaker=1)
    with pytest.raises(VoxfastError, match=r"not whole groups of data\.n_per_speaker = 3"):
        create_head("ge2e", D, 10, n_per_speaker=3)(torch.randn(7, D), torch.arange(7))
