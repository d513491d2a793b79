"""LR schedules (exponential, step, dispatch, peak LR) and optimizer construction / non-finite step skipping."""

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from voxfast.config import TrainConfig
from voxfast.train import optim as optim_mod
from voxfast.train.optim import build_optimizer, param_groups, step_skipping_nonfinite, supports_fused
from voxfast.train.schedule import lr_factor, peak_lr, step_decay, warmup_cosine, warmup_exponential

CPU = torch.device("cpu")

# ---------------------------------------------------------------- schedules


def test_warmup_exponential_values():
    f = lambda t: warmup_exponential(t, total=10, warmup=2, min_ratio=0.01)  # noqa: E731
    assert f(0.0) == 0.0
    assert f(0.5) == pytest.approx(0.25)
    assert f(1.0) == pytest.approx(0.5)
    assert f(2.0) == 1.0  # peak right after warm-up
    assert f(4.0) == pytest.approx(0.01**0.25)
    assert f(6.0) == pytest.approx(0.1)  # halfway through the decay: sqrt(min_ratio)
    assert f(10.0) == pytest.approx(0.01)
    for t in (10.5, 20.0, 1e6):  # clamped beyond total
        assert f(t) == pytest.approx(0.01)
    decay = [f(2 + 8 * i / 100) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert all(0.01 - 1e-12 <= v <= 1.0 for v in decay)
    # log-linear: equal progress steps multiply the LR by equal factors
    assert f(3.0) / f(2.0) == pytest.approx(f(9.0) / f(8.0))


def test_warmup_exponential_edge_cases():
    assert warmup_exponential(0.0, total=10, warmup=0, min_ratio=0.1) == 1.0  # no warm-up
    assert warmup_exponential(5.0, total=10, warmup=0, min_ratio=0.1) == pytest.approx(0.1**0.5)
    assert warmup_exponential(3.0, total=10, warmup=2, min_ratio=1.0) == 1.0  # constant after warm-up
    assert warmup_exponential(3.0, total=2, warmup=2, min_ratio=0.1) == pytest.approx(0.1)  # no decay span
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="min_ratio"):
            warmup_exponential(3.0, total=10, warmup=2, min_ratio=bad)


def test_step_decay_values():
    f = lambda t: step_decay(t, warmup=1, step_epochs=3, gamma=0.5)  # noqa: E731
    assert f(0.0) == 0.0
    assert f(0.5) == pytest.approx(0.5)
    assert f(1.0) == 1.0
    assert f(3.999) == 1.0  # last moment before the first step
    assert f(4.0) == 0.5  # boundary: warm-up + step_epochs
    assert f(6.5) == 0.5
    assert f(7.0) == 0.25
    assert f(100.0) == 0.5**33  # no floor, no total: keeps decaying
    assert step_decay(0.0, warmup=0, step_epochs=1, gamma=0.95) == 1.0
    assert step_decay(2.5, warmup=0, step_epochs=1, gamma=0.95) == pytest.approx(0.95**2)
    with pytest.raises(ValueError, match="step_epochs"):
        step_decay(1.0, warmup=0, step_epochs=0, gamma=0.5)


def test_lr_factor_dispatches_on_scheduler():
    base = {"epochs": 20, "warmup_epochs": 2.0, "min_lr_ratio": 0.05, "step_epochs": 4.0, "step_gamma": 0.8}
    for t in (0.5, 2.0, 7.3, 20.0, 25.0):
        cos = TrainConfig(scheduler="cosine", **base)
        assert lr_factor(cos, t) == warmup_cosine(t, 20, 2.0, 0.05)
        exp = TrainConfig(scheduler="exp", **base)
        assert lr_factor(exp, t) == warmup_exponential(t, 20, 2.0, 0.05)
        step = TrainConfig(scheduler="step", **base)
        assert lr_factor(step, t) == step_decay(t, 2.0, 4.0, 0.8)
    assert lr_factor(TrainConfig(scheduler="exp", **base), 11.0) == pytest.approx(0.05**0.5)
    assert lr_factor(TrainConfig(scheduler="step", **base), 10.0) == pytest.approx(0.8**2)
    with pytest.raises(ValueError, match="scheduler"):
        lr_factor(TrainConfig(scheduler="linear"), 1.0)  # type: ignore[arg-type]


