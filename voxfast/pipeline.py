"""What the CLI commands do, as plain functions: train (and score), demo, demo data, pack, extract, score, eval.

The CLI only parses arguments, calls one of these and prints; a notebook or a recipe script calls them the
same way. Each function composes the modules that own the work (tasks, trainer, evaluation, store) and returns
what a caller would print or test.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxfast.config import Config, load_config
from voxfast.errors import VoxfastError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- training


def train(cfg: Config, task: str = "speaker", resume: str | None = None, evaluate: bool = True,
          profile: tuple[int, int] | None = None) -> tuple[dict[str, Any] | None, int]:
    """Train a model; the run folder (train.out_dir) receives config, checkpoints and metrics.

    Under `torchrun --nproc_per_node N -m voxfast train ...` every process trains on its share of each global
    batch (DDP); rank 0 alone logs, writes checkpoints and scores the trial list and prints the summary. A run
    stopped by SIGINT/SIGTERM writes last.pt and exits with 128 + the signal's number (the status returned
    beside the summary, which is None on other ranks).
    """
    from voxfast.tasks.run import train_and_score
    from voxfast.train.distributed import init_distributed, shutdown

    info = init_distributed(cfg.train.device)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        summary, metrics = train_and_score(cfg, Path(cfg.train.out_dir), resume, evaluate, profile, task)
    finally:
        shutdown()
    stopped = summary.get("interrupted")
    status = 128 + signal.Signals[stopped].value if stopped in ("SIGINT", "SIGTERM") else 0
    return ({**summary, **metrics} if info.is_main else None), status


def dry_run(cfg: Config, task: str = "speaker") -> str:
    """`voxfast train --dry-run`: the resolved config as YAML (presets and overrides applied, validated), then,
    as YAML comments, what the task can tell without training: parameter counts and steps per epoch. A recipe is
    checked this way before hours of GPU time are spent on it; nothing is trained or written.
    """
    import yaml

    from voxfast.config import config_to_dict
    from voxfast.tasks import task_class

    cfg = task_class(task).resolve_config(cfg)
    facts = task_class(task).describe(cfg)
    notes = [f"# {k}: {v:,}" if isinstance(v, int) else f"# {k}: {v}" for k, v in facts.items()]
    shown = {k: v for k, v in config_to_dict(cfg).items() if k not in {"image", "eeg"} - {task}}  # other tasks'
    return "\n".join([yaml.safe_dump(shown, sort_keys=False).rstrip(), *notes])


def run_demo(config: str, data: str | Path, out: str | Path | None, overrides: list[str], presets: list[str]
             ) -> dict[str, Any]:
    """Generate the synthetic corpus if missing, train the demo model, score held-out speakers.

    Returns the training summary, the metrics and the total minutes; also written to OUT/metrics.json.
    """
    from voxfast.data.synthetic import make_corpus
    from voxfast.tasks.run import train_and_score

    started = time.perf_counter()
    data = Path(data)
    paths = [f"data.train_list={data / 'train_list.txt'}", f"eval.trials={data / 'trials.txt'}"]
    out = Path(out or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    cfg = load_config(config, [*paths, f"train.out_dir={out}", *overrides], presets)  # a typo fails before data
    if not (data / "meta.json").is_file():
        log.info("generating the synthetic corpus in %s", data)
        make_corpus(data)
    summary, metrics = train_and_score(cfg, out)
    report = {**summary, **metrics, "total_minutes": (time.perf_counter() - started) / 60, "out_dir": str(out)}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def format_demo(r: dict[str, Any], out: str | Path) -> str:
    rows = [
        ("EER", f"{r['eer']:.2f} %"),
        ("minDCF (p=0.01)", f"{r['min_dcf_0.01']:.3f}"),
        ("minDCF (p=0.05)", f"{r['min_dcf_0.05']:.3f}"),
        ("trials", f"{r['n_trials']} ({r['n_target']} target)"),
        ("training", f"{r['train_minutes']:.2f} min"),
        ("train speed", f"{r['train_samples_per_s']:.1f} samples/s"),
        ("total", f"{r['total_minutes']:.2f} min"),
    ]
    return "\n".join([f"voxfast demo: held-out synthetic speakers ({out})", *(f"  {n:<16} {v}" for n, v in rows)])


def make_demo_data(task: str, out: str | Path, seed: int = 0, **options: Any) -> Path:
    """Write the embedded synthetic corpus: speakers, train list, trial list, noise/speech/music banks, RIRs.

    With --task image or eeg: the synthetic classification data of that task instead. Returns what to train on
    (speaker options: CorpusSpec fields).
    """
    from voxfast.tasks import task_class

    return task_class(task).make_demo_data(out, seed, **options)


# ----------------------------------------------------------------------------------------------- audio


def pack(source: str | Path, out: str | Path, root: str | None = None, sample_rate: int = 16000, workers: int = 2,
         dtype: str = "int16") -> Any:
    """Decode a list, a Kaldi dir or a folder of audio (MUSAN, RIRs: speaker = first sub-folder) into a store."""
    from voxfast.audio.io import AUDIO_SUFFIXES, find_audio_files
    from voxfast.audio.store import pack_store
    from voxfast.data.manifest import Utterance, read_utterances

    src = Path(source)
    if src.is_dir() and not (src / "wav.scp").is_file():
        files = find_audio_files(src)
        if not files:
            raise VoxfastError(f"{src}: no {', '.join(AUDIO_SUFFIXES)} files found (pass a list or a folder of audio)")
        utts = [Utterance(str(p.relative_to(src)), p.relative_to(src).parts[0], str(p.resolve())) for p in files]
    else:
        utts = read_utterances(src, root)
    return pack_store(utts, out, sample_rate=sample_rate, workers=workers, dtype=dtype)


def export(checkpoint: str, fmt: str = "torchscript", out: str | None = None) -> tuple[str, float]:
    """Write the embedding network (waveform in, embedding out; dynamic batch and length), checked against eager.

    Returns the file and the largest |export - eager| on a new batch and length; above 1e-3 it is an error.
    """
    import torch

    from voxfast.export import export_embedder
    from voxfast.tasks.speaker import load_embedder

    embedder, cfg = load_embedder(checkpoint, torch.device("cpu"))
    out = out or str(Path(checkpoint).with_suffix(".ts" if fmt == "torchscript" else ".onnx"))
    diff = export_embedder(embedder, out, fmt, cfg.data.sample_rate)
    if diff > 1e-3:
        raise VoxfastError(f"exported model differs from eager by {diff:.2e} (> 1e-3); do not use {out}")
    return out, diff


# ----------------------------------------------------------------------------------------------- evaluation


@dataclass
class ExtractOptions:
    """How `voxfast extract` embeds: whole utterances or averaged crops, batch size, precision, device, and which
    utterances (`per_speaker` > 0: that many per speaker, chosen with `seed`; see eval.embeddings.speaker_subset)."""

    mode: str = "full"
    crops: int = 10
    crop_seconds: float = 4.0
    batch_seconds: float = 120.0
    max_seconds: float = 0.0
    workers: int = 2
    precision: str = "auto"
    device: str = "auto"
    per_speaker: int = 0
    seed: int = 0


def extract(checkpoint: str, source: str, out: str, root: str | None, opts: ExtractOptions, sharded: bool = False
            ) -> Any:
    """Embed every utterance of a source into one table (ids, L2-normalised float32 rows) for `voxfast score`.

    Whole utterances are batched by length (padding at most 1 % of an utterance, by repeating it). An interrupted
    run resumes: rows are flushed to OUT.partial/ every 30 s and skipped on restart with the same settings.
    Unreadable files are skipped and listed; 20 in a row stop the run.

    Under `torchrun --nproc_per_node N -m voxfast extract ...` (in Python: `sharded=True`), each rank embeds an
    equal share of the audio on its own device (GPU LOCAL_RANK, or the CPU) into a resumable shard in OUT.shards/
    and rank 0 merges the shards into OUT in the source's order; a re-run resumes with the same N only. Rows agree
    with a one-process table as a resumed run's do (other length buckets; with --mode crops, the same rows).
    Without `sharded` every process extracts the whole source (the recipe hands each rank its own list).

    --per-speaker N embeds N utterances of each speaker of a training list or Kaldi dir (seeded, uniformly random:
    an unbiased speaker mean), a VoxCeleb2 cohort of 5,994 speaker means (score --speaker-means) from 59,940 files.
    """
    from voxfast.eval.embeddings import Batching, extract_sharded, extract_to_file, extraction_source
    from voxfast.runtime import resolve_precision
    from voxfast.tasks.speaker import load_embedder
    from voxfast.train.distributed import DistInfo, env_info, rank_device

    info = env_info() if sharded else DistInfo()
    device = rank_device(opts.device, info)
    if info.enabled and device.type == "cuda":
        import torch

        torch.cuda.set_device(device)  # the loader's pinning thread follows it: no stray context on GPU 0 per rank
    ids, paths = extraction_source(source, root, opts.per_speaker, opts.seed)  # before the model: errors first
    embedder, cfg = load_embedder(checkpoint, device)
    rate = cfg.data.sample_rate
    batching = Batching(opts.mode, int(opts.batch_seconds * rate), int(opts.max_seconds * rate),
                        crops=opts.crops, crop_samples=int(opts.crop_seconds * rate))
    precision = resolve_precision(opts.precision, device)
    ckpt = Path(checkpoint).resolve()
    settings = {"checkpoint": str(ckpt), "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns, "precision": precision,
                **{k: v for k, v in vars(batching).items() if k != "batch_samples"}}
    if not sharded:
        return extract_to_file(embedder, ids, paths, out, device, batching, rate, opts.workers, precision, settings,
                               progress=True)
    return extract_sharded(embedder, ids, paths, out, device, batching, info.rank, info.world, rate, opts.workers,
                           precision, settings, progress=info.is_main)


@dataclass
class Normalisation:
    """`voxfast score`'s optional mean subtraction and AS-norm cohort (see eval.scoring.load_cohort)."""

    cohort: str | None = None
    cohort_list: str | None = None
    speaker_means: bool = False
    mean: str | None = None
    top_n: int = 300


