import math

import pytest
import torch
from torch import nn

from voxfast.config import TrainConfig
from voxfast.train.schedule import warmup_cosine
from voxfast.train.trainer import Trainer


class ToyTask:
    """Linear regression without BatchNorm: accumulated micro-batches must equal one big batch."""

    def __init__(self, micro: int, n: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
        self.micro = micro
        self.steps = 0

    def build_model(self):
        torch.manual_seed(1)
        return nn.Linear(4, 1)

    def train_batches(self, epoch):
        return [{"x": self.x[i : i + self.micro], "label": self.y[i : i + self.micro]}
                for i in range(0, len(self.x), self.micro)]

    def training_step(self, model, batch, device):
        pred = model(batch["x"].to(device)).squeeze(1)
        loss = ((pred - batch["label"].to(device)) ** 2).mean()
        return {"loss": loss, "output": pred, "n": len(batch["label"])}

    def evaluate(self, model, device, out_dir):
        return {}


def _train(tmp_path, micro, global_batch, epochs=3):
    cfg = TrainConfig(epochs=epochs, global_batch=global_batch, micro_batch=micro, lr=0.05, weight_decay=0.0,
                      warmup_epochs=0.0, clip_grad_norm=0.0, precision="fp32", device="cpu", log_every=1000)
    trainer = Trainer(ToyTask(micro), cfg, tmp_path / f"run{micro}")
    count = 0
    step = trainer.optimizer.step

    def counting_step(*a, **k):
        nonlocal count
        count += 1
        return step(*a, **k)

    trainer.optimizer.step = counting_step
    trainer.fit()
    return trainer, count


def test_accumulation_equals_one_large_batch(tmp_path):
    big, big_steps = _train(tmp_path, micro=8, global_batch=8)
    acc, acc_steps = _train(tmp_path, micro=2, global_batch=8)
    assert big_steps == acc_steps == 3 * 32 // 8
    for a, b in zip(big.model.parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_per_epoch_and_resume_continues(tmp_path):
    trainer, _ = _train(tmp_path, micro=8, global_batch=8, epochs=2)
    ckpts = sorted((tmp_path / "run8" / "checkpoints").glob("epoch_*.pt"))
    assert [p.name for p in ckpts] == ["epoch_001.pt", "epoch_002.pt"]
    cfg = TrainConfig(epochs=2, global_batch=8, micro_batch=8, lr=0.05, weight_decay=0.0, warmup_epochs=0.0,
                      clip_grad_norm=0.0, precision="fp32", device="cpu")
    resumed = Trainer(ToyTask(8), cfg, tmp_path / "resumed")
    resumed.load(ckpts[0])
    assert resumed.epoch == 1 and resumed.step == 4
    resumed.fit()
    for a, b in zip(trainer.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_warmup_cosine_values():
    assert warmup_cosine(1, 100, 10, 0.1) == 0.1
    assert warmup_cosine(2.5, 10, 1, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 1.5 / 9)))
    assert warmup_cosine(10, 100, 10, 0.1) == 1.0
    assert abs(warmup_cosine(55, 100, 10, 0.1) - 0.55) < 1e-12  # half-way down the cosine
    assert abs(warmup_cosine(100, 100, 10, 0.1) - 0.1) < 1e-12
    assert warmup_cosine(120, 100, 10, 0.1) == pytest.approx(0.1)  # clamped past the end