def test_peak_lr_linear_scaling():
    assert peak_lr(TrainConfig(lr=0.1, global_batch=512, lr_reference_batch=0)) == 0.1
    assert peak_lr(TrainConfig(lr=0.1, global_batch=512, lr_reference_batch=256)) == pytest.approx(0.2)
    assert peak_lr(TrainConfig(lr=0.1, global_batch=64, lr_reference_batch=256)) == pytest.approx(0.025)


# ---------------------------------------------------------------- optimizer construction


class Toy(nn.Module):
    """Matrices (decayed), biases and norm scales (not decayed), and a frozen parameter (left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.norm = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 5)
        self.ln = nn.LayerNorm(5)
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.fc(self.norm(self.conv(x)).mean(-1)))


def _model(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def _cfg(optimizer: str, **kw) -> TrainConfig:
    return TrainConfig(optimizer=optimizer, lr=0.01, momentum=0.8, weight_decay=1e-3, **kw)


def test_param_groups_no_decay_on_1d():
    m = _model()
    decay, no_decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([m.conv.weight, m.fc.weight])
    assert ids(no_decay["params"]) == ids([m.conv.bias, m.norm.weight, m.norm.bias, m.fc.bias, m.ln.weight, m.ln.bias])
    assert id(m.frozen) not in ids(decay["params"]) | ids(no_decay["params"])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_supported_on_cpu(name):
    assert supports_fused(name, CPU)  # fused CPU kernels exist for all three in the torch this project pins


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_build_optimizer_hyper_parameters(name):
    m = _model()
    opt = build_optimizer(m, _cfg(name, global_batch=256, lr_reference_batch=128), CPU)
    expected_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    assert type(opt) is expected_cls
    assert len(opt.param_groups) == 2
    g_decay, g_plain = opt.param_groups
    assert g_decay["weight_decay"] == 1e-3 and g_plain["weight_decay"] == 0.0
    assert {id(p) for p in g_plain["params"]} >= {id(m.conv.bias), id(m.norm.weight), id(m.ln.weight)}
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.02)  # peak_lr: 0.01 * 256 / 128
        assert g["fused"] is True  # chosen on CPU where supported
        if name == "sgd":
            assert g["momentum"] == 0.8 and g["nesterov"] is True and g["dampening"] == 0
        else:
            assert g["betas"] == (0.8, 0.999)
    if name != "sgd":
        assert opt.param_groups[0]["decoupled_weight_decay"] is (name == "adamw")


def test_build_optimizer_sgd_without_momentum_drops_nesterov():
    opt = build_optimizer(_model(), TrainConfig(optimizer="sgd", momentum=0.0), CPU)
    assert opt.param_groups[0]["momentum"] == 0.0 and opt.param_groups[0]["nesterov"] is False


def test_build_optimizer_not_fused_when_params_elsewhere(monkeypatch):
    calls = []
    monkeypatch.setattr(optim_mod, "supports_fused", lambda *a: calls.append(a) or True)
    opt = build_optimizer(_model(), _cfg("adamw"), torch.device("cuda"))  # params still on the CPU
    assert not opt.param_groups[0]["fused"]
    assert calls == []  # no probe of a device the parameters are not on


def test_build_optimizer_falls_back_when_fused_unsupported(monkeypatch):
    monkeypatch.setattr(optim_mod, "supports_fused", lambda *a: False)
    opt = build_optimizer(_model(), _cfg("adam"), CPU)
    assert not opt.param_groups[0]["fused"]


def test_supports_fused_false_when_construction_fails(monkeypatch):
    class Broken(torch.optim.SGD):
        def __init__(self, *a, fused=None, **kw):
            if fused:
                raise RuntimeError("no fused kernel here")
            super().__init__(*a, **kw)

    monkeypatch.setitem(optim_mod._OPTIMIZERS, "sgd", Broken)
    supports_fused.cache_clear()
    try:
        assert supports_fused("sgd", CPU) is False
    finally:
        supports_fused.cache_clear()


# ---------------------------------------------------------------- skipping non-finite steps


def _set_grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g)


def _assert_same(a, b, exact: bool) -> None:
    """Recursively compare state dicts (tensors, numbers, lists, dicts)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-6, atol=1e-6)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k], exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y, exact)
    else:
        assert a == b