def score(trials_path: str, out: str, embeddings: str | None = None, checkpoint: str | None = None,
          root: str | None = None, device: str = "auto", norm: Normalisation | None = None
          ) -> tuple[int, dict[str, Any] | None]:
    """Cosine-score a trial list, optionally with mean subtraction and AS-norm; print EER/minDCF if labelled.

    Embeddings come from a table (--embeddings, one .npz keyed by utterance id) or are extracted with a
    checkpoint's model (--checkpoint). With --cohort, scores are adaptive-symmetric normalised (AS-norm) by
    each utterance's top-N cohort scores; a top-N above the cohort size uses the whole cohort (S-norm).

    examples:
      voxfast score trials.txt --embeddings test.npz --out scores.txt
      voxfast score trials.txt --embeddings test.npz --cohort train.npz --mean cohort --top-n 300
      voxfast score trials.txt --embeddings test.npz --cohort train.npz --cohort-list train_list.txt \\
          --speaker-means --mean train.npz
      voxfast score trials.txt --checkpoint runs/x/checkpoints/best.pt --device cpu
    """
    from voxfast.data.manifest import read_trials, write_scores
    from voxfast.eval.metrics import verification_metrics
    from voxfast.eval.scoring import load_cohort, score_trials_from_table
    from voxfast.eval.tables import load_embeddings

    norm = norm or Normalisation()
    trials = read_trials(trials_path)
    cohort, mean = load_cohort(norm.cohort, norm.cohort_list, norm.speaker_means, norm.mean)  # before extraction
    if embeddings:
        ids, emb = load_embeddings(embeddings)
    else:
        ids, emb = _checkpoint_table(checkpoint, trials, trials_path, root, device)
    scores = score_trials_from_table(trials, ids, emb, mean, cohort, norm.top_n)
    write_scores(out, trials, scores)
    if not trials.labelled:
        return len(trials), None
    return len(trials), verification_metrics(scores, trials.labels)


