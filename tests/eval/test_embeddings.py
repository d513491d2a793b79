"""Embedding extraction: length buckets, crops, the resumable table, sources and `voxfast extract`."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from voxfast.cli import main
from voxfast.config import config_to_dict, load_config
from voxfast.errors import AudioLoadError, VoxfastError
from voxfast.eval.embeddings import (
    Batching,
    embed_batches,
    evenly_spaced_crops,
    extract_embeddings,
    extract_to_file,
    extraction_source,
    length_buckets,
    load_embeddings,
)
from voxfast.models.registry import create_model
from voxfast.tasks.speaker import build_embedder

CPU = torch.device("cpu")
# 2-5 s: clusters of lengths within 1 % (so buckets hold several utterances) plus loners.
LENGTHS = [32000, 32150, 32300, 32000, 48000, 48250, 48450, 64000, 64600, 40000, 80000, 36000]


def _voice(n: int, seed: int) -> np.ndarray:
    """A crude voiced signal: harmonics of a drifting pitch under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.1 * wave + 0.005 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    paths = []
    for i, n in enumerate(LENGTHS):
        path = root / f"spk{i % 3}" / f"utt{i:02d}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, _voice(n, i), 16000, subtype="PCM_16")
        paths.append(str(path))
    return root, paths


@pytest.fixture(scope="module")
def model():
    # Attentive (SAP) pooling: with random weights, mean+std pooling lets the few edge frames dominate the std,
    # so one sample more moves an embedding by up to cos 0.998 whatever the padding; a trained model is steadier.
    torch.manual_seed(0)
    return create_model("resnetse_demo", embed_dim=16, pooling="sap").eval()


def test_buckets_bound_padding_and_batch_audio():
    lengths = np.random.default_rng(0).integers(1000, 50000, size=500).tolist()
    buckets = length_buckets(lengths, batch_samples=200000, tolerance=0.03)
    assert sorted(i for members, _ in buckets for i in members) == list(range(500))
    assert max(len(m) for m, _ in buckets) > 5
    for members, size in buckets:
        assert size == max(lengths[i] for i in members)
        assert size <= 1.03 * min(lengths[i] for i in members)
        assert len(members) == 1 or len(members) * size <= 200000
    assert [len(m) for m, _ in length_buckets([10, 10, 10, 10], 20, 0.0)] == [2, 2]
    assert length_buckets([50, 10], 20, 0.5) == [([1], 10), ([0], 50)]  # too long for a batch: alone


def test_bucketed_embeddings_match_one_at_a_time(audio, model):
    _, paths = audio
    single = extract_embeddings(model, paths, CPU, batch_seconds=1e-4)  # one sample a batch: every utterance alone
    assert single.shape == (len(paths), 16)
    assert max(len(m) for m, _ in length_buckets(LENGTHS, 120 * 16000, 0.01)) >= 3  # really batched
    bucketed = extract_embeddings(model, paths, CPU)
    assert (bucketed * single).sum(axis=1).min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(bucketed, axis=1), 1.0, atol=1e-5)
    exact = extract_embeddings(model, paths, CPU, tolerance=0.0)  # equal lengths only: no padding at all
    np.testing.assert_allclose(exact, single, atol=1e-5)


