"""`voxfast tune`: micro-batch search under (fake) out-of-memory, the worker rule, and the written config."""

import os

import pytest
import torch

from tests.bench.corpus import tiny_overrides
from voxfast.bench.tune import (
    MicroProbe,
    choose_micro_batch,
    choose_workers,
    micro_candidates,
    tune,
    worker_candidates,
)
from voxfast.cli import main
from voxfast.config import find_config, load_config
from voxfast.errors import VoxfastError
from voxfast.tasks.speaker import SpeakerTask

DEMO = find_config("demo")
CPU = torch.device("cpu")


@pytest.mark.parametrize(("global_batch", "n_per_speaker", "max_micro", "expected"), [
    (64, 2, 1024, [2, 4, 8, 16, 32, 64]),
    (96, 2, 1024, [2, 4, 8, 16, 32, 64, 96]),  # the global batch itself after the powers of two
    (96, 2, 48, [2, 4, 8, 16, 32]),
    (24, 1, 1024, [2, 4, 8, 16, 24]),  # never 1: BatchNorm needs two samples
    (12, 3, 1024, [3, 6, 12]),
])
def test_micro_candidates(global_batch, n_per_speaker, max_micro, expected):
    assert micro_candidates(global_batch, n_per_speaker, max_micro) == expected


@pytest.mark.parametrize(("rates", "expected"), [
    ({0: 100.0, 1: 190.0, 2: 200.0, 4: 201.0}, 2),  # 190 is 5.5 % below the best, 200 within 5 %
    ({0: 96.0, 1: 99.0, 2: 100.0}, 0),  # exactly 4 % below: the fewest wins
    ({0: 94.0, 1: 100.0, 2: 97.0}, 1),
    ({4: 50.0}, 4),
])
def test_fewest_workers_within_five_percent_of_the_best(rates, expected):
    assert choose_workers(rates) == expected


def test_default_worker_candidates_stop_at_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert worker_candidates(None) == [w for w in (1, 2, 4, 8) if w <= (os.cpu_count() or 1)]
    assert worker_candidates([4, 0, 4]) == [0, 4]  # asked for explicitly: kept


def test_fastest_rule_picks_the_best_samples_per_s_among_usable_fits():
    probes = [MicroProbe(2, True, True, 10.0), MicroProbe(4, True, True, 30.0), MicroProbe(8, True, False, 99.0),
              MicroProbe(16, True, True, 20.0), MicroProbe(32, False, True, note="out of memory")]
    assert choose_micro_batch(probes, fastest=True).micro_batch == 4
    assert choose_micro_batch(probes, fastest=False).micro_batch == 16
    with pytest.raises(VoxfastError, match="no micro-batch fits"):
        choose_micro_batch([MicroProbe(2, False, True, note="out of memory")], fastest=False)


@pytest.mark.parametrize(("limit", "tried", "expected"), [
    (16, [2, 4, 8, 16, 24], 8),  # 16 fits but does not divide 24; 24 runs out of memory
    (4, [2, 4, 8], 4),  # the search stops at the first out-of-memory
])
def test_fake_oom_picks_the_largest_fitting_divisor(tiny_corpus, monkeypatch, limit, tried, expected):
    real_step = SpeakerTask.training_step

    def step(self, model, batch, device):
        if len(batch["label"]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return real_step(self, model, batch, device)

    monkeypatch.setattr(SpeakerTask, "training_step", step)
    cfg = load_config(DEMO, tiny_overrides(tiny_corpus, "train.global_batch=24", "train.micro_batch=24"))
    result = tune(cfg, CPU, max_micro=1024, workers=[0], fastest=False, batches=2)
    assert [p.micro_batch for p in result.micro_probes] == tried
    assert [p.fits for p in result.micro_probes] == [True] * (len(tried) - 1) + [False]
    assert result.micro_probes[-1].note == "out of memory"
    assert result.micro_batch == expected and result.num_workers == 0


def test_cli_writes_a_loadable_config_with_the_choices(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "tuned.yaml"
    overrides = tiny_overrides(tiny_corpus, "train.global_batch=8", "train.micro_batch=8", "train.lr=0.01")
    assert main(["tune", "--out", str(out), "--workers", "0,1", "--batches", "3", *overrides]) == 0
    printed = capsys.readouterr().out
    tuned = load_config(out)
    assert f"train.micro_batch={tuned.train.micro_batch} data.num_workers={tuned.data.num_workers}" in printed
    assert tuned.train.micro_batch in (2, 4, 8) and tuned.data.num_workers in (0, 1)
    assert "fastest samples/s" in printed  # a CPU: timed, not sized by memory
    assert tuned.train.lr == 0.01 and tuned.train.global_batch == 8  # the rest of the input config is kept
