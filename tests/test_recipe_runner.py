"""`voxfast recipe` end to end on tiny trees: VoxCeleb-shaped data (VoxCeleb2 as real AAC .m4a written here with
PyAV, official trial-list format, MUSAN and RIRS_NOISES layouts) through every stage of `voxceleb/resnet34`,
large-margin stage included; a recipe stopped between stages goes on from there; and the own-data path, a folder
per speaker to an EER, with the shipped small-data recipe."""

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxfast import recipe as recipe_module
from voxfast.cli import main
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.errors import VoxfastError
from voxfast.eval.embeddings import load_embeddings
from voxfast.recipe import Recipe, run_recipe
from voxfast.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent

av = pytest.importorskip("av")  # in the dev extra: CI runs this file

SPEC = CorpusSpec(seed=4, train_speakers=6, test_speakers=3, train_utts=4, test_utts=3, min_seconds=1.0,
                  max_seconds=1.6, noise_files=2, rirs=2, workers=1)
TINY = ["model.name=resnetse_demo", "model.n_mels=40", "model.embed_dim=16", "model.pooling=tstp",
        "data.num_frames=40", "data.num_workers=0", "train.epochs=2", "train.micro_batch=4", "train.global_batch=4",
        "train.device=cpu", "train.precision=fp32", "train.log_every=1", "train.tensorboard=false",
        "eval.batch_seconds=20"]


def _write_m4a(path: Path, wave: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_corpus(root, SPEC)
    return root


@pytest.fixture(scope="module")
def vox_data(corpus, tmp_path_factory):
    """DATA/voxceleb1/wav (test speakers), DATA/voxceleb2/dev/aac (.m4a, training speakers), DATA/veri_test2.txt,
    DATA/musan/{noise,speech,music}/..., DATA/RIRS_NOISES/simulated_rirs/smallroom/Room001/."""
    data = tmp_path_factory.mktemp("voxdata")
    used = sorted({rel for line in (corpus / "trials.txt").read_text().splitlines() for rel in line.split()[1:]})
    # wav/test/idNNNNN/x.wav of the synthetic corpus -> VoxCeleb's idNNNNN/<video>/<NNNNN>.wav
    names = {rel: f"{Path(rel).parts[-2]}/vid{k % 2}/{k:05d}.wav" for k, rel in enumerate(used)}
    for rel, name in names.items():
        (data / "voxceleb1/wav" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / rel, data / "voxceleb1/wav" / name)
    trials = [line.split() for line in (corpus / "trials.txt").read_text().splitlines() if line]
    (data / "veri_test2.txt").write_text("".join(f"{lab} {names[a]} {names[b]}\n" for lab, a, b in trials))
    for i, line in enumerate((corpus / "train_list.txt").read_text().splitlines()):
        spk, rel = line.split()
        wave, rate = sf.read(corpus / rel, dtype="float32")
        _write_m4a(data / f"voxceleb2/dev/aac/{spk}/v{i % 2}/{i:05d}.m4a", wave, rate)
    for kind in ("noise", "speech", "music"):
        for f in (corpus / kind).glob("*.wav"):
            (data / "musan" / kind / "part").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, data / "musan" / kind / "part" / f.name)
    for f in (corpus / "rirs").glob("*.wav"):
        (data / "RIRS_NOISES/simulated_rirs/smallroom/Room001").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, data / "RIRS_NOISES/simulated_rirs/smallroom/Room001" / f.name)
    return data