def _pair(name: str, fused: bool, monkeypatch):
    """An optimizer under test (fused or not) and a non-fused reference on an identical model."""
    if not fused:
        monkeypatch.setattr(optim_mod, "supports_fused", lambda *a: False)
    m, ref_m = _model(), _model()
    cfg = _cfg(name)
    opt = build_optimizer(m, cfg, CPU)
    assert bool(opt.param_groups[0]["fused"]) is fused
    ref = _OPT_CLS[name](param_groups(ref_m, cfg.weight_decay), lr=peak_lr(cfg), fused=False,
                         **optim_mod._hyper_parameters(cfg))
    return m, opt, ref_m, ref


_OPT_CLS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _no_host_reads(monkeypatch):
    """Make any host read of a tensor's value fail, to show the fused path decides on the device."""

    def refuse(*_a, **_k):
        raise AssertionError("host sync in the fused path")

    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "__bool__", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_step_skipping_nonfinite(name, fused, monkeypatch):
    m, opt, ref_m, ref = _pair(name, fused, monkeypatch)
    zero, one = torch.zeros(1), torch.ones(1)
    for seed in range(3):  # real steps: same as a plain non-fused step
        _set_grads(m, seed)
        _set_grads(ref_m, seed)
        step_skipping_nonfinite(opt, zero)
        ref.step()
        _assert_same(m.state_dict(), ref_m.state_dict(), exact=False)
        _assert_same(opt.state_dict()["state"], ref.state_dict()["state"], exact=False)

    before_m, before_opt = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict())
    _set_grads(m, 99)
    with monkeypatch.context() as mp:
        if fused:
            _no_host_reads(mp)
        step_skipping_nonfinite(opt, one)  # skipped: bit-identical params and state
    _assert_same(m.state_dict(), before_m, exact=True)
    _assert_same(opt.state_dict(), before_opt, exact=True)
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")

    _set_grads(m, 3)  # and the run goes on as if the skipped step never happened
    _set_grads(ref_m, 3)
    step_skipping_nonfinite(opt, zero)
    ref.step()
    _assert_same(m.state_dict(), ref_m.state_dict(), exact=False)
    _assert_same(opt.state_dict()["state"], ref.state_dict()["state"], exact=False)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_skipped_first_step_leaves_no_trace(name, fused, monkeypatch):
    """A skip before any real step (e.g. fp16 overflow at once) must not seed bad state.

    Fused SGD would otherwise keep an uninitialised momentum buffer from its skipped first step.
    """
    m, opt, ref_m, ref = _pair(name, fused, monkeypatch)
    before = copy.deepcopy(m.state_dict())
    _set_grads(m, 7)
    step_skipping_nonfinite(opt, torch.ones(1))
    _assert_same(m.state_dict(), before, exact=True)
    for state in opt.state.values():  # whatever state a fused step created holds no update
        for key, value in state.items():
            assert torch.count_nonzero(value) == 0, key
    for seed in (0, 1):
        _set_grads(m, seed)
        _set_grads(ref_m, seed)
        step_skipping_nonfinite(opt, torch.zeros(1))
        ref.step()
        _assert_same(m.state_dict(), ref_m.state_dict(), exact=False)
        _assert_same(opt.state_dict()["state"], ref.state_dict()["state"], exact=False)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_skip_flag_shapes_and_dtypes(name):
    """Any nonzero flag skips, whatever its shape or dtype.

    The fused kernels skip only on exactly 1.0 and fused Adam subtracts the flag from its step counts,
    so 2.0 (e.g. flags summed over devices), inf or NaN must be normalised, not passed through.
    """
    m = _model()
    opt = build_optimizer(m, _cfg(name), CPU)
    _set_grads(m, 0)
    step_skipping_nonfinite(opt, torch.zeros(1))
    snapshot_m, snapshot = copy.deepcopy(m.state_dict()), copy.deepcopy(opt.state_dict())
    flags = (torch.tensor(1.0), torch.ones(1), torch.ones(1, dtype=torch.bool), torch.tensor([2.0]),
             torch.tensor([math.inf]), torch.tensor([math.nan]), torch.tensor([0.5]))
    for flag in flags:
        _set_grads(m, 5)
        step_skipping_nonfinite(opt, flag)
        _assert_same(m.state_dict(), snapshot_m, exact=True)
        _assert_same(opt.state_dict(), snapshot, exact=True)
    for flag in (torch.tensor(0.0), torch.zeros(1, dtype=torch.bool)):  # and a zero flag of any kind steps
        _set_grads(m, 6)
        step_skipping_nonfinite(opt, flag)
        assert not torch.equal(m.fc.weight, snapshot_m["fc.weight"])
