"""The speaker-verification Task: glues lists, crops, front end, SE-ResNet, margin head and trial EER."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from voxfast.audio.features import crop_samples
from voxfast.config import Config, config_to_dict, load_config_dict
from voxfast.data.manifest import read_trials, read_utterances, speaker_index, write_scores
from voxfast.data.speaker import EpochSampler, TrainCrops, collate_crops
from voxfast.errors import VoxfastError
from voxfast.eval.embeddings import extract_embeddings
from voxfast.eval.metrics import verification_metrics
from voxfast.eval.scoring import cosine_scores, trial_indices
from voxfast.models.heads import create_head
from voxfast.models.registry import create_model
from voxfast.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class SpeakerTrainModel(nn.Module):
    """Embedding network plus training-only head; the embedder alone is what is used afterwards."""

    def __init__(self, embedder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = head

    def forward(self, wave: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, T), (B,) -> loss (), logits (B, n_speakers)
        return self.head(self.embedder(wave), label)


def build_embedder(cfg: Config) -> nn.Module:
    return create_model(cfg.model.name, n_mels=cfg.model.n_mels, embed_dim=cfg.model.embed_dim,
                        pooling=cfg.model.pooling)


class SpeakerTask:
    """Trains on a VoxCeleb-style list with random crops; validates by EER on a trial list."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        utts = read_utterances(cfg.data.train_list, cfg.data.train_root)
        self.speakers = speaker_index(utts)
        if len(self.speakers) < 2:
            raise VoxfastError(f"{cfg.data.train_list}: {len(self.speakers)} speaker(s); training needs at least 2")
        self.dataset = TrainCrops(utts, self.speakers, crop_samples(cfg.data.num_frames), cfg.data.sample_rate,
                                  cfg.data.max_consecutive_failures)
        self.sampler = EpochSampler(len(utts), cfg.train.seed)
        workers = cfg.data.num_workers
        self.loader = DataLoader(
            self.dataset, batch_size=cfg.train.micro_batch, sampler=self.sampler, collate_fn=collate_crops,
            num_workers=workers, drop_last=True, persistent_workers=workers > 0,
            pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
            prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        )
        if len(self.loader) == 0:
            raise VoxfastError(
                f"{cfg.data.train_list}: {len(utts)} utterances is less than one batch of {cfg.train.micro_batch} "
                "(lower train.micro_batch or add data)"
            )
        log.info("%d utterances of %d speakers from %s", len(utts), len(self.speakers), cfg.data.train_list)

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint needs beyond weights to rebuild the embedder without the training data."""
        return {"config": config_to_dict(self.cfg), "speakers": sorted(self.speakers, key=self.speakers.get)}

    def build_model(self) -> nn.Module:
        head = create_head(self.cfg.head.name, self.cfg.model.embed_dim, len(self.speakers), self.cfg.head.margin,
                           self.cfg.head.scale)
        return SpeakerTrainModel(build_embedder(self.cfg), head)

    def train_batches(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        return self.loader

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        wave = batch["wave"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        loss, logits = model(wave, label)
        return {"loss": loss, "output": logits, "n": len(label)}

    def evaluate(self, model: nn.Module, device: torch.device, out_dir: Path) -> dict[str, float]:
        embedder = model.embedder if isinstance(model, SpeakerTrainModel) else model
        return score_trials(embedder, self.cfg, device, out_dir)


def score_trials(embedder: nn.Module, cfg: Config, device: torch.device, out_dir: Path | None) -> dict[str, Any]:
    """Embed every utterance of the trial list, cosine-score the trials and compute EER/minDCF.

    Writes `scores.txt` and `metrics.json` into `out_dir` when given. Unlabelled trial lists get
    scores only.
    """
    trials = read_trials(cfg.eval.trials)
    root = Path(cfg.eval.root) if cfg.eval.root else Path(cfg.eval.trials).parent
    names = sorted({u for t in trials for u in (t.enroll, t.test)})
    index = {name: i for i, name in enumerate(names)}
    max_samples = int(cfg.eval.max_seconds * cfg.data.sample_rate)
    emb = extract_embeddings(embedder, [str(root / n) for n in names], device, cfg.data.sample_rate, max_samples,
                             num_workers=min(cfg.data.num_workers, 2), progress=True)
    scores = cosine_scores(emb, *trial_indices(trials, index))
    result: dict[str, Any] = {"n_trials": len(trials), "n_utterances": len(names)}
    if all(t.label is not None for t in trials):
        labels = np.array([t.label for t in trials], dtype=np.int64)
        result.update(verification_metrics(scores, labels))
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_scores(Path(out_dir) / "scores.txt", trials, scores)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def load_embedder(path: str | Path, device: torch.device) -> tuple[nn.Module, Config]:
    """The embedding network and its config from a training checkpoint (the head is dropped)."""
    state = load_checkpoint(path, device)
    if "config" not in state:
        raise VoxfastError(f"{path}: not a speaker checkpoint (no config inside); pass one written by `voxfast train`")
    cfg = load_config_dict(state["config"])
    embedder = build_embedder(cfg)
    prefix = "embedder."
    embedder.load_state_dict({k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return embedder.to(device).eval(), cfg

