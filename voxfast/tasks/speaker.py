"""The speaker-verification Task: glues lists, crops, front end, SE-ResNet, margin head and trial EER."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from voxfast.audio.augment import Augmentation, AugmentSpec, DeviceBank, NoiseBank, augment_batch
from voxfast.audio.features import check_frontend, create_frontend, crop_samples
from voxfast.audio.store import PackedStore
from voxfast.config import Config, config_to_dict, load_config_dict
from voxfast.data.manifest import Trial, read_trials, read_utterances, write_scores
from voxfast.data.speaker import (
    BatchRing,
    CropSource,
    FileSource,
    RingBatches,
    SpeakerBatchSampler,
    StoreSource,
    TrainCrops,
    collate_crops,
    to_float_wave,
)
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.data.utterances import UtteranceTable
from voxfast.errors import VoxfastError
from voxfast.eval.embeddings import Batching, extract_embeddings
from voxfast.eval.metrics import verification_metrics
from voxfast.eval.scoring import as_norm_scores, cosine_scores, trial_indices
from voxfast.models.heads import METRIC_HEADS, create_head
from voxfast.models.registry import check_model, create_model
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.schedule import margin_schedule, set_margin
from voxfast.train.task import Task, split_batch

log = logging.getLogger(__name__)


class SpeakerTrainModel(nn.Module):
    """Embedding network plus training-only head; the embedder alone is what is used afterwards."""

    def __init__(self, embedder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = head
        self.embedder_frozen = False  # train.freeze_epochs: no gradients, BatchNorm statistics kept

    def forward(self, wave: torch.Tensor, label: torch.Tensor) -> HeadOutput:
        # (B, T), (B,) -> loss (), logits (B, classes the head tells apart), their targets
        if self.embedder_frozen:
            with torch.no_grad():  # no backward through the embedder either: frozen epochs cost a forward only
                emb = self.embedder(wave)
        else:
            emb = self.embedder(wave)
        loss, logits = self.head(emb, label)
        return HeadOutput(loss, logits, self.head.target(label))

    def freeze_embedder(self, frozen: bool) -> None:
        """Frozen: eval mode (BatchNorm keeps the loaded statistics) and no gradients, so the optimizer leaves
        its weights alone (parameters without a gradient are skipped, weight decay included)."""
        self.embedder_frozen = frozen
        self.embedder.train(self.training and not frozen)


class HeadOutput(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor  # what each row's argmax should be: speaker labels, or positions in the batch


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _first_rows(value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """`value` itself when it has `shape`, its first rows when it stacks whole copies of that shape, else None."""
    if value.shape == shape:
        return value
    if value.ndim and value.shape[1:] == shape[1:] and shape[0] and value.shape[0] % shape[0] == 0:
        return value[: shape[0]]
    return None


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_embedder(cfg: Config) -> nn.Module:
    """The registered model; config fields left null keep the variant's published defaults."""
    chosen = {"n_mels": cfg.model.n_mels, "embed_dim": cfg.model.embed_dim, "pooling": cfg.model.pooling}
    model = create_model(cfg.model.name, **{k: v for k, v in chosen.items() if v is not None})
    if cfg.model.frontend is not None:
        model.front = create_frontend(cfg.model.frontend, model.front.n_mels, cfg.data.sample_rate)
    return model


