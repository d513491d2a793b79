"""Command-line interface: `voxfast <command>`.

Only the CLI configures logging. User errors (VoxfastError) print one line naming the problem and
the fix and exit with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxfast.errors import VoxfastError
from voxfast.tasks import TASKS, adapter, build_task

log = logging.getLogger("voxfast")
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


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

    p = sub.add_parser("train", help="train a speaker (or image, EEG) model from a config",
                       description=_cmd_train.__doc__)
    _add_config_args(p)
    p.add_argument("--task", choices=TASKS, default="speaker",
                   help="what to train: speaker verification (default), image or EEG classification")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue exactly from a checkpoint; `auto`: the run folder's checkpoints/last.pt if any")
    p.add_argument("--no-eval", action="store_true", help="skip scoring eval.trials after training")
    p.add_argument("--profile", metavar="N:M", type=_step_range,
                   help="write a torch.profiler trace of optimizer steps N to M into the run folder")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("average-checkpoints", help="average the weights of the last N epoch checkpoints",
                       description=_cmd_average.__doc__)
    p.add_argument("source", nargs="+", help="a run folder (or its checkpoints/ folder), or .pt files to average")
    p.add_argument("--last", type=int, help="how many of the newest epoch checkpoints of a run folder")
    p.add_argument("--out", required=True, help="the averaged checkpoint to write")
    p.set_defaults(func=_cmd_average)

    p = sub.add_parser("demo", help="make the synthetic corpus, train, score and report EER",
                       description=_cmd_demo.__doc__)
    _add_config_args(p, default=str(REPO_CONFIGS / "demo.yaml"))
    p.add_argument("--data", default="demo_data", help="corpus folder, generated when missing (default: demo_data)")
    p.add_argument("--out", help="run folder (default: runs/demo-<date>-<time>)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("make-demo-data", help="write the synthetic voice corpus (or image / EEG demo data)",
                       description=_cmd_make_data.__doc__)
    p.add_argument("out", help="output folder")
    p.add_argument("--task", choices=TASKS, default="speaker", help="which demo data (default: the voice corpus)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-speakers", type=int, default=40)
    p.add_argument("--test-speakers", type=int, default=20)
    p.add_argument("--train-utts", type=int, default=24, help="utterances per training speaker")
    p.add_argument("--test-utts", type=int, default=12, help="utterances per test speaker")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("extract", help="embed every utterance of a list, folder or trial list into one file",
                       description=_cmd_extract.__doc__)
    _add_extract_args(p)
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("score", help="score a trial list from embeddings or a checkpoint, optionally AS-normed",
                       description=_cmd_score.__doc__, epilog=_SCORE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_score_args(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("eval", help="EER and minDCF of a score file or a checkpoint", description=_cmd_eval.__doc__)
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
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("bench-eval", help="time EER/minDCF, cosine scoring and AS-norm at VoxCeleb scale",
                       description=_cmd_bench_eval.__doc__)
    p.add_argument("--trials", type=int, default=10_000_000,
                   help="synthetic trials for the EER/minDCF timing (default 10000000)")
    p.add_argument("--target-fraction", type=float, default=0.5,
                   help="share of target trials (default 0.5, as in VoxCeleb1-O/E/H)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_bench_eval)

    p = sub.add_parser("pack", help="decode a list once into a memory-mapped store", description=_cmd_pack.__doc__)
    p.add_argument("source", help="VoxCeleb-style list, Kaldi data dir, or a folder of audio files (e.g. MUSAN, RIRs)")
    p.add_argument("out", help="store folder (an interrupted pack into the same folder resumes)")
    p.add_argument("--root", help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--sample-rate", type=int, default=16000, help="files at other rates are resampled (default 16000)")
    p.add_argument("--dtype", choices=["int16", "float32"], default="int16",
                   help="int16 (audio) or float32 (RIR banks, whose peaks may exceed int16)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--skip-bad", action="store_true", help="exit 0 even when some files could not be packed")
    p.set_defaults(func=_cmd_pack)

    p = sub.add_parser("bench-loader", help="time the loader against the voxceleb_trainer recipe",
                       description=_cmd_bench_loader.__doc__)
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
    p.set_defaults(func=_cmd_bench_loader)

    p = sub.add_parser("export", help="export a checkpoint's embedding network", description=_cmd_export.__doc__)
    p.add_argument("checkpoint", help="a .pt file from a run's checkpoints/ folder")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("--out", help="output file (default: the checkpoint's name with .ts or .onnx)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench-model", help="forward+backward samples/s per model and speed switch",
                       description=_cmd_bench_model.__doc__)
    p.add_argument("--models", nargs="*", help="registered names (default: all)")
    p.add_argument("--modes", nargs="*", help="subset of: fp32 autocast channels_last channels_last+autocast")
    _add_bench_args(p, batch=32, device_help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_cmd_bench_model)

    p = sub.add_parser("bench-train", help="training samples/s: a plain loop against the speed preset",
                       description=_cmd_bench_train.__doc__)
    _add_config_args(p, default=str(REPO_CONFIGS / "demo.yaml"))
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration (default 30)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first: worker start-up, compilation, autotuning (default 3)")
    p.add_argument("--no-compile", action="store_true",
                   help="speed preset without torch.compile (on a CPU one compilation takes 1-2 minutes)")
    p.add_argument("--task", choices=TASKS, default="speaker",
                   help="the task to time (image / eeg need their demo config or data)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_bench_train)

    p = sub.add_parser("tune", help="find the micro-batch and loader workers for this machine",
                       description=_cmd_tune.__doc__)
    _add_config_args(p, default=str(REPO_CONFIGS / "demo.yaml"))
    p.add_argument("--out", required=True, metavar="TUNED.yaml", help="config to write, with the two choices")
    p.add_argument("--max-micro", type=int, default=1024, help="largest micro-batch to try (default 1024)")
    p.add_argument("--workers", type=_int_list, metavar="0,1,2,4",
                   help="loader worker counts to time (default: 0,1,2,4,8 up to the number of cores)")
    p.add_argument("--batches", type=int, default=40, help="batches timed per worker count (default 40)")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("models", help="list the registered model names", description=_cmd_models.__doc__)
    p.set_defaults(func=_cmd_models)
    return parser


def _add_bench_args(p: argparse.ArgumentParser, batch: int, device_help: str) -> None:
    """The options every `bench-*` command shares."""
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--frames", type=int, default=200, help="crop length in frames (200 = 2 s)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, help="YAML config" + (f" (default: {default})" if default else ""))
    p.add_argument("--preset", action="append", default=[], metavar="NAME_OR_YAML",
                   help="settings laid over the config: speed, reproducible (configs/presets/) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=1e-3")


def _cmd_train(args: argparse.Namespace) -> int:
    """Train a speaker model; the run folder (train.out_dir) receives config, checkpoints and metrics.

    Under `torchrun --nproc_per_node N -m voxfast train ...` every process trains on its share of each global
    batch (DDP); rank 0 alone logs, writes checkpoints and scores the trial list.
    """
    from voxfast.train.distributed import init_distributed, shutdown

    cfg = _load_config(args)
    info = init_distributed(cfg.train.device)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        summary, metrics = _train_and_score(cfg, Path(cfg.train.out_dir), args.resume, not args.no_eval, args.profile,
                                            args.task)
    finally:
        shutdown()
    if info.is_main:
        print(json.dumps({**summary, **metrics}, indent=2))
    return 128 + signal.Signals[summary["interrupted"]].value if summary.get("interrupted") in _SIGNALS else 0


_SIGNALS = ("SIGINT", "SIGTERM")


def _load_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    from voxfast.config import load_config

    return load_config(args.config, [*extra, *args.overrides], [_preset_path(p) for p in args.preset])


def _preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    known = sorted(p.stem for p in (REPO_CONFIGS / "presets").glob("*.yaml"))
    if name not in known:
        raise VoxfastError(f"unknown preset {name!r}: choose one of {known} or pass a YAML file")
    return REPO_CONFIGS / "presets" / f"{name}.yaml"


def _step_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition(":")
    try:
        start, end = int(first), int(last)
    except ValueError:
        start = end = 0
    if not sep or not 1 <= start <= end:
        raise argparse.ArgumentTypeError(f"expected N:M with 1 <= N <= M (optimizer steps), got {text!r}")
    return start, end


def _cmd_demo(args: argparse.Namespace) -> int:
    """Generate the synthetic corpus if missing, train the demo model, score held-out speakers, print a table."""
    from voxfast.data.synthetic import make_corpus

    if args.config and not Path(args.config).is_file():
        raise VoxfastError(f"config file not found: {args.config} (run from a voxfast checkout or pass --config)")
    data = Path(args.data)
    started = time.perf_counter()
    if not (data / "meta.json").is_file():
        log.info("generating the synthetic corpus in %s", data)
        make_corpus(data)
    out = Path(args.out or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    paths = [f"data.train_list={data / 'train_list.txt'}", f"eval.trials={data / 'trials.txt'}",
             f"train.out_dir={out}"]
    cfg = _load_config(args, paths)
    summary, metrics = _train_and_score(cfg, out, None, evaluate=True)
    report = {**summary, **metrics, "total_minutes": (time.perf_counter() - started) / 60}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    print(_demo_table(report, out))
    return 0


def _train_and_score(cfg: Any, out: Path, resume: str | None, evaluate: bool,
                     profile: tuple[int, int] | None = None, task_name: str = "speaker") -> tuple[dict, dict]:
    from voxfast.config import save_config
    from voxfast.train.checkpoint import record_validation
    from voxfast.train.distributed import env_info
    from voxfast.train.trainer import Trainer

    info = env_info()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    task = build_task(task_name, cfg, info.rank, info.world)
    trainer = Trainer(task, cfg.train, out, task.checkpoint_extra(), info, profile)
    if resume == "auto":
        last = trainer.checkpoint_dir / "last.pt"
        resume = str(last) if last.is_file() else None
        log.info("--resume auto: %s", resume or "no checkpoint yet, starting afresh")
    if resume:
        trainer.load(resume)
    summary = trainer.fit()
    metrics = trainer.evaluate() if evaluate and info.is_main and not summary["interrupted"] else {}
    if metrics.get("eer_threshold") is not None:
        record_validation(trainer.checkpoint_dir / "last.pt", metrics)  # the threshold voxfast.load() verifies with
    return summary, metrics


def _cmd_average(args: argparse.Namespace) -> int:
    """Average the weights of checkpoints (WeSpeaker's recipe: the last N epochs), for a steadier model."""
    from voxfast.train.checkpoint import run_average

    source = args.source[0] if len(args.source) == 1 else args.source
    out = run_average(source, args.last, args.out)
    print(out)
    return 0


def _demo_table(r: dict[str, Any], out: Path) -> str:
    rows = [
        ("EER", f"{r['eer']:.2f} %"),
        ("minDCF (p=0.01)", f"{r['min_dcf_0.01']:.3f}"),
        ("minDCF (p=0.05)", f"{r['min_dcf_0.05']:.3f}"),
        ("trials", f"{r['n_trials']} ({r['n_target']} target)"),
        ("training", f"{r['train_minutes']:.2f} min"),
        ("train speed", f"{r['train_samples_per_s']:.1f} samples/s"),
        ("total", f"{r['total_minutes']:.2f} min"),
    ]
    lines = [f"voxfast demo: held-out synthetic speakers ({out})"]
    lines += [f"  {name:<16} {value}" for name, value in rows]
    return "\n".join(lines)


def _cmd_make_data(args: argparse.Namespace) -> int:
    """Write the embedded synthetic corpus: speakers, train list, trial list, noise/speech/music banks, RIRs.

    With --task image or eeg: the synthetic classification data of that adapter instead.
    """
    from voxfast.data.synthetic import CorpusSpec, make_corpus

    if args.task != "speaker":
        path = adapter(args.task).make_demo_data(args.out, seed=args.seed)
        print(f"wrote {path}")
        return 0
    spec = CorpusSpec(seed=args.seed, train_speakers=args.train_speakers, test_speakers=args.test_speakers,
                      train_utts=args.train_utts, test_utts=args.test_utts, workers=args.workers)
    if min(spec.train_speakers, spec.test_speakers) < 2 or min(spec.train_utts, spec.test_utts) < 2:
        raise VoxfastError("make-demo-data needs at least 2 speakers and 2 utterances per speaker in each split")
    start = time.perf_counter()
    paths = make_corpus(args.out, spec)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: train list {paths['train_list']}, "
          f"trials {paths['trials']}")
    return 0


