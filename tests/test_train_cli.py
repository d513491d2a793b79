"""`voxfast train` as users run it: presets, exact resume (in process, after SIGTERM, --resume auto), torchrun
with two gloo processes, checkpoint averaging."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from voxfast.cli import main
from voxfast.config import load_config
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.tasks.speaker import SpeakerTask
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
SPEC = CorpusSpec(seed=5, train_speakers=4, test_speakers=2, train_utts=6, test_utts=2, min_seconds=1.0,
                  max_seconds=1.5, noise_files=2, rirs=2, workers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    make_corpus(root, SPEC)
    return root


def _args(root, out, *extra):
    return [f"data.train_list={root}/train_list.txt", f"eval.trials={root}/trials.txt", f"train.out_dir={out}",
            "data.num_frames=30", "data.num_workers=0", "train.micro_batch=4", "train.global_batch=8",
            "model.name=resnetse_demo", "model.embed_dim=16", "train.log_every=1", "train.device=cpu",
            "train.tensorboard=false", *extra]


def _weights(path):
    return load_checkpoint(path)["model"]


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_presets_lie_between_the_config_and_the_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  precision: bf16\n  epochs: 7\n")
    presets = [ROOT / "configs" / "presets" / "reproducible.yaml"]
    cfg = load_config(recipe, ["train.seed=5"], presets)
    assert (cfg.train.precision, cfg.train.deterministic, cfg.train.epochs, cfg.train.seed) == ("fp32", True, 7, 5)
    speed = load_config(recipe, [], [ROOT / "configs" / "presets" / "speed.yaml"])
    assert speed.train.compile and speed.train.channels_last and speed.augment.placement == "device"


def test_unknown_preset_and_bad_profile_range_are_user_errors(tmp_path, capsys):
    assert main(["train", "--preset", "fastest", *_args(tmp_path, tmp_path / "run")]) == 2
    assert "unknown preset 'fastest': choose one of ['reproducible', 'speed']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--profile", "5", *_args(tmp_path, tmp_path / "run")])
    assert info.value.code == 2
    assert "expected N:M with 1 <= N <= M" in capsys.readouterr().err


def test_dry_run_prints_a_loadable_config_and_the_steps_the_run_takes(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dry-run", *_args(corpus, out, "data.n_per_speaker=2", "train.epochs=1")]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()  # nothing trained, nothing written
    (tmp_path / "printed.yaml").write_text(printed)
    cfg = load_config(tmp_path / "printed.yaml")
    assert (cfg.head.name, cfg.train.micro_batch, cfg.data.n_per_speaker) == ("proto", 4, 2)  # small's head
    notes = (line[2:].split(": ", 1) for line in printed.splitlines() if line.startswith("# "))
    facts = {k: int(v.replace(",", "")) if v.replace(",", "").isdigit() else v for k, v in notes}
    assert facts["speakers"] == 4 and facts["utterances"] == 24
    task = SpeakerTask(cfg)
    n_params = sum(p.numel() for p in task.build_model().parameters())
    assert facts["embedder_parameters"] + facts["head_parameters"] == n_params
    summary = Trainer(task, cfg.train, out).fit()
    assert facts["steps_per_epoch"] == summary["steps"]


def test_dry_run_of_a_recipe_before_its_data_exist(tmp_path, capsys):
    assert main(["train", "--dry-run", "--config", "demo", f"data.train_list={tmp_path}/absent.txt"]) == 0
    assert f"# steps_per_epoch: unknown until {tmp_path}/absent.txt exists" in capsys.readouterr().out


def test_speaker_run_resumed_mid_epoch_matches_an_uninterrupted_one(corpus, tmp_path):
    """The real data path (sampler position, crop seeds, loader worker) continues exactly after a resume."""
    def trainer(out, *extra):
        cfg = load_config(None, _args(corpus, out, "train.epochs=2", "data.num_workers=1", "train.checkpoint_every=1",
                                      *extra), [ROOT / "configs" / "presets" / "reproducible.yaml"])
        task = SpeakerTask(cfg)
        return Trainer(task, cfg.train, out)

    full = trainer(tmp_path / "full")
    full.fit()
    steps = full.step
    part = trainer(tmp_path / "part")
    part.fit(max_steps=steps // 2 + 1)  # mid-way through the second epoch
    resumed = trainer(tmp_path / "part")
    resumed.load(tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed.batch_in_epoch > 0
    resumed.fit()
    _same_weights(full.module.state_dict(), resumed.module.state_dict())


def test_sigterm_stops_cleanly_and_resume_auto_finishes(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "voxfast", "train", "--no-eval", *_args(corpus, out, "train.epochs=30")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and
                                          len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received" in err and "resume with --resume" in err and "Traceback" not in err
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 3 <= state["step"] < 30 * 3
    done = subprocess.run([*cmd[:5], "--resume", "auto", *cmd[5:-1], "train.epochs=2"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {out / 'checkpoints' / 'last.pt'}" in done.stderr


def test_torchrun_two_gloo_processes_train_the_speaker_task(corpus, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
           "-m", "voxfast", "train", "--no-eval", *_args(corpus, out, "train.epochs=1")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])  # printed once, by rank 0
    assert summary["steps"] >= 1 and summary["interrupted"] is None
    state = load_checkpoint(out / "checkpoints" / "epoch_001.pt")
    assert state["world"] == 2 and len(state["rng"]) == 2
    assert "(4 x 1 x 2 processes)" in proc.stderr  # accumulation = 8 / (4 x 2)


def test_average_checkpoints_command(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--no-eval", *_args(corpus, out, "train.epochs=3", "train.keep_last=0")]) == 0
    capsys.readouterr()
    assert main(["average-checkpoints", str(out), "--last", "2", "--out", str(tmp_path / "avg.pt")]) == 0
    avg = load_checkpoint(tmp_path / "avg.pt")
    assert avg["averaged_from"] == ["epoch_002.pt", "epoch_003.pt"]
    a, b = _weights(out / "checkpoints" / "epoch_002.pt"), _weights(out / "checkpoints" / "epoch_003.pt")
    key = next(k for k, v in a.items() if v.is_floating_point())
    torch.testing.assert_close(avg["model"][key], (a[key].double() + b[key].double()).div(2).to(a[key].dtype))
    assert main(["average-checkpoints", str(out), "--last", "9", "--out", str(tmp_path / "x.pt")]) == 2
