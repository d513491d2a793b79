"""Training for a wall-clock budget, on a fake clock where every optimizer step costs one second."""

import types

import pytest

from tests.train.toy import ToyTask, toy_config
from voxfast.train import trainer as trainer_module
from voxfast.train.budget import BudgetClock
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.schedule import lr_factor, margin_schedule
from voxfast.train.trainer import Trainer


class FakeTime:
    """`time` for the trainer module: perf_counter advances only when a step says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


def _budget_run(tmp_path, fake_time, budget_s, lrs, **cfg_kw):
    cfg = toy_config(epochs=4, budget_minutes=budget_s / 60, warmup_epochs=1.0, **cfg_kw)
    box = {}

    def one_second_per_step(_steps_seen):
        lrs.append(box["trainer"].optimizer.param_groups[0]["lr"])
        fake_time.now += 1.0  # the step that follows costs one second of training

    task = ToyTask(cfg.micro_batch, cfg.global_batch, hook=one_second_per_step)
    box["trainer"] = Trainer(task, cfg, tmp_path / "run")
    return box["trainer"], cfg


def test_the_schedule_follows_elapsed_over_budget_and_the_run_stops_at_it(tmp_path, fake_time):
    lrs = []
    trainer, cfg = _budget_run(tmp_path, fake_time, 30.0, lrs)  # 8 steps an epoch: about 3.75 epochs of data
    summary = trainer.fit()
    assert summary["steps"] == 30 and summary["interrupted"] is None
    assert 3.0 < summary["epochs_done"] < 4.0
    # Before step k > 1 the clock says k-1 seconds, extrapolated one step: the LR of progress epochs x k / budget.
    # The first step has no measured time yet and runs at progress 0.
    expected = [cfg.lr * lr_factor(cfg, cfg.epochs * (k if k > 1 else 0) / 30) for k in range(1, 31)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 30 and state["train_seconds"] == pytest.approx(30.0)


def test_a_resumed_budget_run_keeps_its_clock(tmp_path, fake_time):
    lrs = []
    first, cfg = _budget_run(tmp_path, fake_time, 12.0, lrs)
    first.fit()
    resumed, _ = _budget_run(tmp_path, fake_time, 20.0, lrs)
    resumed.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert resumed.fit()["steps"] == 20  # 8 more one-second steps
    assert lrs[12:] == pytest.approx([cfg.lr * lr_factor(cfg, cfg.epochs * k / 20) for k in range(13, 21)])


def test_clock_extrapolates_from_the_agreed_point():
    clock = BudgetClock(budget_s=100.0)
    assert clock.fraction(5) == 0.0 and not clock.expired  # nothing agreed yet
    clock.agree(10, 20.0)
    assert clock.estimate(15) == pytest.approx(30.0) and clock.fraction(15) == pytest.approx(0.3)
    assert clock.fraction(1000) == 1.0
    clock.agree(50, 100.0)
    assert clock.expired and clock.remaining_s() == 0.0


def test_margin_ramp_in_epochs_is_stretched_like_the_lr():
    # With budget B and nominal epochs E, the task sees progress E x elapsed / B: a ramp over epochs [1, 2] of
    # E = 4 spans the second quarter of the budget, whatever the machine's speed.
    assert margin_schedule(4 * 0.25, 0.2, 1.0, 2.0, "linear") == 0.0
    assert margin_schedule(4 * 0.375, 0.2, 1.0, 2.0, "linear") == pytest.approx(0.1)


def test_the_rate_comes_from_the_last_two_agreements_so_a_slow_first_step_does_not_count():
    clock = BudgetClock(budget_s=100.0)
    clock.agree(1, 20.0)  # start-up: loader workers, autotuning, compilation
    clock.agree(2, 20.5)
    assert clock.estimate(10) == pytest.approx(20.5 + 8 * 0.5)
    assert [s for s in range(1, 40) if BudgetClock.agrees_at(s, 10)] == [1, 2, 4, 8, 10, 20, 30]
