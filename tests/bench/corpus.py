"""A tiny synthetic corpus for the benchmark tests: 12 speakers, so micro-batches up to 24 can be filled."""

from pathlib import Path

from voxfast.data.synthetic import CorpusSpec, make_corpus

SPEC = CorpusSpec(seed=5, train_speakers=12, test_speakers=2, train_utts=3, test_utts=2, min_seconds=1.0,
                  max_seconds=1.5, noise_files=1, rirs=1, workers=1)


def make_tiny_corpus(root: Path) -> Path:
    make_corpus(root, SPEC)
    return root


def tiny_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides that make any config train the tiny model on the tiny corpus, well under a second per step.

    On the CPU even where a GPU is visible: these tests check what CPU runs print (tests/test_gpu.py has CUDA).
    """
    return [f"data.train_list={root}/train_list.txt", f"eval.trials={root}/trials.txt", "data.num_frames=30",
            "data.n_per_speaker=2", "model.name=resnetse_demo", "model.embed_dim=16", "train.micro_batch=4",
            "train.global_batch=4", "train.epochs=1", "train.device=cpu", *extra]
