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

    p = sub.add_parser("train", help="train a speaker model from a config", description=_cmd_train.__doc__)
    _add_config_args(p)
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

    p = sub.add_parser("make-demo-data", help="write the synthetic voice corpus", description=_cmd_make_data.__doc__)
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-speakers", type=int, default=40)
    p.add_argument("--test-speakers", type=int, default=20)
    p.add_argument("--train-utts", type=int, default=24, help="utterances per training speaker")
    p.add_argument("--test-utts", type=int, default=12, help="utterances per test speaker")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("score", help="score a trial list with a trained checkpoint", description=_cmd_score.__doc__)
    p.add_argument("checkpoint", help="a .pt file from a run's checkpoints/ folder")
    p.add_argument("--trials", help="trial list (default: eval.trials of the checkpoint's config)")
    p.add_argument("--root", help="folder the trial paths are relative to (default: the trial list's folder)")
    p.add_argument("--out", default=".", help="folder for scores.txt and metrics.json (default: .)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("eval", help="EER and minDCF of a score file", description=_cmd_eval.__doc__)
    p.add_argument("scores", help="score file with lines `enroll test score`")
    p.add_argument("--trials", required=True, help="labelled trial list for the same pairs")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd_eval)

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
        summary, metrics = _train_and_score(cfg, Path(cfg.train.out_dir), args.resume, not args.no_eval, args.profile)
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
                     profile: tuple[int, int] | None = None) -> tuple[dict, dict]:
    from voxfast.config import save_config
    from voxfast.tasks.speaker import SpeakerTask
    from voxfast.train.distributed import env_info
    from voxfast.train.trainer import Trainer

    info = env_info()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    task = SpeakerTask(cfg, info.rank, info.world)
    trainer = Trainer(task, cfg.train, out, task.checkpoint_extra(), info, profile)
    if resume == "auto":
        last = trainer.checkpoint_dir / "last.pt"
        resume = str(last) if last.is_file() else None
        log.info("--resume auto: %s", resume or "no checkpoint yet, starting afresh")
    if resume:
        trainer.load(resume)
    summary = trainer.fit()
    metrics = trainer.evaluate() if evaluate and info.is_main and not summary["interrupted"] else {}
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
    """Write the embedded synthetic corpus: speakers, train list, trial list, noise/speech/music banks, RIRs."""
    from voxfast.data.synthetic import CorpusSpec, make_corpus

    spec = CorpusSpec(seed=args.seed, train_speakers=args.train_speakers, test_speakers=args.test_speakers,
                      train_utts=args.train_utts, test_utts=args.test_utts, workers=args.workers)
    if min(spec.train_speakers, spec.test_speakers) < 2 or min(spec.train_utts, spec.test_utts) < 2:
        raise VoxfastError("make-demo-data needs at least 2 speakers and 2 utterances per speaker in each split")
    start = time.perf_counter()
    paths = make_corpus(args.out, spec)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: train list {paths['train_list']}, "
          f"trials {paths['trials']}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    """Embed the utterances of a trial list with a checkpoint, write scores.txt and print EER/minDCF."""
    from voxfast.tasks.speaker import load_embedder, score_trials
    from voxfast.train.trainer import resolve_device

    device = resolve_device(args.device)
    embedder, cfg = load_embedder(args.checkpoint, device)
    if args.trials:
        cfg.eval.trials = args.trials
        cfg.eval.root = args.root
    elif args.root:
        cfg.eval.root = args.root
    metrics = score_trials(embedder, cfg, device, Path(args.out))
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """EER and minDCF (p = 0.01, 0.05) of a score file against a labelled trial list."""
    from voxfast.data.manifest import read_scores, read_trials
    from voxfast.eval.metrics import verification_metrics

    pairs, scores = read_scores(args.scores)
    labels = {(t.enroll, t.test): t.label for t in read_trials(args.trials)}
    missing = [p for p in pairs if p not in labels]
    if missing:
        raise VoxfastError(f"{len(missing)} scored pair(s) are not in {args.trials}, first: {missing[0][0]} "
                           f"{missing[0][1]} (score and evaluate with the same trial list)")
    if any(labels[p] is None for p in pairs):
        raise VoxfastError(f"{args.trials} is unlabelled; eval needs `label enroll test` or `enroll test target`")
    metrics = verification_metrics(scores, np.array([labels[p] for p in pairs]))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"EER {metrics['eer']:.3f} %  minDCF(0.01) {metrics['min_dcf_0.01']:.4f}  "
              f"minDCF(0.05) {metrics['min_dcf_0.05']:.4f}  trials {len(pairs)}")
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
    if summary.bad:
        print(f"{len(summary.bad)} file(s) could not be packed (also in {Path(args.out) / 'bad.tsv'}):")
        for path, reason in summary.bad:
            print(f"  {path}: {reason}")
        return 0 if args.skip_bad else 1
    return 0


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
                        args.frames, args.seconds, str(resolve_device(args.device)))
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
