"""`voxfast import`: a published checkpoint of voxceleb_trainer, WeSpeaker or SpeechBrain as a voxfast one."""

from __future__ import annotations

import argparse
from typing import Any

from voxfast.cli.common import add_out_file_args, check_out_file, command

# The names of voxfast.interop.FORMATS (a test keeps them equal): importing voxfast.interop here would load torch
# and the speaker task for every command, seconds and ~0.8 GB before `voxfast eval` reads a line.
FORMAT_NAMES = ("vct", "wespeaker", "speechbrain")


def add_commands(sub: Any) -> None:
    p = command(sub, "import", _cmd_import, help="convert a voxceleb_trainer, WeSpeaker or SpeechBrain model")
    p.add_argument("format", choices=FORMAT_NAMES, help="vct: voxceleb_trainer .model (ResNetSE34L, ResNetSE34V2); "
                   "wespeaker: avg_model.pt + config.yaml; speechbrain: embedding_model.ckpt + hyperparams.yaml")
    p.add_argument("src", help="the checkpoint file, or the folder holding it and its config")
    p.add_argument("--config", help="the source's config file when it is not beside SRC (config.yaml, "
                   "hyperparams.yaml); vct: the model name, resnetse34l or resnetse34v2, when SRC's name does not say")
    add_out_file_args(p, "the voxfast checkpoint to write")


def _cmd_import(args: argparse.Namespace) -> int:
    """Write a voxfast checkpoint (config, embedder weights, no head) that reproduces the source's embeddings:
    use it with extract, score, eval --checkpoint, export, voxfast.load, or train.init_from to fine-tune."""
    from voxfast.interop import import_model

    check_out_file(args.out, args.overwrite)
    summary = import_model(args.format, args.src, args.out, args.config)
    print(f"wrote {summary.out}: {summary.description}, {summary.tensors} tensors, {summary.parameters / 1e6:.2f} M "
          "parameters")
    for note in summary.notes:
        print(f"  note: {note}")
    return 0