class SpeakerTask(Task):
    """Trains on a VoxCeleb-style list with random crops; validates by EER on a trial list."""

    name = "speaker"
    best_metric = ("eer", "min")  # what best.pt follows when train.validate_every is set
    # A user's own recordings are a small speaker set: the recipe measured best on real speech at that size.
    default_config = "small"

    def __init__(self, cfg: Config, rank: int = 0, world: int = 1) -> None:
        self.cfg = cfg
        check_model(cfg.model.name, "speaker")  # a typo fails before any data is read
        check_frontend(cfg.model.frontend)
        source, labels, names, origin = _training_source(cfg)
        self.speakers = {name: i for i, name in enumerate(names)}
        if len(self.speakers) < 2:
            raise VoxfastError(f"{origin}: {len(self.speakers)} speaker(s); training needs at least 2")
        self.augment = _augmentation(cfg)
        on_device = cfg.augment.placement == "device"
        ring = _ring(cfg, source, self.augment is not None and not on_device, world)
        self.dataset = TrainCrops(
            source, labels, crop_samples(cfg.data.num_frames), ring, self.augment, augment_on_device=on_device,
            speed_perturb=cfg.augment.speed_perturb, max_consecutive_failures=cfg.data.max_consecutive_failures,
        )
        batches = SpeakerBatchSampler(labels, cfg.train.micro_batch, cfg.data.n_per_speaker,
                                      cfg.data.max_seg_per_spk, cfg.train.seed, rank, world)
        self.sampler = RingBatches(batches, ring.slots)
        self.loader = _loader(self.dataset, self.sampler, cfg)
        if len(self.loader) == 0:
            raise VoxfastError(
                f"{origin}: {len(labels)} utterances of {len(self.speakers)} speakers do not fill one batch of "
                f"{cfg.train.micro_batch} crops with no speaker twice (lower train.micro_batch, raise "
                "data.n_per_speaker, or add speakers)"
            )
        self._device_bank: DeviceBank | None = None
        log.info("%d utterances of %d speakers from %s", len(labels), len(self.speakers), origin)

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint needs beyond weights to rebuild the embedder without the training data."""
        return {"task": self.name, "config": config_to_dict(self.cfg),
                "speakers": sorted(self.speakers, key=self.speakers.get)}

    def initialise(self, model: nn.Module, checkpoint: dict[str, Any], source: str) -> str:
        """train.init_from: the embedder must match exactly; the head is kept when the source trained the same
        speakers, cut to its first rows when the source had speed-perturbed copies of them (rows s + k * n put
        speed 1.0 first, the rows WeSpeaker's large-margin stage goes on from), and new otherwise (fine-tuning
        on other speakers)."""
        state = checkpoint["model"]
        try:
            model.embedder.load_state_dict(_under(state, "embedder."))
        except RuntimeError as exc:
            raise VoxfastError(f"{source}: its embedder does not fit model.name={self.cfg.model.name} "
                               f"(train.init_from): {str(exc).splitlines()[0]}") from None
        own = model.head.state_dict()
        head = {k: _first_rows(v, own[k].shape) for k, v in _under(state, "head.").items() if k in own}
        same = checkpoint.get("speakers") == sorted(self.speakers, key=self.speakers.get)
        if same and head.keys() == own.keys() and all(v is not None for v in head.values()):
            model.head.load_state_dict(head)
            return f"initialised the embedder and the head from {source}"
        return f"initialised the embedder from {source}; a new head for {self.dataset.n_classes} classes"

    def resume_problem(self, checkpoint: dict[str, Any]) -> str | None:
        """The first of model name, embedding size and speaker count that differs from the checkpoint's run."""
        theirs = checkpoint.get("config", {}).get("model", {})
        speakers = checkpoint.get("speakers")
        checks = [("model.name", theirs.get("name"), self.cfg.model.name),
                  ("model.embed_dim", theirs.get("embed_dim"), self.cfg.model.embed_dim),
                  ("training speakers", None if speakers is None else len(speakers), len(self.speakers))]
        for what, was, now in checks:
            if was is not None and was != now:
                return f"{what} differs (the checkpoint's run: {was}, this run: {now})"
        return None

    @classmethod
    def resolve_config(cls, cfg: Config) -> Config:
        """With train.init_from the model is the checkpoint's: its model section (name, sizes, pooling, front end)
        and sample rate replace this config's, logged where they differ, so fine-tuning an imported model needs
        no copy of its settings and its weights never meet another front end."""
        if not cfg.train.init_from:
            return cfg
        source = _source_config(cfg.train.init_from)
        mine, theirs = dataclasses.asdict(cfg.model), dataclasses.asdict(source.model)
        changed = [f"model.{k} {mine[k]!r} -> {v!r}" for k, v in theirs.items() if mine[k] != v]
        if cfg.data.sample_rate != source.data.sample_rate:
            changed.append(f"data.sample_rate {cfg.data.sample_rate} -> {source.data.sample_rate}")
        if changed:
            log.info("train.init_from %s: the model is the checkpoint's (%s)", cfg.train.init_from, ", ".join(changed))
        data = dataclasses.replace(cfg.data, sample_rate=source.data.sample_rate)
        return dataclasses.replace(cfg, model=dataclasses.replace(source.model), data=data)

    @classmethod
    def describe(cls, cfg: Config) -> dict[str, Any]:
        """Parameter counts of the embedder and the training head and, when the training list or store is there,
        its size and the optimizer steps of one epoch in one process (the batches the sampler would cut).

        A recipe is checked before its data exist, so a missing list is reported, not an error.
        """
        check_model(cfg.model.name, "speaker")
        embedder = build_embedder(cfg)
        info: dict[str, Any] = {"model": cfg.model.name, "embedder_parameters": _parameters(embedder)}
        origin = cfg.data.store or cfg.data.train_list
        if not Path(origin).exists():
            info["steps_per_epoch"] = f"unknown until {origin} exists"
            return info
        if cfg.data.store:
            store = PackedStore(cfg.data.store)
            labels, sorted_names = store.speaker_codes, store.speaker_names
        else:
            utts = read_utterances(cfg.data.train_list, cfg.data.train_root)
            labels, sorted_names = utts.speaker_codes, utts.speaker_names
        names = {name: i for i, name in enumerate(sorted_names)}
        h = cfg.head
        head = create_head(h.name, embedder.embed_dim, len(names), h.margin, h.scale, sub_centers=h.sub_centers,
                           top_k=h.top_k, top_k_margin=h.top_k_margin, n_per_speaker=cfg.data.n_per_speaker)
        batches = SpeakerBatchSampler(labels, cfg.train.micro_batch, cfg.data.n_per_speaker,
                                      cfg.data.max_seg_per_spk, cfg.train.seed)
        accumulation = max(cfg.train.global_batch // cfg.train.micro_batch, 1)
        info.update(head_parameters=_parameters(head), utterances=len(labels), speakers=len(names),
                    steps_per_epoch=len(batches) // accumulation)
        if cfg.train.init_from:
            info["init_from"] = _init_summary(cfg, sorted(names))
        return info

    @classmethod
    def make_demo_data(cls, out: str | Path, seed: int = 0, **options: Any) -> Path:
        """The synthetic voice corpus (options: CorpusSpec fields); returns its training list."""
        spec = CorpusSpec(seed=seed, **options)
        if min(spec.train_speakers, spec.test_speakers) < 2 or min(spec.train_utts, spec.test_utts) < 2:
            raise VoxfastError("the demo corpus needs at least 2 speakers and 2 utterances per speaker in each split")
        return Path(make_corpus(out, spec)["train_list"])

    def build_model(self) -> nn.Module:
        embedder = build_embedder(self.cfg)
        h = self.cfg.head
        head = create_head(h.name, embedder.embed_dim, self.dataset.n_classes, h.margin, h.scale,
                           sub_centers=h.sub_centers, top_k=h.top_k, top_k_margin=h.top_k_margin,
                           n_per_speaker=self.cfg.data.n_per_speaker)
        return SpeakerTrainModel(embedder, head)

    def on_step(self, model: nn.Module, progress: float) -> dict[str, float]:
        """Drive the margin schedule and train.freeze_epochs from the trainer's progress (fractional epochs);
        returns the margin for the log (nothing for heads without a margin)."""
        if self.cfg.train.freeze_epochs > 0:
            model.freeze_embedder(progress <= self.cfg.train.freeze_epochs)  # progress: epochs after this step
        if not hasattr(model.head, "margin"):
            return {}
        start, end = margin_ramp(self.cfg)
        margin = margin_schedule(progress, self.cfg.head.margin, start, end, self.cfg.head.margin_increase)
        set_margin(model.head, margin)
        return {"margin": margin}

    def train_batches(self, epoch: int, skip: int = 0) -> DataLoader:
        self.sampler.set_epoch(epoch, skip)
        return self.loader

    def split_batch(self, batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
        """Pieces of whole speaker groups (after out-of-memory), so a metric-learning head still sees its pairs."""
        return split_batch(batch, parts, unit=self.group_size)

    @property
    def group_size(self) -> int:
        """Crops per speaker that the head compares (1 for classifiers over all speakers)."""
        return self.cfg.data.n_per_speaker if self.cfg.head.name in METRIC_HEADS else 1

    def training_step(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        batch = whole_groups(batch, self.group_size)
        wave = self.dataset.batch_wave(batch)
        if device.type == "cuda" and self.cfg.data.pin_memory:
            # A pinned copy (torch's caching host allocator reuses blocks only after their copies finish)
            # makes the upload asynchronous; a copy straight from the shared ring would sync the stream.
            wave = wave.pin_memory()
        wave = to_float_wave(wave.to(device, non_blocking=True))
        label = torch.from_numpy(batch["label"]).to(device, non_blocking=True)
        if "aug" in batch:
            wave = self._augment_on_device(wave, batch["aug"], device)
        out = model(wave, label)
        correct = (out.logits.detach().argmax(1) == out.target).sum() * len(label) / len(out.target)
        return {"loss": out.loss, "output": out.logits, "n": len(label), "correct": correct}

    def _augment_on_device(self, wave: torch.Tensor, plans: dict[str, np.ndarray], device: torch.device
                           ) -> torch.Tensor:
        assert self.augment is not None  # plans exist only when augmentation is configured
        if self._device_bank is None:
            self._device_bank = DeviceBank(self.augment.bank, device)
        with torch.autocast(device_type=device.type, enabled=False):
            return augment_batch(wave.float(), plans, self._device_bank)

    def evaluate(self, model: nn.Module, device: torch.device, out_dir: Path) -> dict[str, float]:
        embedder = model.embedder if isinstance(model, SpeakerTrainModel) else model
        return score_trials(embedder, self.cfg, device, out_dir)


def protocol(cfg: Config) -> str:
    """The scoring protocol of cfg.eval in one word: `full` is what voxfast.load(...).score computes, so only a
    threshold measured under it may decide `verify`."""
    e = cfg.eval
    name = "full" if e.mode == "full" else f"crops{e.crops}x{e.crop_seconds:g}s-{e.crop_score}"
    return name + (f"+asnorm{e.cohort}" if e.cohort > 0 else "")


def margin_ramp(cfg: Config) -> tuple[float, float]:
    """head.margin_ramp in epochs; unset, WeSpeaker's proportions (epochs 20-40 of 150) of train.epochs."""
    if cfg.head.margin_ramp is not None:
        return cfg.head.margin_ramp
    return 20 / 150 * cfg.train.epochs, 40 / 150 * cfg.train.epochs


def whole_groups(batch: dict[str, Any], m: int) -> dict[str, Any]:
    """The batch without the speaker groups that lost a crop to an unreadable file.

    The sampler lays `m` crops of a speaker side by side and the loader drops failed reads, which would shift
    every later group by one: a metric-learning head would then pair crops of different speakers.
    """
    if m == 1 or not batch["failed"]:
        return batch
    groups = batch["rows"] // m
    keep = np.bincount(groups, minlength=batch["size"] // m + 1)[groups] == m
    out = dict(batch, rows=batch["rows"][keep], label=batch["label"][keep])
    if "aug" in batch:
        out["aug"] = {k: v[torch.from_numpy(keep)] if isinstance(v, torch.Tensor) else v[keep]
                      for k, v in batch["aug"].items()}
    return out


def _source_config(path: str) -> Config:
    state = load_checkpoint(path)
    if "config" not in state or state.get("task", "speaker") != "speaker":
        raise VoxfastError(f"{path}: not a speaker checkpoint (train.init_from); pass one written by `voxfast train` "
                           "or `voxfast import`")
    return load_config_dict(state["config"])


def _init_summary(cfg: Config, speakers: list[str]) -> str:
    """What train.init_from loads, for --dry-run: the source, its embedder, and the head kept or new."""
    state = load_checkpoint(cfg.train.init_from)
    origin = state.get("imported", {}).get("description") or f"a voxfast {state['config']['model']['name']} run"
    n = sum(1 for k in state["model"] if k.startswith("embedder."))
    head = ("kept (same speakers)" if state.get("speakers") == speakers
            else f"new, for the {len(speakers)} speakers of this list")
    frozen = f"; embedder frozen for {cfg.train.freeze_epochs:g} epochs" if cfg.train.freeze_epochs > 0 else ""
    return f"{cfg.train.init_from} ({origin}): embedder {n} tensors; head {head}{frozen}"


def _training_source(cfg: Config) -> tuple[CropSource, np.ndarray, list[str], str]:
    """The crop source, each utterance's speaker as an int32 index into the sorted speaker names (class ids that do
    not depend on list order), those names, and where they came from (for messages)."""
    if cfg.data.store:
        store = PackedStore(cfg.data.store)
        if store.sample_rate != cfg.data.sample_rate:
            raise VoxfastError(f"{cfg.data.store}: packed at {store.sample_rate} Hz but data.sample_rate is "
                               f"{cfg.data.sample_rate} (repack, or set data.sample_rate)")
        source = StoreSource(store, _store_subset(store, cfg))
        if source.indices is None:
            return source, store.speaker_codes, store.speaker_names, cfg.data.store
        present, codes = np.unique(source.speaker_codes, return_inverse=True)  # the speakers the subset keeps
        return source, codes.astype(np.int32), [store.speaker_names[c] for c in present], cfg.data.store
    utts = read_utterances(cfg.data.train_list, cfg.data.train_root)
    source = FileSource(utts.paths, cfg.data.sample_rate, cfg.data.resample)
    return source, utts.speaker_codes, utts.speaker_names, cfg.data.train_list


def _store_subset(store: PackedStore, cfg: Config) -> np.ndarray | None:
    """The store positions of data.train_list's utterances, None for the whole store.

    A store may hold more than the list asks for (packed from a bigger list, or the list was trimmed since);
    training on all of it without a word would train on data the user removed. A missing list means the
    whole store, and the log says so.
    """
    listed = Path(cfg.data.train_list)
    if not listed.exists():
        log.info("data.store: training on all %d utterances of %s (data.train_list %s does not exist)",
                 len(store), store.path, listed)
        return None
    utts = read_utterances(listed, cfg.data.train_root)
    positions = store.positions_of(utts.ids)
    absent = np.flatnonzero(positions < 0)
    if len(absent):
        unpacked = store.unpacked_paths()
        skipped = np.array([utts.paths[i] in unpacked for i in absent], dtype=bool)
        if skipped.any():
            log.warning("data.train_list %s: %d utterances were unreadable when %s was packed (its bad.tsv); "
                        "training without them", listed, int(skipped.sum()), store.path)
        if not skipped.all():
            missing = absent[~skipped]
            raise VoxfastError(f"data.train_list {listed} names {len(missing)} utterances that data.store "
                               f"{store.path} does not hold (first: {utts.ids[missing[0]]!r}): pack the list into a "
                               f"store of its own (`voxfast pack {listed} NEW_STORE`) or set data.train_list to the "
                               "list the store was packed from")
    kept = np.flatnonzero(positions >= 0)
    positions = positions[kept]
    _check_same_speakers(store, utts, kept, positions, listed)
    if len(positions) == len(store) and np.array_equal(positions, np.arange(len(store))):
        return None
    log.info("data.store: training on the %d utterances of data.train_list %s, %d of the %d in %s",
             len(positions), listed, len(np.unique(positions)), len(store), store.path)
    return positions


def _check_same_speakers(store: PackedStore, utts: UtteranceTable, kept: np.ndarray, positions: np.ndarray,
                         listed: Path) -> None:
    """Refuse a list that gives a stored utterance another speaker (one dict entry per speaker, not per utterance)."""
    in_store = {name: k for k, name in enumerate(store.speaker_names)}
    to_store = np.array([in_store.get(name, -1) for name in utts.speaker_names], dtype=np.int64)
    wrong = np.flatnonzero(store.speaker_codes[positions] != to_store[utts.speaker_codes[kept]])
    if len(wrong):
        i, p = int(kept[wrong[0]]), int(positions[wrong[0]])
        raise VoxfastError(f"data.train_list {listed} gives {len(wrong)} utterances another speaker than "
                           f"data.store {store.path} (first: {utts.ids[i]!r} is {utts[i].spk!r} in the list, "
                           f"{store.speakers[p]!r} in the store): repack the store from the list")


def _ring(cfg: Config, source: CropSource, augment_on_cpu: bool, world: int) -> BatchRing:
    """Shared batch slots: enough for the batches in flight plus the micro-batches one step accumulates."""
    dtype = TrainCrops.crop_dtype(source, augment_on_cpu, cfg.augment.speed_perturb)
    kept = max(cfg.train.global_batch // (cfg.train.micro_batch * world), 1)
    slots = BatchRing.slots_for(cfg.data.num_workers, cfg.data.prefetch_factor, kept)
    return BatchRing(slots, cfg.train.micro_batch, crop_samples(cfg.data.num_frames), dtype)


def _augmentation(cfg: Config) -> Augmentation | None:
    """The configured augmentation, None when it is off; its folders are read now, at startup."""
    if not cfg.augment.enabled:
        return None
    bank = NoiseBank.from_dirs(cfg.augment.noise_dir, cfg.augment.rir_dir, cfg.data.sample_rate, mix=cfg.augment.mix)
    return Augmentation(AugmentSpec.from_config(cfg.augment), bank)


def _loader(dataset: TrainCrops, sampler: RingBatches, cfg: Config) -> DataLoader:
    workers = cfg.data.num_workers
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_crops, num_workers=workers,
        persistent_workers=cfg.data.persistent_workers and workers > 0,
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
    )


def score_trials(embedder: nn.Module, cfg: Config, device: torch.device, out_dir: Path | None) -> dict[str, Any]:
    """Embed every utterance of cfg.eval.trials, cosine-score the trials and compute EER/minDCF.

    Writes `scores.txt` and `metrics.json` into `out_dir` when given. Unlabelled trial lists get
    scores only.
    """
    trials = read_trials(cfg.eval.trials)
    root = Path(cfg.eval.root) if cfg.eval.root else Path(cfg.eval.trials).parent
    scores = trial_scores(embedder, cfg, trials, root, device)
    n_utterances = len({u for t in trials for u in (t.enroll, t.test)})
    result: dict[str, Any] = {"n_trials": len(trials), "n_utterances": n_utterances, "protocol": protocol(cfg)}
    if all(t.label is not None for t in trials):
        labels = np.array([t.label for t in trials], dtype=np.int64)
        result.update(verification_metrics(scores, labels))
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_scores(Path(out_dir) / "scores.txt", trials, scores)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def trial_scores(embedder: nn.Module, cfg: Config, trials: Sequence[Trial], root: Path, device: torch.device
                 ) -> np.ndarray:
    """Scores of `trials` (ids relative to `root`) under the config's evaluation protocol (`eval.mode`,
    `eval.crop_score`), AS-normed against training utterances when `eval.cohort` > 0; as validation scores."""
    names, emb = embed_trials(embedder, cfg, trials, root, device)
    enroll, test = trial_indices(trials, {name: i for i, name in enumerate(names)})
    if cfg.eval.cohort <= 0:
        return cosine_scores(emb, enroll, test)
    return as_norm_scores(emb, enroll, test, _cohort_embeddings(embedder, cfg, device), cfg.eval.top_n)


def embed_trials(embedder: nn.Module, cfg: Config, trials: Sequence[Trial], root: Path, device: torch.device
                 ) -> tuple[list[str], np.ndarray]:
    """Sorted distinct utterance ids of `trials` and their embeddings (rows) under the evaluation protocol."""
    names = sorted({u for t in trials for u in (t.enroll, t.test)})
    return names, _embed(embedder, cfg, [str(root / n) for n in names], device)


def _embed(embedder: nn.Module, cfg: Config, paths: Sequence[str], device: torch.device) -> np.ndarray:
    rate, e = cfg.data.sample_rate, cfg.eval
    batching = Batching(e.mode, int(e.batch_seconds * rate), int(e.max_seconds * rate), crops=e.crops,
                        crop_samples=int(e.crop_seconds * rate), pairwise=e.crop_score == "mean_pairwise")
    return extract_embeddings(embedder, paths, device, rate, num_workers=min(cfg.data.num_workers, 2),
                              progress=True, batching=batching)


def _cohort_embeddings(embedder: nn.Module, cfg: Config, device: torch.device) -> np.ndarray:
    """The eval.cohort utterances, embedded as the trials are."""
    return _embed(embedder, cfg, cohort_paths(cfg), device)


def cohort_paths(cfg: Config) -> list[str]:
    """eval.cohort utterances of the training list, drawn with train.seed (the evaluation after training and
    `voxfast recipe` draw the same ones)."""
    if cfg.data.store and not Path(cfg.data.train_list).is_file():
        raise VoxfastError(f"eval.cohort draws its utterances from data.train_list ({cfg.data.train_list}), which "
                           "does not exist; a run from data.store needs the list too (or eval.cohort=0)")
    utts = read_utterances(cfg.data.train_list, cfg.data.train_root)
    rng = np.random.default_rng([cfg.train.seed % 2**32, 17])
    chosen = np.sort(rng.choice(len(utts), size=min(cfg.eval.cohort, len(utts)), replace=False))
    return [utts[i].path for i in chosen]


def load_embedder(path: str | Path, device: torch.device) -> tuple[nn.Module, Config]:
    """The embedding network and its config from a training checkpoint (the head is dropped)."""
    return embedder_from_state(load_checkpoint(path, device), path, device)


def embedder_from_state(state: dict[str, Any], path: str | Path, device: torch.device) -> tuple[nn.Module, Config]:
    """:func:`load_embedder` for a checkpoint already in memory (`path` names it in messages)."""
    if "config" not in state or state.get("task", "speaker") != "speaker":
        kind = f"a {state['task']} checkpoint" if "task" in state else "no config inside"
        raise VoxfastError(f"{path}: not a speaker checkpoint ({kind}); pass one written by `voxfast train` for "
                           "speaker verification")
    cfg = load_config_dict(state["config"])
    embedder = build_embedder(cfg)
    prefix = "embedder."
    embedder.load_state_dict({k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return embedder.to(device).eval(), cfg

