"""The measuring commands: bench-eval, bench-loader, bench-model, bench-train, bench-recipe, bench-scale and tune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from voxfast.cli.common import add_bench_args, add_config_args, check_out_file, command, int_list
from voxfast.config import load_config
from voxfast.tasks import TASKS

SCALE_STAGES = ("list", "startup", "workers", "store", "sampler", "eval", "score")  # voxfast.bench.scale.STAGES


def add_commands(sub: Any) -> None:
    p = command(sub, "bench-eval", _cmd_bench_eval,
                 help="time EER/minDCF, cosine scoring and AS-norm at VoxCeleb scale")
    p.add_argument("--trials", type=int, default=10_000_000,
                   help="synthetic trials for the EER/minDCF timing (default 10000000)")
    p.add_argument("--target-fraction", type=float, default=0.5,
                   help="share of target trials (default 0.5, as in VoxCeleb1-O/E/H)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = command(sub, "bench-loader", _cmd_bench_loader, help="time the loader against the voxceleb_trainer recipe")
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
    add_bench_args(p, batch=64, device_help="device for the batched augmentation (auto, cpu, cuda)")

    p = command(sub, "bench-model", _cmd_bench_model, help="forward+backward samples/s per model and speed switch")
    p.add_argument("--models", nargs="*", help="registered names (default: all)")
    p.add_argument("--modes", nargs="*", help="subset of: fp32 autocast channels_last channels_last+autocast")
    add_bench_args(p, batch=32, device_help="auto, cpu, cuda or cuda:N")

    p = command(sub, "bench-train", _cmd_bench_train, help="training samples/s: a plain loop against the speed preset")
    add_config_args(p, default="demo")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration (default 30)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first: worker start-up, compilation, autotuning (default 3)")
    p.add_argument("--no-compile", action="store_true",
                   help="speed preset without torch.compile (on a CPU one compilation takes 1-2 minutes)")
    p.add_argument("--task", choices=list(TASKS), default="speaker",
                   help="the task to time (image / eeg need their demo config or data)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = command(sub, "bench-recipe", _cmd_bench_recipe, help="recipes at the same training budget, beside the floor")
    p.add_argument("configs", nargs="+", help="configs to compare (YAML files or shipped names)")
    p.add_argument("--budget", type=float, default=10.0, help="training minutes per config (default 10)")
    p.add_argument("--out", default="runs/bench-recipe", help="folder of the runs (default: runs/bench-recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for every config")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = command(sub, "bench-scale", _cmd_bench_scale,
                help="list, start-up, worker memory, store, sampler, eval and score costs at millions of lines")
    p.add_argument("--sizes", default="1M,10M", help="comma-separated line counts, e.g. 100k,1M,10M (default 1M,10M)")
    p.add_argument("--stages", default=",".join(SCALE_STAGES),
                   help=f"comma-separated subset of {','.join(SCALE_STAGES)} (default: all)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the training stages (default 2)")
    p.add_argument("--batches", type=int, default=200,
                   help="epoch slice for worker memory: at most this many batches, at most 10 %% of an epoch")
    p.add_argument("--ids", type=int, default=200_000, help="distinct trial utterances / embeddings (default 200000)")
    p.add_argument("--out", default="runs/bench-scale",
                   help="folder of the generated data (reused by a later run after --keep) and bench_scale.json")
    p.add_argument("--keep", action="store_true", help="keep the generated data of each size for the next run")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed to each measured process")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for the training stages, e.g. train.micro_batch=256")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = command(sub, "tune", _cmd_tune, help="find the micro-batch and loader workers for this machine")
    add_config_args(p, default="demo")
    p.add_argument("--out", required=True, metavar="TUNED.yaml", help="config to write, with the two choices")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.add_argument("--max-micro", type=int, default=1024, help="largest micro-batch to try (default 1024)")
    p.add_argument("--workers", type=int_list, metavar="0,1,2,4",
                   help="loader worker counts to time (default: 0,1,2,4,8 up to the number of cores)")
    p.add_argument("--batches", type=int, default=40, help="batches timed per worker count (default 40)")


def _cmd_bench_eval(args: argparse.Namespace) -> int:
    """Time evaluation at VoxCeleb scale on synthetic data, in one run: EER + minDCF of --trials scores by voxfast
    and by voxceleb_trainer's route (sklearn roc_curve, ComputeErrorRates, ComputeMinDcf), cosine scoring of 1 M
    trials over 50 k embeddings, and AS-norm top-300 of 100 k trials (over 25 k utterances) against a 20 k cohort.
    """
    from voxfast.bench.eval import format_eval_results, run_eval_bench

    print(format_eval_results(run_eval_bench(args.trials, args.target_fraction), args.json))
    return 0


def _cmd_bench_loader(args: argparse.Namespace) -> int:
    """Samples/s of voxfast's loader configurations and of the voxceleb_trainer recipe, measured in one run."""
    from voxfast.bench.loader import bench_loader, format_results
    from voxfast.runtime import resolve_device

    results = bench_loader(args.list, args.make_corpus, args.speakers, args.noise_dir, args.rir_dir, args.store,
                           workers=args.workers, batch=args.batch, frames=args.frames, seconds=args.seconds,
                           device=str(resolve_device(args.device)), rounds=args.rounds)
    print(format_results(results, args.json))
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    """Training throughput (forward + backward) of each model in fp32, autocast and channels_last, same run."""
    from voxfast.bench.model import MODES, format_model_results, run_model_bench
    from voxfast.runtime import resolve_device

    results = run_model_bench(args.models, resolve_device(args.device), args.batch, args.frames, args.seconds,
                              tuple(args.modes or MODES))
    print(format_model_results(results, args.json))
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


def _cmd_bench_scale(args: argparse.Namespace) -> int:
    """What issue 18's ten million utterances cost, on synthetic data generated into --out (reused later).

    Per size: reading a Kaldi dir, start-up to the first training batch (fresh process), USS growth of each
    loader worker over an epoch slice, opening a packed store of that size and a store-backed loader's workers,
    one epoch of the speaker batch sampler, and `voxfast eval` / `voxfast score` over that many trials; each
    figure beside the issue's 10 M target. The generated store's audio.bin is a sparse file (~100 GB apparent
    per million utterances, a few MB on disk): do not copy --out.
    """
    from voxfast.bench.scale import ScaleOptions, format_scale_results, parse_size, run_scale_bench

    opts = ScaleOptions(sizes=[parse_size(s) for s in args.sizes.split(",") if s.strip()], out=Path(args.out),
                        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()), workers=args.workers,
                        batches=args.batches, ids=args.ids, overrides=args.set, timeout=args.timeout, keep=args.keep)
    report = run_scale_bench(opts)
    print(json.dumps(report, indent=2) if args.json else format_scale_results(report))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    """Measure the micro-batch and loader worker count for this machine and write them into a config.

    Micro-batch: the largest that fits in device memory (on a CPU, which never runs out: the fastest) and
    divides train.global_batch. Workers: the fewest within 5 % of the best loader throughput.
    """
    from voxfast.bench.tune import format_tune, tune_to_file

    check_out_file(args.out, args.overwrite)
    cfg = load_config(args.config, args.overrides, args.preset)
    result = tune_to_file(cfg, args.out, args.max_micro, args.workers, args.batches)
    print(format_tune(result, args.out))
    return 0


def _cmd_bench_recipe(args: argparse.Namespace) -> int:
    from voxfast.bench import recipe
    rows = recipe.run_recipe_bench(args.configs, args.set, args.budget, args.out)
    print(recipe.format_recipe_results(rows, args.budget, args.json))
    return 0
