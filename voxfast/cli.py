"""Command-line interface: `voxfast <command>`.

Only the CLI configures logging. User errors (VoxfastError) print one line naming the problem and
the fix and exit with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voxfast import pipeline
from voxfast.config import load_config
from voxfast.errors import VoxfastError
from voxfast.tasks import TASKS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except VoxfastError as exc:
        print(f"voxfast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voxfast: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxfast", description="Fast speaker-verification training and scoring.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "train", _cmd_train, doc=pipeline.train, help="train a speaker, image or EEG model")
    _add_config_args(p)
    p.add_argument("--task", choices=list(TASKS), default="speaker",
                   help="what to train: speaker verification (default), image or EEG classification")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue exactly from a checkpoint; `auto`: the run folder's checkpoints/last.pt if any")
    p.add_argument("--no-eval", action="store_true", help="skip scoring eval.trials after training")
    p.add_argument("--profile", metavar="N:M", type=_step_range,
                   help="write a torch.profiler trace of optimizer steps N to M into the run folder")

    p = _command(sub, "average-checkpoints", _cmd_average, help="average the weights of the last N epoch checkpoints")
    p.add_argument("source", nargs="+", help="a run folder (or its checkpoints/ folder), or .pt files to average")
    p.add_argument("--last", type=int, help="how many of the newest epoch checkpoints of a run folder")
    p.add_argument("--out", required=True, help="the averaged checkpoint to write")

    p = _command(sub, "demo", _cmd_demo, doc=pipeline.run_demo, help="synthetic corpus, training, EER in minutes")
    _add_config_args(p, default="demo")
    p.add_argument("--data", default="demo_data", help="corpus folder, generated when missing (default: demo_data)")
    p.add_argument("--out", help="run folder (default: runs/demo-<date>-<time>)")

    p = _command(sub, "make-demo-data", _cmd_make_data, doc=pipeline.make_demo_data,
                 help="write the synthetic voice corpus (or image / EEG demo data)")
    p.add_argument("out", help="output folder")
    p.add_argument("--task", choices=list(TASKS), default="speaker", help="which demo data (default: the voice corpus)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-speakers", type=int, default=40)
    p.add_argument("--test-speakers", type=int, default=20)
    p.add_argument("--train-utts", type=int, default=24, help="utterances per training speaker")
    p.add_argument("--test-utts", type=int, default=12, help="utterances per test speaker")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")

    p = _command(sub, "extract", _cmd_extract, doc=pipeline.extract,
                 help="embed every utterance of a list, folder or trial list into one file")
    p.add_argument("checkpoint", help="a .pt file from a run's checkpoints/ folder")
    p.add_argument("source", help="training list, Kaldi data dir, folder of audio files, or trial list")
    p.add_argument("--out", required=True, help="embedding file to write (.npz, keyed by utterance id)")
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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    p = _command(sub, "score", _cmd_score, doc=pipeline.score,
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
    p.add_argument("--out", default="scores.txt", help="score file, lines `enroll test score` (default: scores.txt)")

    p = _command(sub, "eval", _cmd_eval, doc=pipeline.evaluate, help="EER and minDCF of a score file or a checkpoint")
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

    p = _command(sub, "bench-eval", _cmd_bench_eval,
                 help="time EER/minDCF, cosine scoring and AS-norm at VoxCeleb scale")
    p.add_argument("--trials", type=int, default=10_000_000,
                   help="synthetic trials for the EER/minDCF timing (default 10000000)")
    p.add_argument("--target-fraction", type=float, default=0.5,
                   help="share of target trials (default 0.5, as in VoxCeleb1-O/E/H)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = _command(sub, "pack", _cmd_pack, doc=pipeline.pack, help="decode a list once into a memory-mapped store")
    p.add_argument("source", help="VoxCeleb-style list, Kaldi data dir, or a folder of audio files (e.g. MUSAN, RIRs)")
    p.add_argument("out", help="store folder (an interrupted pack into the same folder resumes)")
    p.add_argument("--root", help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--sample-rate", type=int, default=16000, help="files at other rates are resampled (default 16000)")
    p.add_argument("--dtype", choices=["int16", "float32"], default="int16",
                   help="int16 (audio) or float32 (RIR banks, whose peaks may exceed int16)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--skip-bad", action="store_true", help="exit 0 even when some files could not be packed")

    p = _command(sub, "bench-loader", _cmd_bench_loader, help="time the loader against the voxceleb_trainer recipe")
    p.add_argument("--list", help="training list to read (default: the demo corpus, generated when missing)")
    p.add_argument("--noise-dir", help="MUSAN-style folder for augmentation (default: beside the list)")
    p.add_argument("--rir-dir", help="RIR folder for augmentation (default: rirs/ beside the list)")
    p.add_argument("--store", help="packed store of the list (default: <list folder>/store, packed when missing)")
    p.add_argument("--make-corpus", metavar="DIR",
                   help="first write a VoxCeleb-shaped corpus (4-16 s utterances, 5 s noises, 0.3-1 s RIRs) to DIR")
    p.add_argument("--speakers", type=int, default=40, help="speakers of --make-corpus (default 40)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds sharing --seconds; each configuration reports its median (default 3)")
    _add_bench_args(p, batch=64, device_help="device for the batched augmentation (auto, cpu, cuda)")

    p = _command(sub, "export", _cmd_export, help="export a checkpoint's embedding network")
    p.add_argument("checkpoint", help="a .pt file from a run's checkpoints/ folder")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("--out", help="output file (default: the checkpoint's name with .ts or .onnx)")

    p = _command(sub, "bench-model", _cmd_bench_model, help="forward+backward samples/s per model and speed switch")
    p.add_argument("--models", nargs="*", help="registered names (default: all)")
    p.add_argument("--modes", nargs="*", help="subset of: fp32 autocast channels_last channels_last+autocast")
    _add_bench_args(p, batch=32, device_help="auto, cpu, cuda or cuda:N")

    p = _command(sub, "bench-train", _cmd_bench_train, help="training samples/s: a plain loop against the speed preset")
    _add_config_args(p, default="demo")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration (default 30)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first: worker start-up, compilation, autotuning (default 3)")
    p.add_argument("--no-compile", action="store_true",
                   help="speed preset without torch.compile (on a CPU one compilation takes 1-2 minutes)")
    p.add_argument("--task", choices=list(TASKS), default="speaker",
                   help="the task to time (image / eeg need their demo config or data)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = _command(sub, "bench-recipe", _cmd_bench_recipe, help="recipes at the same training budget, beside the floor")
    p.add_argument("configs", nargs="+", help="configs to compare (YAML files or shipped names)")
    p.add_argument("--budget", type=float, default=10.0, help="training minutes per config (default 10)")
    p.add_argument("--out", default="runs/bench-recipe", help="folder of the runs (default: runs/bench-recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for every config")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = _command(sub, "tune", _cmd_tune, help="find the micro-batch and loader workers for this machine")
    _add_config_args(p, default="demo")
    p.add_argument("--out", required=True, metavar="TUNED.yaml", help="config to write, with the two choices")
    p.add_argument("--max-micro", type=int, default=1024, help="largest micro-batch to try (default 1024)")
    p.add_argument("--workers", type=_int_list, metavar="0,1,2,4",
                   help="loader worker counts to time (default: 0,1,2,4,8 up to the number of cores)")
    p.add_argument("--batches", type=int, default=40, help="batches timed per worker count (default 40)")

    p = _command(sub, "models", _cmd_models, help="list the registered model names")
    return parser


def _command(sub: Any, name: str, func: Any, help: str, doc: Any = None, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command that runs `func`, described by the docstring of `doc` (the pipeline function), else func's."""
    p = sub.add_parser(name, help=help, description=inspect.cleandoc((doc or func).__doc__ or ""), **kwargs)
    p.set_defaults(func=func)
    return p


