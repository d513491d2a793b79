"""Margin schedule (WeSpeaker-style ramp in fractional epochs) and the set_margin helper."""

import itertools
import math

import pytest
import torch

from voxfast.models.heads import create_head
from voxfast.train.schedule import margin_schedule, set_margin, warmup_cosine


@pytest.mark.parametrize("increase", ["linear", "exp"])
def test_zero_before_start_and_final_from_ramp_end(increase):
    for t in (0.0, 1.0, 4.999):
        assert margin_schedule(t, 0.2, start=5, ramp_end=15, increase=increase) == 0.0
    assert margin_schedule(5.0, 0.2, start=5, ramp_end=15, increase=increase) == 0.0  # ramp starts at 0
    for t in (15.0, 15.5, 100.0):
        assert margin_schedule(t, 0.2, start=5, ramp_end=15, increase=increase) == 0.2


def test_linear_ramp_values():
    assert margin_schedule(10.0, 0.2, 5, 15, "linear") == pytest.approx(0.1)
    assert margin_schedule(7.5, 0.2, 5, 15, "linear") == pytest.approx(0.05)
    assert margin_schedule(14.999, 0.2, 5, 15, "linear") == pytest.approx(0.2 * 9.999 / 10)


def test_exp_ramp_follows_wespeaker():
    # WeSpeaker MarginScheduler: ratio = 1 - exp(p * ln(1e-3 / (1 + 1e-6))) with p the fraction of the ramp done.
    for p in (0.1, 0.25, 0.5, 0.9, 0.999):
        wespeaker = 1.0 - math.exp(p * math.log(1e-3 / (1.0 + 1e-6)))
        assert margin_schedule(5 + 10 * p, 0.2, 5, 15) == pytest.approx(0.2 * wespeaker, rel=1e-6)
    assert margin_schedule(10.0, 0.2, 5, 15, "exp") == pytest.approx(0.2 * (1 - 10**-1.5))  # middle: ~0.968 final
    # Exp front-loads the margin compared with linear.
    assert margin_schedule(6.0, 0.2, 5, 15, "exp") > margin_schedule(6.0, 0.2, 5, 15, "linear")


@pytest.mark.parametrize("increase", ["linear", "exp"])
def test_ramp_is_monotonic(increase):
    values = [margin_schedule(t / 10, 0.3, 2, 8, increase) for t in range(0, 101)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[0] == 0.0 and values[-1] == 0.3


def test_zero_length_ramp_is_a_step_and_start_zero_ramps_from_the_beginning():
    assert margin_schedule(2.999, 0.2, 3, 3) == 0.0
    assert margin_schedule(3.0, 0.2, 3, 3) == 0.2
    assert margin_schedule(0.0, 0.2, 0, 0) == 0.2
    assert margin_schedule(1.0, 0.2, 0, 2, "linear") == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"final": -0.1}, "final"),
        ({"final": float("nan")}, "final"),
        ({"start": -1.0}, "start"),
        ({"start": float("inf")}, "start"),
        ({"ramp_end": 2.0}, "ramp_end"),  # before start = 5
        ({"increase": "cosine"}, "increase"),
        ({"t": float("nan")}, "t"),
        ({"t": None}, "t"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"t": 1.0, "final": 0.2, "start": 5.0, "ramp_end": 15.0, "increase": "exp", **kwargs}
    with pytest.raises(ValueError, match=rf"\b{name} must"):
        margin_schedule(**args)


def test_set_margin_changes_margin_heads_and_skips_softmax():
    for name in ("am", "aam", "sub_center_aam"):
        head = create_head(name, 8, 6, margin=0.2)
        set_margin(head, 0.05)
        assert head.margin == 0.05
    softmax = create_head("softmax", 8, 6)
    set_margin(softmax, 0.05)
    assert not hasattr(softmax, "margin")


def test_set_margin_takes_effect_on_the_next_forward():
    torch.manual_seed(0)
    head = create_head("sub_center_aam", 8, 6, margin=0.0, sub_centers=2, top_k=0)
    emb, labels = torch.randn(5, 8), torch.randint(0, 6, (5,))
    loss0, _ = head(emb, labels)
    set_margin(head, margin_schedule(20.0, 0.3, 5, 15))
    loss1, _ = head(emb, labels)
    assert head.margin == 0.3 and float(loss1.detach()) > float(loss0.detach())


def test_set_margin_rejects_bad_values():
    head = create_head("aam", 8, 6)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="value"):
            set_margin(head, bad)
    assert head.margin == 0.2


def test_warmup_cosine_unchanged():
    assert warmup_cosine(0.5, 10, 1, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 10, 1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10.0, 10, 1, 0.1) == pytest.approx(0.1)
