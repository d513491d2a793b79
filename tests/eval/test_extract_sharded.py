"""Sharded extraction (torchrun), its per-shard resume and merge, and the per-speaker cohort subset."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from voxfast.cli import main
from voxfast.config import config_to_dict, load_config
from voxfast.data.manifest import Utterance
from voxfast.errors import VoxfastError
from voxfast.eval.embeddings import (
    Batching,
    deal_by_size,
    extract_sharded,
    extract_to_file,
    extraction_source,
    load_embeddings,
    shard_folder,
    speaker_subset,
)
from voxfast.models.registry import create_model
from voxfast.tasks.speaker import build_embedder

CPU = torch.device("cpu")
SPEAKERS = ["spk0"] * 5 + ["spk1"] * 4 + ["spk2"] * 2
# 0.5-1.1 s, each 6 % or more from the next: every length bucket holds one length, so no utterance is padded
# whichever rank embeds it, and a merged table must equal a single-process one.
LENGTHS = [8000 + 800 * k for k in range(len(SPEAKERS))]
EXACT = Batching(tolerance=0.0)


def _voice(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    phase = 2 * np.pi * np.cumsum(rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * t))) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.1 * wave + 0.005 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A training list of 11 utterances of 3 speakers (shuffled lengths) and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("sharded")
    order = np.random.default_rng(1).permutation(len(SPEAKERS))
    lines = []
    for i, (spk, j) in enumerate(zip(SPEAKERS, order, strict=True)):
        path = root / spk / f"utt{i:02d}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, _voice(LENGTHS[j], i), 16000, subtype="PCM_16")
        lines.append(f"{spk} {spk}/utt{i:02d}.wav\n")
    (root / "list.txt").write_text("".join(lines))
    cfg = load_config(None, ["model.name=resnetse_demo", "model.embed_dim=16"])
    torch.manual_seed(0)
    state = {f"embedder.{k}": v for k, v in build_embedder(cfg).state_dict().items()}
    torch.save({"model": state, "config": config_to_dict(cfg)}, root / "model.pt")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("resnetse_demo", embed_dim=16, pooling="sap").eval()


class _Counting(torch.nn.Module):
    """The model, counting the utterances it embeds and raising KeyboardInterrupt (a kill) after `stop` batches."""

    def __init__(self, model: torch.nn.Module, stop: int = 10**9) -> None:
        super().__init__()
        self.model, self.stop, self.batches, self.rows = model, stop, 0, 0

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.batches >= self.stop:
            raise KeyboardInterrupt
        self.batches += 1
        self.rows += wave.shape[0]
        return self.model(wave)


def _cli(corpus, out, *extra):
    return ["extract", str(corpus / "model.pt"), str(corpus / "list.txt"), "--out", str(out), "--device", "cpu",
            "--workers", "0", "--precision", "fp32", *extra]


@pytest.mark.slow  # three Python processes importing torch: ~25 s on 2 busy cores
def test_two_torchrun_ranks_merge_into_the_single_process_table(corpus, tmp_path, capsys):
    """A real 2-process launch on the CPU (gloo-free: the ranks meet through files) against one process."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    merged = tmp_path / "merged.npz"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "voxfast",
           *_cli(corpus, merged)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merged from 2 shards" in done.stdout and "rank 0 merges the shards" in done.stdout
    assert not shard_folder(merged).exists()
    assert main(_cli(corpus, tmp_path / "single.npz")) == 0
    assert "merged" not in capsys.readouterr().out
    assert not shard_folder(tmp_path / "single.npz").exists()  # one process: no shard folder
    ids, emb = load_embeddings(merged)
    single_ids, single = load_embeddings(tmp_path / "single.npz")
    assert ids == single_ids == extraction_source(corpus / "list.txt")[0]
    np.testing.assert_allclose(emb, single, atol=1e-5)


