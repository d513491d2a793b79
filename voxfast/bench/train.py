"""`voxfast bench-train`: samples/s of the whole training loop, a plain loop against the speed preset, same run.

`bench-model` times the network alone and `bench-loader` the loader alone; what a run actually gets also
depends on host syncs, precision, memory format, compilation and how the loader keeps up while the model
trains. So this runs the real Trainer on the configured model and data twice: once as voxceleb_trainer
runs (fp32, the loss read back every step, no channels_last, no compile, CPU augmentation, no pinned
memory) and once with the shipped speed preset laid over the config. Each configuration trains `warmup`
untimed steps first (worker start-up, compilation, cuDNN autotuning), then `steps` timed ones.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from voxfast.config import Config, DataConfig, load_config
from voxfast.errors import VoxfastError

log = logging.getLogger(__name__)

# What "plain loop" means: voxceleb_trainer's settings, whatever the config or presets say.
PLAIN_SWITCHES: dict[str, dict[str, Any]] = {
    "train": {"precision": "fp32", "log_every": 1, "channels_last": False, "compile": False, "tf32": False,
              "cudnn_benchmark": False},
    "augment": {"placement": "cpu"},
    "data": {"pin_memory": False},
}
PLAIN, SPEED = "plain loop", "speed preset"


@dataclass
class TrainBench:
    name: str
    device: str
    model: str
    precision: str
    compile: bool
    num_workers: int
    micro_batch: int
    global_batch: int
    steps: int  # timed optimizer steps
    samples_per_s: float
    data_wait_pct: float
    speedup: float = 0.0  # over the first configuration of the run


def ensure_demo_corpus(cfg: Config) -> None:
    """Generate the demo corpus when the config reads the default demo list and it is missing (as `voxfast demo`).

    Only the default path is generated, so a mistyped path of a real corpus still fails loudly in the task.
    """
    default = DataConfig().train_list
    if cfg.data.store or cfg.data.train_list != default or Path(default).is_file():
        return
    from voxfast.data.synthetic import make_corpus

    log.info("generating the synthetic corpus in %s", Path(default).parent)
    make_corpus(Path(default).parent)


def plain_config(cfg: Config) -> Config:
    """A copy of `cfg` with the plain-loop switches (PLAIN_SWITCHES) set."""
    out = copy.deepcopy(cfg)
    for section, values in PLAIN_SWITCHES.items():
        for key, value in values.items():
            setattr(getattr(out, section), key, value)
    return out


def speed_config(path: str | Path | None, overrides: Sequence[str], presets: Sequence[str | Path],
                 speed_preset: str | Path, use_compile: bool = True) -> Config:
    """The config with the speed preset laid over it (command-line overrides still last), workers capped at the cores.

    The preset asks for 8 workers, which on a small machine would only fight the training process for cores.
    """
    cfg = load_config(path, overrides, [*presets, speed_preset])
    cfg.data.num_workers = min(cfg.data.num_workers, os.cpu_count() or 1)
    if not use_compile:
        cfg.train.compile = False
    return cfg


def time_training(name: str, cfg: Config, steps: int, warmup: int, task_name: str = "speaker") -> TrainBench:
    """Train `warmup` untimed then `steps` timed optimizer steps of `cfg` in a throw-away run folder."""
    from voxfast.tasks import build_task
    from voxfast.train.trainer import Trainer

    if steps < 1 or warmup < 0:
        raise VoxfastError(f"bench-train needs --steps >= 1 and --warmup >= 0, got {steps} and {warmup}")
    cfg = copy.deepcopy(cfg)
    cfg.train.tensorboard = False
    cfg.train.checkpoint_every = 0
    with tempfile.TemporaryDirectory(prefix="voxfast-bench-train-") as tmp:
        cfg.train.out_dir = tmp
        task = build_task(task_name, cfg)
        cfg.train.epochs = max(cfg.train.epochs, _epochs_for(task, cfg, warmup + steps))
        trainer = Trainer(task, cfg.train, tmp)
        if warmup:
            trainer.fit(max_steps=warmup)
        done = trainer.step
        summary = trainer.fit(max_steps=steps)
        model = {"image": cfg.image.model, "eeg": cfg.eeg.model}.get(task_name, cfg.model.name)
        result = TrainBench(name, str(trainer.device), model, trainer.precision, cfg.train.compile,
                            cfg.data.num_workers, cfg.train.micro_batch, cfg.train.global_batch,
                            summary["steps"] - done, summary["train_samples_per_s"], summary["data_wait_pct"])
        del trainer, task
        gc.collect()  # stop this configuration's loader workers before the next one starts
    log.info("%-14s %8.1f samples/s, data-wait %.1f %%", name, result.samples_per_s, result.data_wait_pct)
    return result


def _epochs_for(task: Any, cfg: Config, total_steps: int) -> int:
    """Epochs enough that the run does not end before `total_steps` optimizer steps (one spare)."""
    from voxfast.train.trainer import accumulation_steps

    accum = accumulation_steps(cfg.train, 1)
    per_epoch = len(task.train_batches(0)) // accum
    if per_epoch == 0:
        raise VoxfastError(f"{cfg.data.train_list}: one epoch fills fewer than the {accum} micro-batches of one "
                           "optimizer step (lower train.global_batch or add data)")
    return math.ceil(total_steps / per_epoch) + 1


def bench_train(config: str | None, overrides: Sequence[str], presets: Sequence[str], steps: int, warmup: int,
                use_compile: bool = True, task_name: str = "speaker") -> list[TrainBench]:
    """`voxfast bench-train`: the plain loop against the config with the speed preset, same run, same data."""
    base = load_config(config, overrides, presets)
    if task_name == "speaker":
        ensure_demo_corpus(base)
    speed = speed_config(config, overrides, presets, "speed", use_compile)
    return run_train_bench([(PLAIN, plain_config(base)), (SPEED, speed)], steps, warmup, task_name)


def run_train_bench(configs: Sequence[tuple[str, Config]], steps: int, warmup: int, task_name: str = "speaker"
                    ) -> list[TrainBench]:
    """Time each (name, config) in turn; speedups are over the first one, measured in the same run."""
    results = [time_training(name, cfg, steps, warmup, task_name) for name, cfg in configs]
    for r in results:
        r.speedup = r.samples_per_s / max(results[0].samples_per_s, 1e-12)
    return results


def format_train_results(results: list[TrainBench], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(r) for r in results], indent=2)
    first = results[0]
    lines = [f"voxfast bench-train on {first.device}: {first.model}, {first.global_batch} samples per step, "
             f"{first.steps} timed steps per configuration",
             f"{'configuration':<14} {'precision':<9} {'compile':<7} {'workers':>7} {'micro':>5} {'samples/s':>10} "
             f"{'data-wait':>9} {'speedup':>8}"]
    lines += [f"{r.name:<14} {r.precision:<9} {'yes' if r.compile else 'no':<7} {r.num_workers:>7} "
              f"{r.micro_batch:>5} {r.samples_per_s:>10.1f} {r.data_wait_pct:>8.1f}% {r.speedup:>7.2f}x"
              for r in results]
    return "\n".join(lines)
