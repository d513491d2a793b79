"""An imported checkpoint is a normal voxfast checkpoint: extract, score, eval --checkpoint, export, voxfast.load and
fine-tuning (train.init_from: the embedder loaded, a new head for the new speakers, the front end kept)."""

import numpy as np
import pytest
import torch

import voxfast
from tests.interop.test_vct import save, vct_state
from voxfast.cli import main
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.interop import import_model

SPEC = CorpusSpec(seed=5, train_speakers=4, test_speakers=3, train_utts=4, test_utts=3, min_seconds=1.0,
                  max_seconds=1.5, noise_files=1, rirs=1, workers=1)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    make_corpus(root / "data", SPEC)
    import_model("vct", save(vct_state("resnetse34l"), root / "lite.model"), root / "lite.pt")
    return root


def test_extract_score_eval_and_export_take_an_imported_checkpoint(imported, tmp_path, capsys):
    ckpt, data = imported / "lite.pt", imported / "data"
    assert main(["extract", str(ckpt), str(data / "trials.txt"), "--out", str(tmp_path / "emb.npz"), "--workers",
                 "0", "--device", "cpu"]) == 0
    assert main(["score", str(data / "trials.txt"), "--embeddings", str(tmp_path / "emb.npz"), "--out",
                 str(tmp_path / "scores.txt")]) == 0
    assert main(["eval", "--checkpoint", str(ckpt), "--trials", str(data / "trials.txt"), "--device", "cpu",
                 "--json"]) == 0
    assert main(["export", str(ckpt), "--out", str(tmp_path / "lite.ts")]) == 0
    assert "max |export - eager|" in capsys.readouterr().out
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    model = voxfast.load(ckpt, device="cpu")
    scripted = torch.jit.load(str(tmp_path / "lite.ts"))
    with torch.inference_mode():
        exported = torch.nn.functional.normalize(scripted(torch.from_numpy(wave)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(exported, model.embed(wave), atol=1e-4)
    assert model.threshold is not None  # eval --checkpoint stored its EER threshold in the imported file


def test_fine_tuning_from_an_imported_model_keeps_its_front_end_and_makes_a_new_head(imported, tmp_path, capsys):
    data = imported / "data"
    argv = ["train", f"train.init_from={imported / 'lite.pt'}", "train.freeze_epochs=1", "train.epochs=2",
            f"data.train_list={data / 'train_list.txt'}", f"eval.trials={data / 'trials.txt'}",
            f"train.out_dir={tmp_path / 'run'}", "data.num_workers=0", "data.num_frames=40", "train.micro_batch=4",
            "train.global_batch=4", "data.n_per_speaker=2", "train.device=cpu", "head.name=softmaxproto"]
    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "frontend: vct_logmel_nopreemph" in printed and "name: resnetse34l" in printed
    assert "(voxceleb_trainer ResNetSE34L" in printed and "head new, for the 4 speakers" in printed
    assert "embedder frozen for 1 epochs" in printed
    assert main(["train", *argv[1:], "--no-eval"]) == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["frontend"] == "vct_logmel_nopreemph"
    assert state["speakers"] == sorted(state["speakers"]) and len(state["speakers"]) == 4