def test_shares_are_balanced_by_size_and_cover_every_utterance(tmp_path):
    sizes = [100, 5, 90, 7, 80, 60, 3, 50, 40, 30]
    paths = []
    for i, n in enumerate(sizes):
        (tmp_path / f"f{i}").write_bytes(b"x" * n)
        paths.append(str(tmp_path / f"f{i}"))
    shares = deal_by_size([*paths, str(tmp_path / "missing")], 3)
    assert sorted(i for share in shares for i in share) == list(range(11))
    assert all(share == sorted(share) for share in shares)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    totals = [sum(sizes[i] for i in share if i < 10) for share in shares]
    assert max(totals) - min(totals) <= max(sizes)
    # by size 0 2 4 | 5 7 8 | 9 3 1 | 6 10, dealt 0 1 2 | 2 1 0 | 0 1 2 | 2 1; each share in list order
    assert shares == [[0, 8, 9], [2, 3, 7, 10], [1, 4, 5, 6]]


def _rank(model, ids, paths, out, rank, world=2, **kw):
    return extract_sharded(model, ids, paths, out, CPU, EXACT, rank, world, settings={"ckpt": "a"},
                           poll_seconds=0.01, **kw)


def test_a_killed_rank_resumes_its_shard_and_the_merge_equals_one_process(corpus, model, tmp_path):
    ids, paths = extraction_source(corpus / "list.txt")
    out = tmp_path / "emb.npz"
    share = deal_by_size(paths, 2)[1]
    with pytest.raises(KeyboardInterrupt):  # rank 1 killed after 2 batches, each flushed
        _rank(_Counting(model, stop=2), ids, paths, out, 1, flush_seconds=0)
    partial = shard_folder(out) / "rank-1-of-2.npz.partial"
    assert len(list(partial.glob("chunk-*.npz"))) == 2 and not out.exists()
    again = _Counting(model)
    summary = _rank(again, ids, paths, out, 1)
    assert again.rows == len(share) - 2 and summary.resumed == 2 and summary.written == len(share)
    assert summary.shard.endswith("rank-1-of-2.npz") and not partial.exists()
    rank0 = _Counting(model)
    merged = _rank(rank0, ids, paths, out, 0)
    assert rank0.rows == len(ids) - len(share) and merged.shards == 2 and merged.written == len(ids)
    assert not shard_folder(out).exists()
    got_ids, emb = load_embeddings(out)
    assert got_ids == ids
    extract_to_file(model, ids, paths, tmp_path / "single.npz", CPU, EXACT)
    np.testing.assert_allclose(emb, load_embeddings(tmp_path / "single.npz")[1], atol=1e-5)


def test_a_finished_shard_is_kept_and_skipped_files_are_summed(corpus, model, tmp_path):
    ids, paths = extraction_source(corpus / "list.txt")
    broken = [tmp_path / "b0.wav", tmp_path / "b1.wav"]
    for i, path in enumerate(broken):
        path.write_bytes(b"RIFF not really" * (4000 + i))  # the two largest files: one on each rank
    ids, paths = [*ids, "b0", "b1"], [*paths, *map(str, broken)]
    assert [len(set(share) & {len(ids) - 2, len(ids) - 1}) for share in deal_by_size(paths, 2)] == [1, 1]
    out = tmp_path / "emb.npz"
    first = _rank(model, ids, paths, out, 1)
    counting = _Counting(model)
    assert _rank(counting, ids, paths, out, 1).written == first.written and counting.rows == 0  # finished: kept
    assert len(first.skipped) == 1
    merged = _rank(model, ids, paths, out, 0)
    assert sorted(p for p, _ in merged.skipped) == sorted(map(str, broken))  # rank 1's and rank 0's
    assert load_embeddings(out)[0] == ids[:-2] and merged.written == len(ids) - 2