def _add_bench_args(p: argparse.ArgumentParser, batch: int, device_help: str) -> None:
    """The options every `bench-*` command shares."""
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--frames", type=int, default=200, help="crop length in frames (200 = 2 s)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, help="a YAML file or a shipped config's name (demo, small, "
                   "voxceleb_trainer, image_demo, eeg_demo)" + (f"; default: {default}" if default else ""))
    p.add_argument("--preset", action="append", default=[], metavar="NAME_OR_YAML",
                   help="settings laid over the config: a shipped preset (speed, reproducible) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=1e-3")


def _step_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition(":")
    try:
        start, end = int(first), int(last)
    except ValueError:
        start = end = 0
    if not sep or not 1 <= start <= end:
        raise argparse.ArgumentTypeError(f"expected N:M with 1 <= N <= M (optimizer steps), got {text!r}")
    return start, end


def _print_files(files: Sequence[tuple[str, str]], what: str) -> None:
    """List (path, reason) pairs under a count, as the pack and extract summaries do."""
    if files:
        print(f"{len(files)} {what}:")
        for path, reason in files:
            print(f"  {path}: {reason}")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts >= 0, e.g. 0,1,2,4, got {text!r}")
    return values


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, args.preset)
    report, status = pipeline.train(cfg, args.task, args.resume, not args.no_eval, args.profile)
    if report is not None:
        print(json.dumps(report, indent=2))
    return status


def _cmd_demo(args: argparse.Namespace) -> int:
    report = pipeline.run_demo(args.config, args.data, args.out, args.overrides, args.preset)
    print(pipeline.format_demo(report, report["out_dir"]))
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    """Average the weights of checkpoints (WeSpeaker's recipe: the last N epochs), for a steadier model."""
    from voxfast.train.checkpoint import run_average

    print(run_average(args.source[0] if len(args.source) == 1 else args.source, args.last, args.out))
    return 0