@pytest.fixture(scope="module")
def vox_run(vox_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("voxrun") / "run"
    overrides = [*TINY, "train.average_last=2", "train.keep_last=2", "eval.cohort=12", "eval.top_n=5"]
    spec = Recipe("voxceleb/resnet34", vox_data, out, overrides)
    calls = []

    def stop_before_extract(recipe):  # a recipe killed between stages
        calls.append("extract")
        raise KeyboardInterrupt

    original = recipe_module.STAGE_FUNCTIONS["extract"]
    recipe_module.STAGE_FUNCTIONS["extract"] = stop_before_extract
    try:
        with pytest.raises(KeyboardInterrupt):
            run_recipe(spec)
    finally:
        recipe_module.STAGE_FUNCTIONS["extract"] = original
    done = sorted(p.stem for p in (out / "stages").glob("*.json"))
    last = out / "lm" / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    result = run_recipe(spec)  # goes on: every stage before extract is skipped
    return {"out": out, "done_before": done, "result": result, "lm_untouched": last.stat().st_mtime_ns == stamp,
            "spec": spec, "calls": calls}


def test_every_voxceleb_stage_runs_and_a_stopped_recipe_goes_on(vox_run):
    out = vox_run["out"]
    assert vox_run["calls"] == ["extract"]
    assert vox_run["done_before"] == ["average", "lm", "pack", "prepare", "train"]
    assert vox_run["lm_untouched"]  # the large-margin run was not trained again
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == sorted(recipe_module.STAGES)
    packed = (out / "store" / "index.tsv").read_text().splitlines()
    assert sum(".m4a" in line for line in packed) == SPEC.train_speakers * SPEC.train_utts  # AAC decoded once


def test_the_results_table_scores_the_converted_trial_list(vox_run, corpus):
    out, result = vox_run["out"], vox_run["result"]
    (row,) = result["rows"]
    n_trials = len((corpus / "trials.txt").read_text().splitlines())
    assert row["trials"] == "vox1_O" and row["n_trials"] == n_trials
    assert 0 <= row["eer"] <= 100 and row["published_eer"] == 0.723
    assert result["model"] == str(out / "lm" / "checkpoints" / "last.pt")
    assert "| vox1_O |" in (out / "results.md").read_text()
    assert set(result["stage_seconds"]) == set(recipe_module.STAGES) - {"table"}  # each earlier stage, timed
    metrics = json.loads((out / "results" / "vox1_O" / "metrics.json").read_text())
    assert metrics["eer"] == row["eer"]


def test_the_large_margin_stage_starts_from_the_average_with_the_original_speed_rows(vox_run):
    import torch

    out = vox_run["out"]
    average = torch.load(out / "train" / "avg_model.pt", weights_only=False)["model"]
    assert f"init_from: {out / 'train' / 'avg_model.pt'}" in (out / "lm" / "config.yaml").read_text()
    assert average["head.weight"].shape[0] == 3 * SPEC.train_speakers  # speed-perturbed stage 1


def test_a_changed_output_makes_its_stage_run_again(vox_run):
    out, spec = vox_run["out"], vox_run["spec"]
    (out / "results.md").write_text("edited\n")
    run_recipe(spec)
    assert "| vox1_O |" in (out / "results.md").read_text()


def test_stage_selection_is_checked(vox_run):
    with pytest.raises(VoxfastError, match=r"unknown stage.*the stages are prepare, pack"):
        run_recipe(vox_run["spec"], ["trian"])
    with pytest.raises(VoxfastError, match="--stages or --from, not both"):
        run_recipe(vox_run["spec"], ["score"], "eval")


def _own_tree(corpus, data):
    """A folder per speaker, two session folders each (so target trials can cross sessions)."""
    for i, line in enumerate((corpus / "train_list.txt").read_text().splitlines()):
        spk, rel = line.split()
        (data / spk / f"session{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / rel, data / spk / f"session{i % 2}" / Path(rel).name)
    return data


def test_own_recordings_from_a_folder_per_speaker_to_an_eer(corpus, tmp_path, capsys):
    data = _own_tree(corpus, tmp_path / "mine")
    out = tmp_path / "run"
    assert main(["recipe", "small", *TINY, "data.n_per_speaker=2", "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| own |" in printed and (out / "results.json").is_file()
    prepared = json.loads((out / "data" / "prepared.json").read_text())
    assert prepared["augment"] == [] and Path(prepared["train_list"]).is_file()


def test_under_torchrun_every_rank_trains_and_rank_0_alone_runs_the_other_stages(corpus, tmp_path):
    data, out = _own_tree(corpus, tmp_path / "mine"), tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
           "-m", "voxfast", "recipe", "small", *TINY, "data.n_per_speaker=2", "train.global_batch=8",
           "--data", str(data), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| own |") == 1  # the table, printed by rank 0 only
    assert load_checkpoint(out / "train" / "checkpoints" / "last.pt")["world"] == 2
    shards = [load_embeddings(out / "embeddings" / f"test.rank{r}.npz")[0] for r in range(2)]
    ids = load_embeddings(out / "embeddings" / "test.npz")[0]
    assert shards[0] and shards[1] and ids == shards[0] + shards[1]  # each rank embedded half; rank 0 gathered
    trials = (out / "data" / "own" / "trials.txt").read_text().splitlines()
    assert set(ids) == {name for line in trials for name in line.split()[1:]}
    assert sorted(p.name for p in (out / "stages").iterdir()) == [
        f"{s}.json" for s in sorted(set(recipe_module.STAGES) - {"lm"})]
