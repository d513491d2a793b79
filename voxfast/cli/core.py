"""The pipeline's commands: train, demo, data, extract, score, eval, pack, export, models."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from voxfast import pipeline
from voxfast.cli.common import (
    add_config_args,
    add_out_file_args,
    check_new_run,
    check_out_file,
    check_out_folder,
    command,
    print_files,
    step_range,
)
from voxfast.config import load_config
from voxfast.errors import VoxfastError
from voxfast.tasks import TASKS, task_class


def add_commands(sub: Any) -> None:
    p = command(sub, "train", _cmd_train, doc=pipeline.train, help="train a speaker, image or EEG model")
    add_config_args(p, default_help="small for the speaker task (the small-data recipe), built-in for the others")
    p.add_argument("--task", choices=list(TASKS), default="speaker",
                   help="what to train: speaker verification (default), image or EEG classification")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue exactly from a checkpoint; `auto`: the run folder's checkpoints/last.pt if any")
    p.add_argument("--no-eval", action="store_true", help="skip scoring eval.trials after training")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the parameter counts and the steps per epoch; train nothing")
    p.add_argument("--profile", metavar="N:M", type=step_range,
                   help="write a torch.profiler trace of optimizer steps N to M into the run folder")
    p.add_argument("--baseline", action="store_true",
                   help="image and EEG: also fit the classical baseline (EEG: CSP + LDA, images: logistic regression "
                        "on pixels) on the same split or cross-validation folds (train.cv_folds) and print it beside "
                        "the model (= train.baseline=true)")

    p = command(sub, "average-checkpoints", _cmd_average, help="average the weights of the last N epoch checkpoints")
    p.add_argument("source", nargs="+", help="a run folder (or its checkpoints/ folder), or .pt files to average")
    p.add_argument("--last", type=int, help="how many of the newest epoch checkpoints of a run folder")
    add_out_file_args(p, "the averaged checkpoint to write")

    p = command(sub, "demo", _cmd_demo, doc=pipeline.run_demo, help="synthetic corpus, training, EER in minutes")
    add_config_args(p, default="demo")
    p.add_argument("--data", default="demo_data", help="corpus folder, generated when missing (default: demo_data)")
    p.add_argument("--out", help="run folder (default: runs/demo-<date>-<time>)")

    p = command(sub, "make-demo-data", _cmd_make_data, doc=pipeline.make_demo_data,
                 help="write the synthetic voice corpus (or image / EEG demo data)")
    p.add_argument("out", help="output folder")
    p.add_argument("--task", choices=list(TASKS), default="speaker", help="which demo data (default: the voice corpus)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-speakers", type=int, default=40)
    p.add_argument("--test-speakers", type=int, default=20)
    p.add_argument("--train-utts", type=int, default=24, help="utterances per training speaker")
    p.add_argument("--test-utts", type=int, default=12, help="utterances per test speaker")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")

    p = command(sub, "extract", _cmd_extract, doc=pipeline.extract,
                 help="embed every utterance of a list, folder or trial list into one file")
    p.add_argument("checkpoint", help="a .pt file from a run's checkpoints/ folder")
    p.add_argument("source", help="training list, Kaldi data dir, folder of audio files, or trial list")
    add_out_file_args(p, "embedding file to write (.npz, keyed by utterance id); an interrupted run resumes from "
                      "OUT.partial/ (under torchrun: from OUT.shards/, with the same --nproc_per_node)")
    p.add_argument("--root", help="folder the source's paths are relative to (default: the list's folder)")
    p.add_argument("--mode", choices=["full", "crops"], default="full",
                   help="full: whole utterances batched by length; crops: mean of --crops evenly spaced crops")
    p.add_argument("--crops", type=int, default=10, help="crops per utterance in crops mode (default 10)")
    p.add_argument("--crop-seconds", type=float, default=4.0, help="crop length in crops mode (default 4)")
    p.add_argument("--batch-seconds", type=float, default=120.0, help="padded audio per forward pass (default 120)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="read at most this much per utterance (0: all)")
    p.add_argument("--workers", type=int, default=2, help="loader processes reading audio (default 2)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast of the network (the front end stays fp32); auto as in training")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: each rank's GPU)")
    p.add_argument("--per-speaker", type=int, default=0, metavar="N",
                   help="only N utterances of each speaker of a training list or Kaldi dir, seeded uniform choice "
                        "(a speaker-mean cohort for score --speaker-means; default 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --per-speaker choice (default 0)")

    p = command(sub, "score", _cmd_score, doc=pipeline.score,
                 help="score a trial list from embeddings or a checkpoint, optionally AS-normed",
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trials", help="trial list: `label enroll test`, `enroll test target|nontarget` or `enroll test`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", metavar="EMB.npz", help="embedding table holding every trial utterance")
    source.add_argument("--checkpoint", metavar="CKPT", help="embed the trial utterances with this checkpoint's model")
    p.add_argument("--root", help="with --checkpoint: folder the trial ids are relative to (default: the list's)")
    p.add_argument("--device", default="auto", help="with --checkpoint: auto, cpu, cuda or cuda:N")
    p.add_argument("--cohort", metavar="EMB.npz", help="AS-norm cohort: an embedding table, e.g. of training speech")
    p.add_argument("--cohort-list", metavar="TRAIN_LIST", help="list or Kaldi dir naming the cohort ids' speakers")
    p.add_argument("--speaker-means", action="store_true",
                   help="cohort of one mean embedding per speaker (speakers from --cohort-list)")
    p.add_argument("--mean", metavar="EMB.npz|cohort",
                   help="subtract the mean of this embedding table (`cohort`: of the --cohort table) before scoring")
    p.add_argument("--top-n", type=int, default=300, help="AS-norm: top cohort scores per utterance (default 300)")
    add_out_file_args(p, "score file, lines `enroll test score` (default: scores.txt)", False, "scores.txt")

    p = command(sub, "eval", _cmd_eval, doc=pipeline.evaluate, help="EER and minDCF of a score file or a checkpoint")
    p.add_argument("scores", nargs="?", help="score file with lines `enroll test score` (or give --checkpoint)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="embed and score the trial list with this checkpoint, and store the EER threshold in it")
    p.add_argument("--root", help="with --checkpoint: folder the trial paths are relative to (default: the list's)")
    p.add_argument("--device", default="auto", help="with --checkpoint: auto, cpu, cuda or cuda:N")
    p.add_argument("--trials", required=True,
                   help="trial list of the same pairs: `label enroll test`, `enroll test target|nontarget` "
                        "or unlabelled `enroll test` (then only the scores are counted)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--out", metavar="DIR", help="also write DIR/metrics.json")
    p.add_argument("--det", metavar="DET.png", help="also plot the DET curve (needs `pip install 'voxfast[plot]'`)")
    p.add_argument("--set", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="with --checkpoint: override its config, e.g. eval.cohort=2000 eval.mode=crops")

    p = command(sub, "pack", _cmd_pack, doc=pipeline.pack, help="decode a list once into a memory-mapped store")
    p.add_argument("source", nargs="?",
                   help="VoxCeleb-style list, Kaldi data dir, or a folder of audio files (e.g. MUSAN, RIRs)")
    p.add_argument("out", nargs="?", help="store folder (an interrupted pack into the same folder resumes)")
    p.add_argument("--verify", metavar="STORE", help="instead: check every utterance of a store against its CRC32")
    p.add_argument("--root", help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--sample-rate", type=int, default=16000, help="files at other rates are resampled (default 16000)")
    p.add_argument("--dtype", choices=["int16", "float32"], default="int16",
                   help="int16 (audio) or float32 (RIR banks, whose peaks may exceed int16)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--skip-bad", action="store_true", help="exit 0 even when some files could not be packed")

    p = command(sub, "export", _cmd_export, help="export a checkpoint's embedding network")
    p.add_argument("checkpoint", help="a .pt file from a run's checkpoints/ folder")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    add_out_file_args(p, "output file (default: the checkpoint's name with .ts or .onnx)", False)

    p = command(sub, "models", _cmd_models, help="list the registered model names")




def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config or task_class(args.task).default_config, args.overrides, args.preset)
    if args.baseline:
        cfg = replace(cfg, train=replace(cfg.train, baseline=True))
    if args.dry_run:
        print(pipeline.dry_run(cfg, args.task))
        return 0
    check_new_run(cfg.train.out_dir, args.resume, "train.out_dir")
    report, status = pipeline.train(cfg, args.task, args.resume, not args.no_eval, args.profile)
    if report is not None:
        print(json.dumps(report, indent=2))
        if "cv" in report:
            from voxfast.tasks.cv import format_summary

            print(format_summary(report["cv"]))
            print(f"per-fold table: {Path(cfg.train.out_dir) / 'cv.md'} (and cv.json)")
        elif "baseline" in report:
            print(_beside_baseline(report))
    return status


def _beside_baseline(report: dict[str, Any]) -> str:
    """One line per metric: the model's validation figure and the classical baseline's on the same examples."""
    keys = [k for k in ("accuracy", "balanced_accuracy") if k in report["baseline"]]
    return "\n".join(f"{k}: model {report.get(k, float('nan')):.4f}  baseline ({report['baseline']['method']}) "
                     f"{report['baseline'][k]:.4f}" for k in keys)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.out:
        check_new_run(args.out, None, "--out")
    report = pipeline.run_demo(args.config, args.data, args.out, args.overrides, args.preset)
    print(pipeline.format_demo(report, report["out_dir"]))
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    """Average the weights of checkpoints (WeSpeaker's recipe: the last N epochs), for a steadier model."""
    from voxfast.train.checkpoint import run_average

    check_out_file(args.out, args.overwrite)
    print(run_average(args.source[0] if len(args.source) == 1 else args.source, args.last, args.out))
    return 0


def _cmd_make_data(args: argparse.Namespace) -> int:
    names = ("train_speakers", "test_speakers", "train_utts", "test_utts", "workers")
    options = {k: getattr(args, k) for k in names} if args.task == "speaker" else {}
    check_out_folder(args.out, "OUT")
    start = time.perf_counter()
    path = pipeline.make_demo_data(args.task, args.out, args.seed, **options)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: train on {path}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    opts = pipeline.ExtractOptions(args.mode, args.crops, args.crop_seconds, args.batch_seconds, args.max_seconds,
                                   args.workers, args.precision, args.device, args.per_speaker, args.seed)
    check_out_file(args.out, args.overwrite)
    start = time.perf_counter()
    summary = pipeline.extract(args.checkpoint, args.source, args.out, args.root, opts, sharded=True)
    merged = f", merged from {summary.shards} shards" if summary.shards else ""
    target = f"{summary.shard} (rank 0 merges the shards)" if summary.shard else args.out  # torchrun, rank > 0
    print(f"wrote {summary.written} embeddings ({summary.dim}-d, {summary.resumed} from an interrupted run{merged}) "
          f"to {target} in {time.perf_counter() - start:.1f} s")
    print_files(summary.skipped, "unreadable file(s) skipped")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    check_out_file(args.out, args.overwrite)
    norm = pipeline.Normalisation(args.cohort, args.cohort_list, args.speaker_means, args.mean, args.top_n)
    n, m = pipeline.score(args.trials, args.out, args.embeddings, args.checkpoint, args.root, args.device, norm)
    print(f"wrote {n} scores to {args.out}")
    if m is not None:
        print(f"EER {m['eer']:.3f} %  minDCF(0.01) {m['min_dcf_0.01']:.4f}  minDCF(0.05) {m['min_dcf_0.05']:.4f}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    metrics = pipeline.evaluate(args.trials, args.scores, args.checkpoint, args.root, args.device, args.out, args.det,
                                args.set)
    print(json.dumps(metrics, indent=2) if args.json else pipeline.format_evaluation(metrics, args.trials))
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    if args.verify:
        return _verify_store(args.verify)
    if not (args.source and args.out):
        raise VoxfastError("voxfast pack needs SOURCE and OUT (or --verify STORE)")
    _check_pack_folder(Path(args.out))
    summary = pipeline.pack(args.source, args.out, args.root, args.sample_rate, args.workers, args.dtype)
    print(f"packed {summary.packed} utterances ({summary.samples / args.sample_rate / 3600:.2f} h, "
          f"{summary.resumed} resumed) into {args.out} in {summary.seconds:.1f} s")
    print_files(summary.bad, f"file(s) could not be packed (also in {Path(args.out) / 'bad.tsv'})")
    return 0 if args.skip_bad or not summary.bad else 1


def _check_pack_folder(out: Path) -> None:
    """OUT is a new folder, an empty one, a store (reused when it holds the same list) or a pack in progress
    (resumed); a folder of other files is refused rather than filled with a store's files."""
    from voxfast.audio.store import INDEX, is_store

    check_out_folder(out, "OUT")
    if out.is_dir() and any(out.iterdir()) and not (is_store(out) or (out / INDEX).exists()):
        raise VoxfastError(f"OUT {out} is a folder of other files, not a store; pack into a new or empty folder")


def _verify_store(folder: str) -> int:
    """Exit 1 and list the damaged utterances when any no longer matches the CRC32 written at packing."""
    from voxfast.audio.store import PackedStore

    store = PackedStore(folder)
    damaged = store.verify()
    print(f"{folder}: {len(store.utts) - len(damaged)} of {len(store.utts)} utterances intact")
    print_files([(utt, "CRC32 mismatch") for utt in damaged], "damaged utterance(s) (repack them: delete the store "
                "and run voxfast pack again)")
    return 1 if damaged else 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the embedding network (waveform in, embedding out; dynamic batch and length), checked against eager."""
    out = args.out or str(Path(args.checkpoint).with_suffix(".ts" if args.format == "torchscript" else ".onnx"))
    check_out_file(out, args.overwrite)
    out, diff = pipeline.export(args.checkpoint, args.format, out)
    print(f"wrote {out} ({args.format}); max |export - eager| on a new length: {diff:.2e}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the names accepted by model.name (speaker), image.model and eeg.model, grouped by task."""
    from voxfast.models.registry import TASK_MODEL_KEYS, models_by_task

    for task, names in models_by_task().items():
        print(f"{task} ({TASK_MODEL_KEYS[task]}):")
        print("\n".join(f"  {name}" for name in names))
    return 0