def _cmd_make_data(args: argparse.Namespace) -> int:
    names = ("train_speakers", "test_speakers", "train_utts", "test_utts", "workers")
    options = {k: getattr(args, k) for k in names} if args.task == "speaker" else {}
    start = time.perf_counter()
    path = pipeline.make_demo_data(args.task, args.out, args.seed, **options)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: train on {path}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    opts = pipeline.ExtractOptions(args.mode, args.crops, args.crop_seconds, args.batch_seconds, args.max_seconds,
                          args.workers, args.precision, args.device)
    start = time.perf_counter()
    summary = pipeline.extract(args.checkpoint, args.source, args.out, args.root, opts)
    print(f"wrote {summary.written} embeddings ({summary.dim}-d, {summary.resumed} from an interrupted run) to "
          f"{args.out} in {time.perf_counter() - start:.1f} s")
    _print_files(summary.skipped, "unreadable file(s) skipped")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
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


def _cmd_bench_eval(args: argparse.Namespace) -> int:
    """Time evaluation at VoxCeleb scale on synthetic data, in one run: EER + minDCF of --trials scores by voxfast
    and by voxceleb_trainer's route (sklearn roc_curve, ComputeErrorRates, ComputeMinDcf), cosine scoring of 1 M
    trials over 50 k embeddings, and AS-norm top-300 of 100 k trials (over 25 k utterances) against a 20 k cohort.
    """
    from voxfast.bench.eval import format_eval_results, run_eval_bench

    print(format_eval_results(run_eval_bench(args.trials, args.target_fraction), args.json))
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    summary = pipeline.pack(args.source, args.out, args.root, args.sample_rate, args.workers, args.dtype)
    print(f"packed {summary.packed} utterances ({summary.samples / args.sample_rate / 3600:.2f} h, "
          f"{summary.resumed} resumed) into {args.out} in {summary.seconds:.1f} s")
    _print_files(summary.bad, f"file(s) could not be packed (also in {Path(args.out) / 'bad.tsv'})")
    return 0 if args.skip_bad or not summary.bad else 1


def _cmd_bench_loader(args: argparse.Namespace) -> int:
    """Samples/s of voxfast's loader configurations and of the voxceleb_trainer recipe, measured in one run."""
    from voxfast.bench.loader import bench_loader, format_results
    from voxfast.runtime import resolve_device

    results = bench_loader(args.list, args.make_corpus, args.speakers, args.noise_dir, args.rir_dir, args.store,
                           workers=args.workers, batch=args.batch, frames=args.frames, seconds=args.seconds,
                           device=str(resolve_device(args.device)), rounds=args.rounds)
    print(format_results(results, args.json))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the embedding network (waveform in, embedding out; dynamic batch and length), checked against eager."""
    out, diff = pipeline.export(args.checkpoint, args.format, args.out)
    print(f"wrote {out} ({args.format}); max |export - eager| on a new length: {diff:.2e}")
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    """Training throughput (forward + backward) of each model in fp32, autocast and channels_last, same run."""
    from voxfast.bench.model import MODES, format_model_results, run_model_bench
    from voxfast.runtime import resolve_device

    results = run_model_bench(args.models, resolve_device(args.device), args.batch, args.frames, args.seconds,
                              tuple(args.modes or MODES))
    print(format_model_results(results, args.json))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the names accepted by model.name (speaker), image.model and eeg.model, grouped by task."""
    from voxfast.models.registry import TASK_MODEL_KEYS, models_by_task

    for task, names in models_by_task().items():
        print(f"{task} ({TASK_MODEL_KEYS[task]}):")
        print("\n".join(f"  {name}" for name in names))
    return 0


def _cmd_bench_train(args: argparse.Namespace) -> int:
    """Training samples/s of the configured model and data, a plain loop against the speed preset, same run.

    The plain loop runs as voxceleb_trainer does (fp32, a host sync every step, no channels_last or compile,
    CPU augmentation, no pinned memory); the other is the config with the shipped speed preset over it.
    """
    from voxfast.bench.train import bench_train, format_train_results

    results = bench_train(args.config, args.overrides, args.preset, args.steps, args.warmup, not args.no_compile,
                          args.task)
    print(format_train_results(results, args.json))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    """Measure the micro-batch and loader worker count for this machine and write them into a config.

    Micro-batch: the largest that fits in device memory (on a CPU, which never runs out: the fastest) and
    divides train.global_batch. Workers: the fewest within 5 % of the best loader throughput.
    """
    from voxfast.bench.tune import format_tune, tune_to_file

    cfg = load_config(args.config, args.overrides, args.preset)
    result = tune_to_file(cfg, args.out, args.max_micro, args.workers, args.batches)
    print(format_tune(result, args.out))
    return 0


def _cmd_bench_recipe(args: argparse.Namespace) -> int:
    from voxfast.bench import recipe

    rows = recipe.run_recipe_bench(args.configs, args.set, args.budget, args.out)
    print(recipe.format_recipe_results(rows, args.budget, args.json))
    return 0