_SCORE_EXAMPLES = """\
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


def _add_score_args(p: argparse.ArgumentParser) -> None:
    """The `score` command's options: where embeddings come from, and the optional normalisations."""
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


def _add_extract_args(p: argparse.ArgumentParser) -> None:
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


def _cmd_extract(args: argparse.Namespace) -> int:
    """Embed every utterance of a source into one table (ids, L2-normalised float32 rows) for `voxfast score`.

    Whole utterances are batched by length (padding at most 1 % of an utterance, by repeating it). An interrupted
    run resumes: rows are flushed to OUT.partial/ every 30 s and skipped on restart with the same settings.
    Unreadable files are skipped and listed; 20 in a row stop the run.
    """
    from voxfast.eval.embeddings import Batching, extract_to_file, extraction_source
    from voxfast.tasks.speaker import load_embedder
    from voxfast.train.trainer import resolve_device, resolve_precision

    device = resolve_device(args.device)
    embedder, cfg = load_embedder(args.checkpoint, device)
    ids, paths = extraction_source(args.source, args.root)
    rate = cfg.data.sample_rate
    batching = Batching(args.mode, int(args.batch_seconds * rate), int(args.max_seconds * rate),
                        crops=args.crops, crop_samples=int(args.crop_seconds * rate))
    precision = resolve_precision(args.precision, device)
    ckpt = Path(args.checkpoint).resolve()
    settings = {"checkpoint": str(ckpt), "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns, "precision": precision,
                **{k: v for k, v in vars(batching).items() if k != "batch_samples"}}
    start = time.perf_counter()
    summary = extract_to_file(embedder, ids, paths, args.out, device, batching, rate, args.workers, precision,
                              settings, progress=True)
    print(f"wrote {summary.written} embeddings ({summary.dim}-d, {summary.resumed} from an interrupted run) to "
          f"{args.out} in {time.perf_counter() - start:.1f} s")
    _print_files(summary.skipped, "unreadable file(s) skipped")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    """Cosine-score a trial list, optionally with mean subtraction and AS-norm; print EER/minDCF if labelled."""
    from voxfast.data.manifest import read_trials, write_scores
    from voxfast.eval.embeddings import load_embeddings
    from voxfast.eval.metrics import verification_metrics
    from voxfast.eval.scoring import score_trials_from_table

    trials = read_trials(args.trials)
    cohort, mean = _score_cohort_and_mean(args)  # before extraction: a flag mistake should not cost an extraction
    ids, emb = load_embeddings(args.embeddings) if args.embeddings else _checkpoint_table(args, trials)
    scores = score_trials_from_table(trials, ids, emb, mean, cohort, args.top_n)
    write_scores(args.out, trials, scores)
    print(f"wrote {len(trials)} scores to {args.out}")
    if all(t.label is not None for t in trials):
        m = verification_metrics(scores, np.array([t.label for t in trials]))
        print(f"EER {m['eer']:.3f} %  minDCF(0.01) {m['min_dcf_0.01']:.4f}  minDCF(0.05) {m['min_dcf_0.05']:.4f}")
    return 0


