import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.toy import ToyTask, toy_config
from voxfast.errors import ConfigError, VoxfastError
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.task import Task, split_batch
from voxfast.train.trainer import Trainer, accumulation_steps

ROOT = Path(__file__).resolve().parents[2]


def _trainer(tmp_path, name="run", task_kw=None, **cfg_kw):
    cfg = toy_config(**cfg_kw)
    return Trainer(ToyTask(cfg.micro_batch, cfg.global_batch, **(task_kw or {})), cfg, tmp_path / name)


def _count_steps(trainer):
    count = {"n": 0}
    step = trainer.optimizer.step

    def counting_step(*a, **k):
        count["n"] += 1
        return step(*a, **k)

    trainer.optimizer.step = counting_step
    return count


def _weights(trainer):
    return [p.detach().clone() for p in trainer.module.parameters()]


def _assert_same(a, b, exact=True):
    for x, y in zip(a, b, strict=True):
        if exact:
            assert torch.equal(x, y), (x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- accumulation


def test_accumulation_equals_one_large_batch_and_steps_n_over_4(tmp_path):
    big = _trainer(tmp_path, "big", micro_batch=8, global_batch=8, optimizer="sgd")
    acc = _trainer(tmp_path, "acc", micro_batch=2, global_batch=8, optimizer="sgd")
    counts = [_count_steps(big), _count_steps(acc)]
    big.fit()
    acc.fit()
    assert acc.accum == 4
    assert counts[0]["n"] == counts[1]["n"] == 3 * 64 // 8  # 3 epochs of 32 micro-batches / 4 per step
    assert acc.task.calls == 4 * counts[1]["n"]
    _assert_same(_weights(big), _weights(acc), exact=False)


def test_accumulation_must_divide_the_global_batch():
    with pytest.raises(ConfigError, match=r"multiple of train.micro_batch x processes \(4 x 3 = 12\)"):
        accumulation_steps(toy_config(micro_batch=4, global_batch=16), world=3)
    assert accumulation_steps(toy_config(micro_batch=4, global_batch=16), world=2) == 2


# ----------------------------------------------------------------------------------------- checkpoints


def test_epoch_checkpoints_last_best_and_keep_last(tmp_path):
    trainer = _trainer(tmp_path, epochs=4, keep_last=2)
    trainer.fit()
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["best.pt", "epoch_003.pt", "epoch_004.pt", "last.pt"]
    last = load_checkpoint(folder / "last.pt")
    assert last["epoch"] == 4 and last["step"] == 32 and last["batch_in_epoch"] == 0
    best = load_checkpoint(folder / "best.pt")
    assert best["best"]["best"] == pytest.approx(min(best["best"]["best"], last["best"]["best"]))
    assert set(last["rng"][0]) >= {"python", "numpy", "torch"}


def test_resume_mid_epoch_is_exact(tmp_path):
    full = _trainer(tmp_path, "full", micro_batch=2, global_batch=4, task_kw={"dropout": 0.3})
    full.fit()
    part = _trainer(tmp_path, "part", micro_batch=2, global_batch=4, checkpoint_every=1, task_kw={"dropout": 0.3})
    part.fit(max_steps=21)  # 16 steps per epoch: stops 5 steps into epoch 2
    resumed = _trainer(tmp_path, "part", micro_batch=2, global_batch=4, task_kw={"dropout": 0.3})
    resumed.load(tmp_path / "part" / "checkpoints" / "last.pt")
    assert (resumed.epoch, resumed.step, resumed.batch_in_epoch) == (1, 21, 10)
    resumed.fit()
    assert resumed.step == full.step == 48
    _assert_same(_weights(full), _weights(resumed))


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    spec = {"cfg": {"epochs": 2, "micro_batch": 2, "global_batch": 4, "checkpoint_every": 1, "deterministic": True}}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = [sys.executable, "-m", "tests.train.toy"]
    subprocess.run([*script, str(tmp_path / "full"), json.dumps(spec)], check=True, env=env, cwd=ROOT)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*script, str(killed), json.dumps({**spec, "sleep": 0.05})], env=env, cwd=ROOT)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 60
    while time.time() < deadline and not (last.exists() and load_checkpoint(last)["step"] >= 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(last)
    assert state["batch_in_epoch"] > 0 and state["epoch"] == 1  # killed mid-way through the second epoch
    assert not (killed / "final.json").exists()
    subprocess.run([*script, str(killed), json.dumps({**spec, "resume": True})], check=True, env=env, cwd=ROOT)
    full, resumed = (json.loads((tmp_path / d / "final.json").read_text()) for d in ("full", "killed"))
    assert full == resumed and full["steps"] == 32


def test_reproducible_mode_gives_identical_losses_twice(tmp_path):
    runs = []
    for name in ("a", "b"):
        trainer = _trainer(tmp_path, name, micro_batch=4, global_batch=8, log_every=1, deterministic=True,
                           task_kw={"dropout": 0.2})
        trainer.fit()
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs.append(([json.loads(x)["loss"] for x in lines], _weights(trainer)))
    assert len(runs[0][0]) == 24 and runs[0][0] == runs[1][0]
    _assert_same(runs[0][1], runs[1][1])


# ----------------------------------------------------------------------------------------- DDP


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    cfg = {"epochs": 2, "micro_batch": 2, "global_batch": 8}  # 2 processes x micro 2 x accumulation 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "tests.train.toy", str(tmp_path / "one"), json.dumps({"cfg": cfg})]
    subprocess.run(single, check=True, env=env, cwd=ROOT)
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           "-m", "tests.train.toy", str(tmp_path / "two"), json.dumps({"cfg": cfg, "ddp": True})]
    subprocess.run(ddp, check=True, env=env, cwd=ROOT, timeout=300)
    one, two = (json.loads((tmp_path / d / "final.json").read_text()) for d in ("one", "two"))
    assert one["steps"] == two["steps"] == 16
    np.testing.assert_allclose(np.concatenate([np.ravel(w) for w in two["weights"]]),
                               np.concatenate([np.ravel(w) for w in one["weights"]]), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_non_finite_steps_are_skipped_and_counted(tmp_path, precision):
    trainer = _trainer(tmp_path, precision, precision=precision, epochs=1, task_kw={"nan_steps": (3,)},
                       optimizer="sgd")
    before = {}

    def snapshot(step):
        if step in (3, 4):
            before[step] = _weights(trainer)

    trainer.task.hook = snapshot
    summary = trainer.fit()
    # fp16 also skips the first steps whose scaled gradients overflow while GradScaler lowers its scale.
    assert summary["nonfinite_steps"] == 1 if precision == "fp32" else summary["nonfinite_steps"] >= 1
    _assert_same(before[3], before[4])  # step 3 changed nothing
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())
    assert not torch.equal(before[4][1], _weights(trainer)[1])  # later steps train again


