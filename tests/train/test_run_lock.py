"""One run per run folder: the second run is refused naming the holder, a dead holder's lock is taken over."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.toy import ToyTask, toy_config
from voxfast.errors import VoxfastError
from voxfast.train.lock import LOCK_NAME, run_folder_lock
from voxfast.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from voxfast.train.lock import run_folder_lock\n"
        "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holders_pid(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(VoxfastError, match=rf"run is in use by another run \(PID {proc.pid} on .*another "
                                               r"train.out_dir"), run_folder_lock(tmp_path / "run"):
            pass
        cfg = toy_config()
        trainer = Trainer(ToyTask(cfg.micro_batch, cfg.global_batch), cfg, tmp_path / "run")
        with pytest.raises(VoxfastError, match=f"PID {proc.pid}"):
            trainer.fit()
        assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before writing anything
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_run_is_taken_over_and_the_takeover_logged(tmp_path, caplog):
    proc = _holder(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert f"PID {proc.pid}" in (tmp_path / "run" / LOCK_NAME).read_text()  # left behind
    with caplog.at_level(logging.WARNING, logger="voxfast.train.lock"), run_folder_lock(tmp_path / "run"):
        assert f"PID {os.getpid()}" in (tmp_path / "run" / LOCK_NAME).read_text()
    assert f"took over the run lock left by PID {proc.pid}" in caplog.text
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # a clean release empties it


def test_the_lock_is_reentrant_in_one_process_and_runs_in_turn_share_a_folder(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="voxfast.train.lock"):
        with run_folder_lock(tmp_path / "run"), run_folder_lock(tmp_path / "run"):
            pass
        for _ in range(2):
            cfg = toy_config()
            Trainer(ToyTask(cfg.micro_batch, cfg.global_batch), cfg, tmp_path / "run").fit(max_steps=1)
    assert "took over" not in caplog.text