def _checkpoint_table(checkpoint: str | None, trials: list[Any], trials_path: str, root: str | None, device: str
                      ) -> tuple[list[str], np.ndarray]:
    """Embed the trial utterances with a checkpoint's model, exactly as the evaluation after training does."""
    from voxfast.tasks.speaker import embed_trials

    if checkpoint is None:
        raise VoxfastError("give --embeddings EMB.npz or --checkpoint CKPT")
    embedder, cfg, dev = _checkpoint_embedder(checkpoint, device)
    return embed_trials(embedder, cfg, trials, _trial_root(trials_path, root), dev)


def _checkpoint_embedder(checkpoint: str, device: str) -> tuple[Any, Config, Any]:
    """The checkpoint's embedding network on the resolved device, its config and that device."""
    from voxfast.runtime import resolve_device
    from voxfast.tasks.speaker import load_embedder

    dev = resolve_device(device)
    embedder, cfg = load_embedder(checkpoint, dev)
    return embedder, cfg, dev


def _trial_root(trials_path: str, root: str | None) -> Path:
    """The folder trial ids are relative to: --root, else the trial list's folder."""
    return Path(root) if root else Path(trials_path).parent


def evaluate(trials_path: str, scores_path: str | None = None, checkpoint: str | None = None,
             root: str | None = None, device: str = "auto", out: str | None = None, det: str | None = None,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """EER, minDCF, the threshold at EER and the counts of a score file, or of a checkpoint's cosine scores.

    Every trial needs exactly one score (in any order). With --checkpoint the scores are written to OUT/scores.txt
    and the figures, threshold included, are stored in the checkpoint. An unlabelled list gets its count only.
    """
    from voxfast.data.manifest import read_scores, read_trials, write_scores
    from voxfast.eval.metrics import verification_metrics
    from voxfast.eval.scoring import labels_in_score_order

    if (scores_path is None) == (checkpoint is None):
        raise VoxfastError("give either a score file or --checkpoint CKPT (one of them)")
    if overrides and checkpoint is None:
        raise VoxfastError("--set changes how a checkpoint is scored; a score file is already scored")
    trials = read_trials(trials_path)
    if scores_path is not None:
        pairs, scores = read_scores(scores_path)
        labels = labels_in_score_order(scores_path, pairs, trials_path, trials)
    else:
        scores, protocol = _checkpoint_scores(checkpoint, trials, trials_path, root, device, overrides)
        labels = trials.labels == 1 if trials.labelled else None
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            write_scores(Path(out) / "scores.txt", trials, scores)
    if labels is None and det:
        raise VoxfastError(f"{trials_path} is unlabelled; a DET curve needs `label enroll test` or "
                           "`enroll test target|nontarget` trials")
    metrics = verification_metrics(scores, labels) if labels is not None else {"n_trials": len(scores)}
    _write_evaluation(metrics, scores, labels, Path(scores_path or checkpoint).name, out, det)
    if checkpoint and labels is not None:
        from voxfast.train.checkpoint import record_validation

        record_validation(checkpoint, {**metrics, "trials": str(trials_path), "protocol": protocol})
    return metrics


def _checkpoint_scores(checkpoint: str | None, trials: list[Any], trials_path: str, root: str | None, device: str,
                       overrides: Sequence[str] = ()) -> tuple[np.ndarray, str]:
    """Scores as the checkpoint's validation computes them, under its eval settings with `overrides` laid over."""
    from voxfast.config import with_overrides
    from voxfast.tasks.speaker import protocol, trial_scores

    wrong = [o for o in overrides if not o.startswith("eval.")]
    if wrong:
        raise VoxfastError(f"--set {wrong[0]}: only eval.* settings can change for a trained checkpoint")
    embedder, cfg, dev = _checkpoint_embedder(str(checkpoint), device)
    cfg = with_overrides(cfg, overrides, f"{checkpoint} with --set")
    return trial_scores(embedder, cfg, trials, _trial_root(trials_path, root), dev), protocol(cfg)


def _write_evaluation(metrics: dict[str, Any], scores: np.ndarray, labels: np.ndarray | None, name: str,
                      out: str | None, det: str | None) -> None:
    """OUT/metrics.json and the DET plot, where asked for."""
    if det:
        from voxfast.eval.det import det_curve, plot_det

        plot_det(det, {name: det_curve(scores, labels)}, {name: metrics["eer"] / 100})
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2))


def format_evaluation(metrics: dict[str, Any], trial_path: str) -> str:
    if "eer" not in metrics:
        return (f"{metrics['n_trials']} scores, one for each trial of {trial_path}; that list has no labels, so "
                "there is no EER or minDCF (use `label enroll test` or `enroll test target|nontarget` trials)")
    rows = [
        ("EER", f"{metrics['eer']:.3f} %"),
        ("minDCF (p=0.01)", f"{metrics['min_dcf_0.01']:.4f}"),
        ("minDCF (p=0.05)", f"{metrics['min_dcf_0.05']:.4f}"),
        ("threshold at EER", f"{metrics['eer_threshold']:.6g}"),
        ("trials", f"{metrics['n_trials']} ({metrics['n_target']} target, {metrics['n_nontarget']} non-target)"),
    ]
    return "\n".join(f"{name:<17} {value}" for name, value in rows)