def test_unreadable_file_raises_without_a_skip_list(audio, model, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    with pytest.raises(AudioLoadError, match=r"broken\.wav"):
        extract_embeddings(model, [audio[1][0], str(broken)], CPU)


def test_crops_are_evenly_spaced_and_wrapped():
    crops = evenly_spaced_crops(np.arange(100, dtype=np.float32), 3, 10)
    assert crops[:, 0].tolist() == [0, 45, 90] and crops.shape == (3, 10)
    short = evenly_spaced_crops(np.arange(4, dtype=np.float32), 2, 6)
    assert short.tolist() == [[0, 1, 2, 3, 0, 1]] * 2


def test_crops_mode_is_the_normalised_mean_of_crop_embeddings(audio, model):
    _, paths = audio
    batching = Batching("crops", batch_samples=3 * 2 * 4000, crops=3, crop_samples=4000)
    got = dict(pair for indices, emb in embed_batches(model, paths[:4], CPU, batching)
               for pair in zip(indices, emb, strict=True))
    assert sorted(got) == [0, 1, 2, 3]
    for i, path in enumerate(paths[:4]):
        wave, _ = sf.read(path, dtype="float32")
        with torch.inference_mode():
            each = F.normalize(model(torch.from_numpy(evenly_spaced_crops(wave, 3, 4000))), dim=1)
        np.testing.assert_allclose(got[i], F.normalize(each.mean(0), dim=0).numpy(), atol=1e-5)


class _Interrupting(torch.nn.Module):
    """The model, stopped by a KeyboardInterrupt on forward pass `after` (as a killed run)."""

    def __init__(self, model: torch.nn.Module, after: int) -> None:
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.model(wave)


def test_table_resumes_after_interruption_and_skips_unreadable_files(audio, model, tmp_path):
    _, paths = audio
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    paths = [*paths, str(broken)]
    ids = [f"u{i}" for i in range(len(paths))]
    out = tmp_path / "emb.npz"
    batching = Batching(batch_samples=70000, tolerance=0.0)  # exact: a resumed run buckets the rest differently
    with pytest.raises(KeyboardInterrupt):
        extract_to_file(_Interrupting(model, 2), ids, paths, out, CPU, batching, settings={"ckpt": "a"},
                        flush_seconds=0)
    assert not out.exists() and len(list((tmp_path / "emb.npz.partial").glob("chunk-*.npz"))) == 2
    with pytest.raises(VoxfastError, match=r"other settings \(ckpt\).*delete the folder"):
        extract_to_file(model, ids, paths, out, CPU, batching, settings={"ckpt": "b"})
    summary = extract_to_file(model, ids, paths, out, CPU, batching, settings={"ckpt": "a"})
    assert 0 < summary.resumed < len(LENGTHS) and summary.written == len(LENGTHS) and summary.dim == 16
    assert [p for p, _ in summary.skipped] == [str(broken)]
    assert not (tmp_path / "emb.npz.partial").exists()
    got_ids, emb = load_embeddings(out)
    assert got_ids == ids[:-1]  # the order of the ids, the unreadable one left out
    np.testing.assert_allclose(emb, extract_embeddings(model, paths[:-1], CPU, tolerance=0.0), atol=1e-5)


def test_consecutive_unreadable_files_stop_and_duplicate_ids_fail(audio, model, tmp_path):
    broken = [tmp_path / f"b{i}.wav" for i in range(3)]
    for path in broken:
        path.write_bytes(b"")
    with pytest.raises(VoxfastError, match="3 audio files in a row failed"):
        extract_to_file(model, ["a", "b", "c"], [str(p) for p in broken], tmp_path / "x.npz", CPU, Batching(),
                        max_consecutive_failures=3)
    with pytest.raises(VoxfastError, match=r"duplicate utterance id 'a': entries 1 \(p1\) and 3 \(p3\)"):
        extract_to_file(model, ["a", "b", "a"], ["p1", "p2", "p3"], tmp_path / "y.npz", CPU, Batching())


def test_sources_folder_list_and_trials(audio, tmp_path):
    root, paths = audio
    ids, found = extraction_source(root)
    assert ids == sorted(ids) and ids[0] == "spk0/utt00.wav" and sorted(found) == sorted(paths)
    (root / "list.txt").write_text("spk0 spk0/utt00.wav\nspk1 spk1/utt01.wav\n")
    assert extraction_source(root / "list.txt") == (["spk0/utt00.wav", "spk1/utt01.wav"], paths[:2])
    for text in ("1 spk0/utt00.wav spk1/utt01.wav\n", "spk0/utt00.wav spk1/utt01.wav\n"):
        (tmp_path / "trials.txt").write_text(text)
        assert extraction_source(tmp_path / "trials.txt", root) == (["spk0/utt00.wav", "spk1/utt01.wav"], paths[:2])


def test_cli_extract_then_score(audio, tmp_path, capsys):
    root, _ = audio
    cfg = load_config(None, ["model.name=resnetse_demo", "model.embed_dim=16"])
    torch.manual_seed(0)
    state = {f"embedder.{k}": v for k, v in build_embedder(cfg).state_dict().items()}
    torch.save({"model": state, "config": config_to_dict(cfg)}, tmp_path / "model.pt")
    trials = tmp_path / "trials.txt"
    trials.write_text("1 spk0/utt00.wav spk0/utt03.wav\n0 spk0/utt00.wav spk1/utt01.wav\n")
    out = tmp_path / "emb.npz"
    args = ["extract", str(tmp_path / "model.pt"), str(trials), "--out", str(out), "--root", str(root),
            "--workers", "1", "--device", "cpu", "--precision", "fp32"]
    assert main(args) == 0
    assert "wrote 3 embeddings (16-d" in capsys.readouterr().out
    assert load_embeddings(out)[0] == ["spk0/utt00.wav", "spk0/utt03.wav", "spk1/utt01.wav"]
    assert main(["score", str(trials), "--embeddings", str(out), "--out", str(tmp_path / "scores")]) == 0
    assert main([*args[:4], str(tmp_path / "crops.npz"), *args[5:], "--mode", "crops", "--crops", "2"]) == 0