def test_consecutive_non_finite_steps_abort_with_a_clear_message(tmp_path):
    trainer = _trainer(tmp_path, max_nonfinite=3, log_every=1, task_kw={"nan_steps": (2, 3, 4, 5)})
    with pytest.raises(VoxfastError, match=r"3 optimizer steps in a row had a non-finite loss.*lower train.lr"):
        trainer.fit()


def test_clipping_bounds_the_update(tmp_path):
    trainer = _trainer(tmp_path, optimizer="sgd", momentum=0.0, lr=1.0, clip_grad_norm=0.01, epochs=1,
                       min_lr_ratio=1.0)  # a constant LR of 1: the update is the clipped gradient
    start = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
    trainer.fit(max_steps=1)
    end = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
    assert torch.linalg.vector_norm(end - start).item() == pytest.approx(0.01, rel=1e-4)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_result(tmp_path, caplog):
    plain = _trainer(tmp_path, "plain", micro_batch=8, global_batch=8, optimizer="sgd")
    plain.fit()
    oom = _trainer(tmp_path, "oom", micro_batch=8, global_batch=8, optimizer="sgd", task_kw={"oom_above": 2})
    with caplog.at_level(logging.WARNING):
        summary = oom.fit()
    assert summary["micro_batch"] == 2 and oom.split == 4
    assert "out of memory: micro-batch 8 -> 4, accumulation 1 -> 2 (global batch 8 kept)" in caplog.text
    _assert_same(_weights(plain), _weights(oom), exact=False)


def test_out_of_memory_at_one_sample_raises(tmp_path):
    trainer = _trainer(tmp_path, micro_batch=2, global_batch=2, task_kw={"oom_above": -1})
    trainer.task.oom_above = 0.5  # every batch "fails"
    with pytest.raises(VoxfastError, match=r"out of memory with micro-batch 1 .*voxfast tune"):
        trainer.fit()


