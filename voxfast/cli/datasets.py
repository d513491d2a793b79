"""`voxfast prepare KIND SRC OUT`: datasets as downloaded into the lists and folders training reads."""

from __future__ import annotations

import argparse
from typing import Any

from voxfast.cli.common import check_out_folder, command
from voxfast.prepare import CommonOptions, PrepareResult, augment_data, own, voxceleb
from voxfast.prepare.augment_data import RIR_SETS, AugmentDataOptions, prepare_musan, prepare_rirs
from voxfast.prepare.own import OwnOptions, prepare_own
from voxfast.prepare.voxceleb import TRAIN_PARTS, VoxcelebOptions, prepare_voxceleb

_SHOWN_PROBLEMS = 10


def add_commands(sub: Any) -> None:
    p = command(sub, "prepare", _cmd_prepare, help="turn VoxCeleb, MUSAN, RIRS_NOISES or a folder per speaker "
                "into training lists, trial lists and augmentation folders")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    _add_voxceleb(kinds)
    _add_augment(kinds, "musan", _cmd_musan, "check MUSAN (music/noise/speech) for augment.noise_dir")
    _add_augment(kinds, "rirs", _cmd_rirs, "choose RIRS_NOISES' RIRs for augment.rir_dir").add_argument(
        "--rirs", choices=RIR_SETS, default="simulated",
        help="simulated_rirs as is (default), the real RIRs of real_rirs_isotropic_noises/rir_list, or both "
             "(linked into OUT/rirs/, or packed)")
    _add_own(kinds)


def _cmd_prepare(args: argparse.Namespace) -> int:
    """Turn datasets as downloaded and extracted into what `voxfast train` reads. Each KIND writes its lists into
    OUT and, last and only on success, OUT/prepare.json: the counts, the problems and the config overrides to use
    (also printed). Use one OUT folder per KIND. Options taking several files go after SRC OUT."""
    raise AssertionError("argparse requires a KIND")  # pragma: no cover


def _kind(kinds: Any, name: str, func: Any, help: str, doc: Any, src_help: str) -> argparse.ArgumentParser:
    p = command(kinds, name, func, help=help, doc=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help=src_help)
    p.add_argument("out", metavar="OUT", help="output folder (created when missing); OUT/prepare.json is written last")
    p.add_argument("--checksums", nargs="+", action="extend", default=[], metavar="FILE",
                   help="md5 lists to check: '<md5>  <path>' (md5sum, OpenSLR), '<path> <md5>' or '<parts> <file> "
                        "<md5>' (voxceleb_trainer's lists), paths relative to --checksum-root")
    p.add_argument("--checksum-root", metavar="DIR", help="folder the checksum paths are relative to (default: SRC)")
    p.add_argument("--allow-missing", action="store_true",
                   help="record missing files (trial files, checksum files, corpus parts, unpackable audio) in "
                        "prepare.json instead of failing; corrupt files still fail")
    return p


def _add_voxceleb(kinds: Any) -> None:
    p = _kind(kinds, "voxceleb", _cmd_voxceleb, "VoxCeleb1/2 trees into a training list and Vox1-O/E/H trials",
              voxceleb, "folder the archives were extracted into (searched for the trees without --vox1/--vox2)")
    p.add_argument("--vox1", action="append", default=[], metavar="DIR",
                   help="VoxCeleb1 folder holding wav/idXXXXX/... (or the wav folder); repeat for dev and test "
                        "extracted apart")
    p.add_argument("--vox2", metavar="DIR", help="VoxCeleb2 folder holding dev/aac/idXXXXX/... (or the aac folder)")
    p.add_argument("--train", choices=TRAIN_PARTS, help="what to train on (default: vox2 when given, else vox1); "
                   "speakers of the trial lists are always left out")
    p.add_argument("--trials", nargs="+", action="extend", default=[], metavar="FILE",
                   help="official trial lists (veri_test2.txt -> trials/vox1_O.txt, list_test_all2.txt -> vox1_E, "
                        "list_test_hard2.txt -> vox1_H; uncleaned ones -> *_orig; others by file name)")


def _add_augment(kinds: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
    p = _kind(kinds, name, func, help, augment_data,
              "the extracted musan folder" if name == "musan" else "the extracted RIRS_NOISES folder")
    p.add_argument("--pack", action="store_true",
                   help=f"also decode into OUT/{'noise' if name == 'musan' else 'rir'}_store "
                        f"({'int16' if name == 'musan' else 'float32'}), resampled to --sample-rate")
    p.add_argument("--sample-rate", type=int, default=16000, metavar="HZ", help="the training rate (default 16000)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding processes for --pack (default 2)")
    return p


def _count_or_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"expected a whole count >= 1 or a fraction in (0, 1), got {text!r}")
    return value


def _add_own(kinds: Any) -> None:
    p = _kind(kinds, "own", _cmd_own, "a folder per speaker into a training list and held-out trials", own,
              "folder with one sub-folder per speaker (their sub-folders are sessions)")
    p.add_argument("--test-speakers", type=_count_or_fraction, default=0.2, metavar="N|FRACTION",
                   help="speakers held out for trials: a count, or a fraction of all (default 0.2; at least 2)")
    p.add_argument("--trials", type=int, default=10_000, metavar="N",
                   help="trials to draw (default 10000; all pairs if fewer)")
    p.add_argument("--target-fraction", type=float, default=0.5, metavar="F",
                   help="share of target trials (default 0.5)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and the trials (default 0)")


def _common(args: argparse.Namespace) -> CommonOptions:
    check_out_folder(args.out, "OUT")  # every KIND calls this first, before reading SRC
    return CommonOptions(tuple(args.checksums), args.checksum_root, args.allow_missing)


def _augment_options(args: argparse.Namespace) -> AugmentDataOptions:
    return AugmentDataOptions(args.pack, args.sample_rate, args.workers, getattr(args, "rirs", "simulated"))


def _cmd_voxceleb(args: argparse.Namespace) -> int:
    options = VoxcelebOptions(tuple(args.vox1), args.vox2, args.train, tuple(args.trials))
    return _report(prepare_voxceleb(args.src, args.out, options, _common(args)))


def _cmd_musan(args: argparse.Namespace) -> int:
    return _report(prepare_musan(args.src, args.out, _augment_options(args), _common(args)))


def _cmd_rirs(args: argparse.Namespace) -> int:
    return _report(prepare_rirs(args.src, args.out, _augment_options(args), _common(args)))


def _cmd_own(args: argparse.Namespace) -> int:
    options = OwnOptions(args.test_speakers, args.trials, args.target_fraction, args.seed)
    return _report(prepare_own(args.src, args.out, options, _common(args)))


def _report(result: PrepareResult) -> int:
    for line in result.summary:
        print(line)
    for problem in result.problems[:_SHOWN_PROBLEMS]:
        print(f"problem: {problem}")
    if len(result.problems) > _SHOWN_PROBLEMS:
        print(f"... {len(result.problems) - _SHOWN_PROBLEMS} more problems in {result.outputs['prepare_json']}")
    print("use: " + " ".join(result.overrides))
    print(f"wrote {result.outputs['prepare_json']}")
    return 0
