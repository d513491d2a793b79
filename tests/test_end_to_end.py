"""A tiny train + score run through the CLI: every stage of the pipeline, in seconds."""

import json

import numpy as np
import pytest

from voxfast.cli import main
from voxfast.data.manifest import read_scores, read_trials
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.eval.metrics import verification_metrics


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    spec = CorpusSpec(seed=1, train_speakers=4, test_speakers=3, train_utts=4, test_utts=3, min_seconds=1.0,
                      max_seconds=2.0, noise_files=1, rirs=1, workers=1)
    make_corpus(root / "data", spec)
    args = ["train", f"data.train_list={root}/data/train_list.txt", f"eval.trials={root}/data/trials.txt",
            f"train.out_dir={root}/run", "data.num_frames=50", "data.num_workers=0", "train.epochs=2",
            "train.micro_batch=4", "train.global_batch=8", "train.log_every=1", "model.embed_dim=32"]
    assert main(args) == 0
    return root


def test_run_folder_holds_config_checkpoints_scores_and_metrics(trained_run):
    run = trained_run / "run"
    assert (run / "config.yaml").is_file()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_001.pt", "epoch_002.pt", "last.pt"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"eer", "min_dcf_0.01", "min_dcf_0.05", "n_target", "n_nontarget"} <= set(metrics)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # 16 utterances, global batch 8, 2 epochs
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in lines)
    pairs, scores = read_scores(run / "scores.txt")
    trials = read_trials(trained_run / "data" / "trials.txt")
    assert pairs == [(t.enroll, t.test) for t in trials]
    labels = np.array([t.label for t in trials])
    assert verification_metrics(scores, labels)["eer"] == pytest.approx(metrics["eer"])


def test_score_and_eval_commands_reproduce_the_training_evaluation(trained_run, capsys):
    run = trained_run / "run"
    out = trained_run / "rescored"
    capsys.readouterr()
    assert main(["score", str(trained_run / "data" / "trials.txt"), "--checkpoint",
                 str(run / "checkpoints" / "epoch_002.pt"), "--out", str(out / "scores.txt"), "--device", "cpu"]) == 0
    _, original = read_scores(run / "scores.txt")
    _, rescored = read_scores(out / "scores.txt")
    np.testing.assert_allclose(rescored, original, atol=1e-5)
    capsys.readouterr()
    assert main(["eval", str(out / "scores.txt"), "--trials", str(trained_run / "data" / "trials.txt"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["eer"] == pytest.approx(json.loads((run / "metrics.json").read_text())["eer"], abs=1e-6)