def test_sigterm_writes_a_checkpoint_and_resume_finishes_the_same(tmp_path):
    full = _trainer(tmp_path, "full", epochs=2)
    full.fit()

    def kill_at(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = _trainer(tmp_path, "stopped", epochs=2, task_kw={"hook": kill_at})
    summary = stopped.fit()
    assert summary["interrupted"] == "SIGTERM" and summary["steps"] == 5
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    resumed = _trainer(tmp_path, "stopped", epochs=2)
    resumed.load(tmp_path / "stopped" / "checkpoints" / "last.pt")
    resumed.fit()
    _assert_same(_weights(full), _weights(resumed))


# ----------------------------------------------------------------------------------------- switches and logs


def test_compile_wraps_the_forward_but_checkpoints_hold_the_plain_module(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return torch.nn.Sequential(module)  # a wrapper that changes state_dict keys, as OptimizedModule does

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = _trainer(tmp_path, compile=True, epochs=1)
    assert compiled == [trainer.module] and trainer.model is not trainer.module
    trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert set(state["model"]) == {"1.weight", "1.bias"}


def test_log_lines_metrics_and_profile_trace(tmp_path, caplog):
    trainer = _trainer(tmp_path, epochs=1, log_every=2)
    trainer._profile = (2, 3)
    with caplog.at_level(logging.INFO):
        trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert list(records[0])[:4] == ["step", "epoch", "loss", "lr"]
    assert {"samples_per_s", "data_wait_pct", "eta_s", "nonfinite_steps"} <= set(records[0])
    assert "data-wait" in caplog.text and "samples/s" in caplog.text
    assert (tmp_path / "run" / "profile_steps_2-3_rank0.json").stat().st_size > 0


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    _trainer(tmp_path, epochs=1, log_every=2, tensorboard=True).fit()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_split_batch_cuts_per_sample_entries_and_counts_failures_once():
    batch = {"label": np.arange(5), "rows": np.arange(5), "slot": 3, "size": 6, "failed": 1,
             "aug": {"kind": torch.arange(5), "snr": np.zeros((5, 7))}}
    pieces = split_batch(batch, 2)
    assert [len(p["label"]) for p in pieces] == [2, 3] or [len(p["label"]) for p in pieces] == [3, 2]
    assert np.concatenate([p["rows"] for p in pieces]).tolist() == list(range(5))
    assert torch.cat([p["aug"]["kind"] for p in pieces]).tolist() == list(range(5))
    assert [p["failed"] for p in pieces] == [1, 0] and all(p["slot"] == 3 for p in pieces)


def test_validation_every_epoch_picks_best_by_the_task_metric(tmp_path):
    figures = iter([0.30, 0.10, 0.20])

    class Validated(ToyTask):
        best_metric = ("err", "min")

        def evaluate(self, model, device, out_dir):
            assert not model.training
            return {"err": next(figures), "threshold": 0.5}

    cfg = toy_config(epochs=3, validate_every=1, keep_last=0)
    trainer = Trainer(Validated(cfg.micro_batch, cfg.global_batch), cfg, tmp_path / "run")
    trainer.fit()
    folder = tmp_path / "run" / "checkpoints"
    best = load_checkpoint(folder / "best.pt")
    assert best["epoch"] == 2 and best["validation"] == {"err": 0.10, "threshold": 0.5}
    assert load_checkpoint(folder / "last.pt")["validation"]["err"] == 0.20
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["validation"]["err"] for x in lines if "validation" in x] == [0.30, 0.10, 0.20]


class _MinimalTask(Task):
    """Only the members the protocol requires; everything else comes from its defaults."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
        self.y = self.x.sum(1)

    def build_model(self):
        return torch.nn.Linear(4, 1)

    def train_batches(self, epoch, skip=0):
        return [{"x": self.x[i : i + 8], "label": self.y[i : i + 8]} for i in range(0, 32, 8)][skip:]

    def training_step(self, model, batch, device):
        pred = model(batch["x"].to(device)).squeeze(1)
        return {"loss": ((pred - batch["label"].to(device)) ** 2).mean(), "output": pred, "n": len(batch["label"])}


def test_a_task_written_to_the_protocol_alone_trains_validates_and_checkpoints(tmp_path):
    """The trainer calls every optional member directly, so the protocol's defaults must make them work."""
    task = _MinimalTask()
    assert task.on_step(None, 0.0) == {} and task.checkpoint_extra() == {"task": "task"}
    assert task.best_metric == ("loss", "min")
    with pytest.raises(VoxfastError, match="the task task has no demo data generator"):
        task.make_demo_data(tmp_path)
    pieces = task.split_batch(task.train_batches(0)[0], 2)
    assert [len(p["label"]) for p in pieces] == [4, 4]
    cfg = toy_config(epochs=2, validate_every=1)
    trainer = Trainer(task, cfg, tmp_path / "run")
    trainer.split = 2  # as after an out-of-memory error: the default split_batch cuts every micro-batch
    summary = trainer.fit()
    assert summary["steps"] == 8 and trainer.evaluate() == {}
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["task"] == "task" and state["epoch"] == 2