def _score_cohort_and_mean(args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The AS-norm cohort and the mean embedding the `score` flags ask for (None where not asked)."""
    from voxfast.data.manifest import read_utterances
    from voxfast.eval.embeddings import load_embeddings
    from voxfast.eval.scoring import cohort_from

    if args.cohort is None and (args.cohort_list or args.speaker_means or args.mean == "cohort"):
        raise VoxfastError("--cohort-list, --speaker-means and --mean cohort need --cohort COHORT.npz")
    if bool(args.cohort_list) != args.speaker_means:
        raise VoxfastError("--speaker-means and --cohort-list go together: the list names each cohort id's speaker")
    cohort_ids, cohort_emb = load_embeddings(args.cohort) if args.cohort else ([], None)
    mean_table = cohort_emb if args.mean == "cohort" else load_embeddings(args.mean)[1] if args.mean else None
    mean = None if mean_table is None else mean_table.mean(axis=0)
    if cohort_emb is None:
        return None, mean
    speakers = {u.utt: u.spk for u in read_utterances(args.cohort_list)} if args.cohort_list else None
    return cohort_from(cohort_ids, cohort_emb, speakers, args.speaker_means), mean


def _checkpoint_table(args: argparse.Namespace, trials: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """Embed the trial utterances with a checkpoint's model, exactly as the evaluation after training does."""
    from voxfast.eval.embeddings import extract_embeddings
    from voxfast.tasks.speaker import load_embedder
    from voxfast.train.trainer import resolve_device

    device = resolve_device(args.device)
    embedder, cfg = load_embedder(args.checkpoint, device)
    root = Path(args.root) if args.root else Path(args.trials).parent
    ids = sorted({u for t in trials for u in (t.enroll, t.test)})
    emb = extract_embeddings(embedder, [str(root / u) for u in ids], device, cfg.data.sample_rate,
                             int(cfg.eval.max_seconds * cfg.data.sample_rate),
                             num_workers=min(cfg.data.num_workers, 2), progress=True,
                             batch_seconds=cfg.eval.batch_seconds)
    return ids, emb


def _cmd_eval(args: argparse.Namespace) -> int:
    """EER, minDCF (p = 0.01, 0.05), the threshold at EER and the trial counts of a score file.

    Every trial of the list needs exactly one score; the score file may list the trials in any order.
    With an unlabelled trial list the scores are only matched and counted: the metrics need labels.
    """
    from voxfast.data.manifest import read_trials
    from voxfast.eval.metrics import verification_metrics

    if (args.scores is None) == (args.checkpoint is None):
        raise VoxfastError("give either a score file or --checkpoint CKPT (one of them)")
    trials = read_trials(args.trials)
    scores, labels = _checkpoint_scores(args, trials) if args.checkpoint else _file_scores(args, trials)
    if labels is None and args.det:
        raise VoxfastError(f"{args.trials} is unlabelled; a DET curve needs `label enroll test` or "
                           "`enroll test target|nontarget` trials")
    metrics = verification_metrics(scores, labels) if labels is not None else {"n_trials": len(scores)}
    if args.det:
        from voxfast.eval.det import det_curve, plot_det

        name = Path(args.scores or args.checkpoint).name
        plot_det(args.det, {name: det_curve(scores, labels)}, {name: metrics["eer"] / 100})
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if args.checkpoint and labels is not None:
        from voxfast.train.checkpoint import record_validation

        record_validation(args.checkpoint, {**metrics, "trials": str(args.trials)})
    print(json.dumps(metrics, indent=2) if args.json else _eval_table(metrics, args.trials))
    return 0


def _file_scores(args: argparse.Namespace, trials: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    from voxfast.data.manifest import read_scores

    pairs, scores = read_scores(args.scores)
    return scores, _labels_in_score_order(args.scores, pairs, args.trials, trials)


def _checkpoint_scores(args: argparse.Namespace, trials: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Cosine scores of the trials with the checkpoint's embeddings (written to --out DIR/scores.txt)."""
    from voxfast.data.manifest import write_scores
    from voxfast.eval.scoring import score_trials_from_table

    ids, emb = _checkpoint_table(args, trials)
    scores = score_trials_from_table(trials, ids, emb)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_scores(Path(args.out) / "scores.txt", trials, scores)
    labelled = all(t.label is not None for t in trials)
    return scores, np.array([t.label for t in trials], dtype=np.int64) if labelled else None


def _labels_in_score_order(score_path: str, pairs: list[tuple[str, str]], trial_path: str,
                           trials: list[Any]) -> np.ndarray | None:
    """Each scored pair's label (None for an unlabelled list); fails at the first line that does not match.

    Score files written by voxfast follow the trial list, so an in-order comparison settles most files
    without building a dictionary of millions of pairs.
    """
    if pairs != [(t.enroll, t.test) for t in trials]:
        by_pair = {(t.enroll, t.test): t for t in trials}
        first_seen: dict[tuple[str, str], int] = {}
        for i, pair in enumerate(pairs):
            if pair not in by_pair:
                raise VoxfastError(f"{score_path}:{_data_line(score_path, i)}: pair {' '.join(pair)!r} is not in the "
                                   f"trial list {trial_path} (score and evaluate with the same trial list)")
            if (first := first_seen.setdefault(pair, i)) != i:
                raise VoxfastError(f"{score_path}:{_data_line(score_path, i)}: pair {' '.join(pair)!r} is scored "
                                   f"twice (first on line {_data_line(score_path, first)}); keep one score per trial")
        unscored = next((i for i, t in enumerate(trials) if (t.enroll, t.test) not in first_seen), None)
        if unscored is not None:
            raise VoxfastError(f"{trial_path}:{_data_line(trial_path, unscored)}: trial "
                               f"'{trials[unscored].enroll} {trials[unscored].test}' has no score in {score_path} "
                               "(score and evaluate with the same trial list)")
        trials = [by_pair[pair] for pair in pairs]
    if trials[0].label is None:  # a trial list has one format, so all or none are labelled
        return None
    return np.fromiter((t.label for t in trials), dtype=bool, count=len(trials))


def _data_line(path: str, index: int) -> int:
    """1-based physical line number of the index-th line that is neither blank nor a # comment."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.strip()
            if text and not text.startswith("#"):
                if index == 0:
                    return lineno
                index -= 1
    raise ValueError(f"{path} has fewer data lines than expected")


def _eval_table(metrics: dict[str, Any], trial_path: str) -> str:
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


def _cmd_bench_eval(args: argparse.Namespace) -> int:
    """Time evaluation at VoxCeleb scale on synthetic data, in one run: EER + minDCF of --trials scores by voxfast
    and by voxceleb_trainer's route (sklearn roc_curve, ComputeErrorRates, ComputeMinDcf), cosine scoring of 1 M
    trials over 50 k embeddings, and AS-norm top-300 of 100 k trials (over 25 k utterances) against a 20 k cohort.
    """
    from voxfast.bench.eval import format_eval_results, run_eval_bench

    if not 0.0 < args.target_fraction < 1.0:
        raise VoxfastError(f"--target-fraction must be strictly between 0 and 1, got {args.target_fraction}")
    print(format_eval_results(run_eval_bench(args.trials, args.target_fraction), args.json))
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    """Decode every file once into one memory-mapped file plus an index; bad files are listed, not packed."""
    from voxfast.audio.store import pack_store
    from voxfast.data.manifest import Utterance, read_utterances

    src = Path(args.source)
    if src.is_dir() and not (src / "wav.scp").is_file():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg"))
        if not files:
            raise VoxfastError(f"{src}: no .wav, .flac or .ogg files found (pass a list or a folder of audio)")
        utts = [Utterance(str(p.relative_to(src)), p.relative_to(src).parts[0], str(p.resolve())) for p in files]
    else:
        utts = read_utterances(src, args.root)
    summary = pack_store(utts, args.out, sample_rate=args.sample_rate, workers=args.workers, dtype=args.dtype)
    print(f"packed {summary.packed} utterances ({summary.samples / args.sample_rate / 3600:.2f} h, "
          f"{summary.resumed} resumed) into {args.out} in {summary.seconds:.1f} s")
    _print_files(summary.bad, f"file(s) could not be packed (also in {Path(args.out) / 'bad.tsv'})")
    return 0 if args.skip_bad or not summary.bad else 1


def _print_files(files: Sequence[tuple[str, str]], what: str) -> None:
    """List (path, reason) pairs under a count, as the pack and extract summaries do."""
    if files:
        print(f"{len(files)} {what}:")
        for path, reason in files:
            print(f"  {path}: {reason}")


def _cmd_bench_loader(args: argparse.Namespace) -> int:
    """Samples/s of voxfast's loader configurations and of the voxceleb_trainer recipe, measured in one run."""
    from voxfast.bench.loader import format_results, run_bench
    from voxfast.data.synthetic import CorpusSpec, make_corpus
    from voxfast.train.trainer import resolve_device

    if args.make_corpus:
        spec = CorpusSpec(train_speakers=args.speakers, test_speakers=2, train_utts=10, test_utts=2,
                          min_seconds=4.0, max_seconds=16.0)
        list_path = make_corpus(args.make_corpus, spec)["train_list"]
    elif args.list:
        list_path = args.list
    else:
        list_path = "demo_data/train_list.txt"
        if not Path(list_path).is_file():
            make_corpus("demo_data")
    root = Path(list_path).parent
    noise_dir = args.noise_dir or (str(root) if (root / "noise").is_dir() else None)
    rir_dir = args.rir_dir or (str(root / "rirs") if (root / "rirs").is_dir() else None)
    results = run_bench(list_path, noise_dir, rir_dir, args.store or str(root / "store"), args.workers, args.batch,
                        args.frames, args.seconds, str(resolve_device(args.device)), args.rounds)
    print(format_results(results, args.json))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the embedding network (waveform in, embedding out; dynamic batch and length), checked against eager."""
    import torch

    from voxfast.export import export_embedder
    from voxfast.tasks.speaker import load_embedder

    embedder, cfg = load_embedder(args.checkpoint, torch.device("cpu"))
    out = args.out or str(Path(args.checkpoint).with_suffix(".ts" if args.format == "torchscript" else ".onnx"))
    diff = export_embedder(embedder, out, args.format, cfg.data.sample_rate)
    print(f"wrote {out} ({args.format}); max |export - eager| on a new length: {diff:.2e}")
    if diff > 1e-3:
        raise VoxfastError(f"exported model differs from eager by {diff:.2e} (> 1e-3); do not use {out}")
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    """Training throughput (forward + backward) of each model in fp32, autocast and channels_last, same run."""
    from voxfast.bench.model import MODES, format_model_results, run_model_bench
    from voxfast.models.registry import available_models
    from voxfast.train.trainer import resolve_device

    unknown = sorted(set(args.models or ()) - set(available_models())) + sorted(set(args.modes or ()) - set(MODES))
    if unknown:
        raise VoxfastError(f"unknown model or mode {', '.join(unknown)}; models: {', '.join(available_models())}; "
                           f"modes: {', '.join(MODES)}")
    results = run_model_bench(args.models, resolve_device(args.device), args.batch, args.frames, args.seconds,
                              tuple(args.modes or MODES))
    print(format_model_results(results, args.json))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    """List the names accepted by model.name."""
    from voxfast.models.registry import available_models

    print("\n".join(available_models()))
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts >= 0, e.g. 0,1,2,4, got {text!r}")
    return values


def _cmd_bench_train(args: argparse.Namespace) -> int:
    """Training samples/s of the configured model and data, a plain loop against the speed preset, same run.

    The plain loop runs as voxceleb_trainer does (fp32, a host sync every step, no channels_last or compile,
    CPU augmentation, no pinned memory); the other is the config with configs/presets/speed.yaml over it.
    """
    from voxfast.bench.train import (
        PLAIN,
        SPEED,
        ensure_demo_corpus,
        format_train_results,
        plain_config,
        run_train_bench,
        speed_config,
    )

    base = _load_config(args)
    if args.task == "speaker":
        ensure_demo_corpus(base)
    speed = speed_config(args.config, args.overrides, [_preset_path(p) for p in args.preset], _preset_path("speed"),
                         use_compile=not args.no_compile)
    results = run_train_bench([(PLAIN, plain_config(base)), (SPEED, speed)], args.steps, args.warmup, args.task)
    print(format_train_results(results, args.json))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    """Measure the micro-batch and loader worker count for this machine and write them into a config.

    Micro-batch: the largest that fits in device memory (on a CPU, which never runs out: the fastest) and
    divides train.global_batch. Workers: the fewest within 5 % of the best loader throughput.
    """
    from voxfast.bench.train import ensure_demo_corpus
    from voxfast.bench.tune import format_tune, tune, tuned_config
    from voxfast.config import save_config
    from voxfast.train.trainer import resolve_device

    cfg = _load_config(args)
    ensure_demo_corpus(cfg)
    result = tune(cfg, resolve_device(cfg.train.device), args.max_micro, args.workers, batches=args.batches)
    save_config(tuned_config(cfg, result.micro_batch, result.num_workers), args.out)
    print(format_tune(result, args.out))
    return 0
