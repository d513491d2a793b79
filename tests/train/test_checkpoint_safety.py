"""Checkpoints never run code: voxfast writes only tensors and plain values and loads with weights_only=True.

A downloaded speaker model is untrusted input; a `.pt` whose pickle calls `os.system` must be refused, by the
library and by every command that reads checkpoints, before anything runs.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.toy import ToyTask, toy_config
from voxfast.errors import VoxfastError
from voxfast.train.checkpoint import load_checkpoint, save_checkpoint
from voxfast.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {}, "x": _Payload(marker)}, path)
    return path, marker


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(malicious):
    path, marker = malicious
    with pytest.raises(VoxfastError, match=r"refusing to load checkpoint .*model.pt: it needs posix.system.*"
                                           r"weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", [["extract", "{ckpt}", "{dir}/t.txt", "--out", "{dir}/e.npz"], ["export", "{ckpt}"],
                                     ["eval", "--checkpoint", "{ckpt}", "--trials", "{dir}/t.txt"]])
def test_commands_refuse_it_too(malicious, command):
    path, marker = malicious
    (path.parent / "t.txt").write_text("1 a.wav b.wav\n")
    args = [a.format(ckpt=path, dir=path.parent) for a in command]
    proc = subprocess.run([sys.executable, "-m", "voxfast", *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "refusing to load checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_the_api_refuses_it(malicious):
    import voxfast

    path, marker = malicious
    with pytest.raises(VoxfastError, match="refusing to load checkpoint"):
        voxfast.load(path, device="cpu")
    assert not marker.exists()


def test_random_bytes_are_a_damaged_checkpoint_not_an_unpickling_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VoxfastError, match="not a checkpoint, or damaged"):
        load_checkpoint(path)


def test_training_checkpoints_load_with_plain_torch_weights_only(tmp_path):
    cfg = toy_config(epochs=1)
    Trainer(ToyTask(cfg.micro_batch, cfg.global_batch), cfg, tmp_path).fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)  # no allow-list needed
    assert isinstance(state["rng"][0]["numpy"][1], torch.Tensor)


def test_numpy_state_round_trips_through_a_resume(tmp_path):
    cfg = toy_config(epochs=1)
    trainer = Trainer(ToyTask(cfg.micro_batch, cfg.global_batch), cfg, tmp_path)
    trainer.fit()
    np.random.seed(7)
    expected = np.random.random(3)
    np.random.seed(7)
    trainer.save(tmp_path / "mid.pt")
    np.random.seed(123)
    Trainer(ToyTask(cfg.micro_batch, cfg.global_batch), cfg, tmp_path / "b").load(tmp_path / "mid.pt")
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_older_checkpoints_with_numpy_arrays_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"rng": [{"numpy": np.random.get_state()}], "eer": np.float64(3.5)}, path)  # as voxfast wrote them
    state = load_checkpoint(path)
    assert state["rng"][0]["numpy"][1].dtype == np.uint32 and state["eer"] == 3.5


def test_saving_anything_but_tensors_and_plain_values_is_a_bug_caught_at_once(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint state\['x'\] is a float64"):
        save_checkpoint({"x": np.float64(1.0)}, tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())