def test_another_world_size_is_refused_naming_the_folder_and_the_fix(corpus, model, tmp_path, capsys):
    ids, paths = extraction_source(corpus / "list.txt")
    out = tmp_path / "emb.npz"
    with pytest.raises(KeyboardInterrupt):
        _rank(_Counting(model, stop=1), ids, paths, out, 1, flush_seconds=0)
    folder = shard_folder(out)
    with pytest.raises(VoxfastError, match=rf"{folder} holds the shards of an interrupted 2-process extraction, "
                                           r"but this run has 3; rerun with `torchrun --nproc_per_node 2`.*delete"):
        _rank(model, ids, paths, out, 0, world=3)
    assert main(_cli(corpus, out)) == 2  # one process is another world size too
    assert "--nproc_per_node 2" in capsys.readouterr().err
    with pytest.raises(VoxfastError, match="other settings"):  # same world, another checkpoint
        extract_sharded(model, ids, paths, out, CPU, EXACT, 1, 2, settings={"ckpt": "b"})
    single = tmp_path / "single.npz"
    with pytest.raises(KeyboardInterrupt):
        extract_to_file(_Counting(model, stop=1), ids, paths, single, CPU, EXACT, flush_seconds=0)
    with pytest.raises(VoxfastError, match=r"single\.npz\.partial holds an interrupted single-process"):
        _rank(model, ids, paths, single, 0)


def _documented_choice(utts, n, seed):
    """The rule of speaker_subset's docstring, written out again."""
    keep = set()
    for spk in {u.spk for u in utts}:
        own = sorted((u for u in utts if u.spk == spk), key=lambda u: u.utt)
        if len(own) <= n:
            keep.update(u.utt for u in own)
            continue
        digest = hashlib.sha256(f"{seed}:{spk}".encode()).digest()[:8]
        picks = np.random.default_rng(int.from_bytes(digest, "little")).choice(len(own), n, replace=False)
        keep.update(own[j].utt for j in picks)
    return [u.utt for u in utts if u.utt in keep]


def test_per_speaker_subset_counts_rule_and_determinism():
    utts = [Utterance(f"s{s}/u{i:02d}", f"s{s}", f"/a/s{s}/u{i:02d}.wav") for s in range(4) for i in range(3 + 3 * s)]
    chosen = speaker_subset(utts, 4, seed=7)
    counts = {s: sum(u.spk == s for u in chosen) for s in ("s0", "s1", "s2", "s3")}
    assert counts == {"s0": 3, "s1": 4, "s2": 4, "s3": 4}
    assert [u.utt for u in chosen] == _documented_choice(utts, 4, 7)
    assert chosen == speaker_subset(utts, 4, seed=7)
    assert chosen != speaker_subset(utts, 4, seed=8)
    shuffled = [utts[i] for i in np.random.default_rng(0).permutation(len(utts))]
    assert sorted(u.utt for u in speaker_subset(shuffled, 4, 7)) == sorted(u.utt for u in chosen)  # order-free
    assert speaker_subset(utts[3:], 4, 7)[-4:] == chosen[-4:]  # other speakers do not change a speaker's picks


def test_per_speaker_needs_speakers_and_combines_with_shards(corpus, model, tmp_path, capsys):
    ids, paths = extraction_source(corpus / "list.txt", per_speaker=2)
    assert len(ids) == 6 and ids == _documented_choice(
        [Utterance(u, u.split("/")[0], "") for u in extraction_source(corpus / "list.txt")[0]], 2, 0)
    out = tmp_path / "cohort.npz"
    _rank(model, ids, paths, out, 1)
    _rank(model, ids, paths, out, 0)
    assert load_embeddings(out)[0] == ids
    (tmp_path / "trials.txt").write_text("1 spk0/utt00.wav spk1/utt05.wav\n")
    for source in (tmp_path / "trials.txt", corpus / "spk0"):
        with pytest.raises(VoxfastError, match="names no speakers"):
            extraction_source(source, corpus, per_speaker=2)
    assert main([*_cli(corpus, tmp_path / "c.npz"), "--per-speaker", "2"]) == 0
    assert "wrote 6 embeddings" in capsys.readouterr().out
    assert load_embeddings(tmp_path / "c.npz")[0] == ids
