"""`voxfast.load(ckpt)`: embed, score and verify files and arrays in one line each."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import voxfast
from voxfast.audio.io import read_audio, resample
from voxfast.cli import main
from voxfast.data.manifest import read_trials
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.errors import VoxfastError
from voxfast.eval.embeddings import extract_embeddings
from voxfast.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    spec = CorpusSpec(seed=3, train_speakers=4, test_speakers=3, train_utts=4, test_utts=3, min_seconds=1.0,
                      max_seconds=2.0, noise_files=1, rirs=1, workers=1)
    make_corpus(root / "data", spec)
    args = ["train", f"data.train_list={root}/data/train_list.txt", f"eval.trials={root}/data/trials.txt",
            f"train.out_dir={root}/run", "data.num_frames=50", "data.num_workers=0", "train.epochs=2",
            "train.micro_batch=4", "train.global_batch=8", "model.embed_dim=32", "train.device=cpu"]
    assert main(args) == 0
    return root


def test_load_restores_the_threshold_of_the_last_evaluation(run):
    model = voxfast.load(run / "run" / "checkpoints" / "last.pt", device="cpu")
    metrics = json.loads((run / "run" / "metrics.json").read_text())
    assert model.threshold == pytest.approx(metrics["eer_threshold"])
    assert model.sample_rate == 16000
    with pytest.raises(VoxfastError, match=r"holds no decision threshold.*voxfast eval --checkpoint"):
        voxfast.load(run / "run" / "checkpoints" / "epoch_001.pt", device="cpu").verify("a", "b")


def test_embed_score_and_verify_files_and_arrays(run):
    model = voxfast.load(run / "run" / "checkpoints" / "last.pt", device="cpu")
    trial = read_trials(run / "data" / "trials.txt")[0]
    a, b = (str(run / "data" / name) for name in (trial.enroll, trial.test))
    reference = extract_embeddings(model.embedder, [a, b], torch.device("cpu"))
    emb = model.embed([a, b])
    assert emb.shape == reference.shape and emb.dtype == np.float32
    np.testing.assert_allclose(emb, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    score = model.score(a, b)
    assert score == pytest.approx(float(reference[0] @ reference[1]), abs=1e-5)
    assert model.verify(a, b) == (score >= model.threshold)
    assert model.verify(a, b, threshold=score) and not model.verify(a, b, threshold=score + 1e-3)
    wave = read_audio(a)
    np.testing.assert_allclose(model.embed(wave), emb[0], atol=1e-5)
    np.testing.assert_allclose(model.embed(torch.from_numpy(wave)), emb[0], atol=1e-5)
    at_8k = resample(wave, 16000, 8000)
    assert model.embed(at_8k, sr=8000) @ emb[0] > 0.9  # resampled to the model's 16 kHz, close to the original


def test_files_at_another_rate_are_resampled_and_bad_arrays_rejected(run, tmp_path):
    model = voxfast.load(run / "run" / "checkpoints" / "last.pt", device="cpu")
    trial = read_trials(run / "data" / "trials.txt")[0]
    wave = read_audio(run / "data" / trial.enroll)
    sf.write(tmp_path / "8k.wav", resample(wave, 16000, 8000), 8000, subtype="FLOAT")
    np.testing.assert_allclose(model.embed(tmp_path / "8k.wav"), model.embed(resample(wave, 16000, 8000), sr=8000),
                               atol=1e-5)
    with pytest.raises(VoxfastError, match=r"expected a non-empty 1-D waveform, got an array of shape \(2, 3\)"):
        model.embed(np.zeros((2, 3), np.float32))
    assert load_checkpoint(run / "run" / "checkpoints" / "last.pt")["validation"]["n_target"] > 0


def test_eval_straight_from_a_checkpoint_stores_its_threshold(run, tmp_path, capsys):
    ckpt = tmp_path / "epoch_001.pt"
    ckpt.write_bytes((run / "run" / "checkpoints" / "epoch_001.pt").read_bytes())
    assert voxfast.load(ckpt, device="cpu").threshold is None
    trials = run / "data" / "trials.txt"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--trials", str(trials), "--json", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert voxfast.load(ckpt, device="cpu").threshold == pytest.approx(metrics["eer_threshold"])
    assert main(["eval", str(tmp_path / "o" / "scores.txt"), "--trials", str(trials), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["eer"] == pytest.approx(metrics["eer"])
    assert main(["eval", "--trials", str(trials)]) == 2
    assert "give either a score file or --checkpoint" in capsys.readouterr().err
