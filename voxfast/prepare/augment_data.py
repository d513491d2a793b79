"""`voxfast prepare musan` / `rirs`: the augmentation corpora in the layout ``augment.noise_dir`` / ``rir_dir`` read.

MUSAN already has that layout (``musan/{music,noise,speech}/**``, what ``NoiseBank.from_dirs`` reads), so
``musan`` only checks it, counts files and hours per category and checks every file's header (sample rate,
readable). RIRS_NOISES holds more than RIRs (point-source and isotropic noises too), so ``rirs`` chooses: the
``simulated_rirs`` folder (60,000 RIRs; what voxceleb_trainer and WeSpeaker use) as it is, or with
``--rirs real|both`` the real RIRs that ``real_rirs_isotropic_noises/rir_list`` names, gathered by symbolic
links into ``OUT/rirs/{real,simulated}/`` (no copies).

``--pack`` also decodes them into stores (``voxfast.audio.store``): ``OUT/noise_store`` as int16 (ids
``<category>/<path>``, the prefixes NoiseBank selects a category by) and ``OUT/rir_store`` as float32 (RIR peaks
may exceed the int16 range), resampled to ``--sample-rate``. A store is read without decoding, and as shared
memory maps in every loader process instead of a float32 copy per process.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from voxfast.audio.io import audio_info, find_audio_files
from voxfast.audio.store import pack_store
from voxfast.data.manifest import Utterance
from voxfast.errors import AudioLoadError, VoxfastError
from voxfast.prepare import AUDIO_PROBLEMS, MISSING_RIRS, CommonOptions, PrepareResult, problem_list
from voxfast.prepare.lists import no_audio_error
from voxfast.prepare.stage import run_stage

__all__ = ["MUSAN_CATEGORIES", "RIR_SETS", "AugmentDataOptions", "prepare_musan", "prepare_rirs"]

MUSAN_CATEGORIES = ("music", "noise", "speech")  # voxfast.audio.augment.CATEGORIES, sorted (not imported: torch)
RIR_SETS = ("simulated", "real", "both")
SIMULATED, REAL = "simulated_rirs", "real_rirs_isotropic_noises"


@dataclass(frozen=True)
class AugmentDataOptions:
    """How to prepare MUSAN or RIRS_NOISES."""

    pack: bool = False  # also decode into OUT/noise_store or OUT/rir_store
    sample_rate: int = 16000  # the training rate: other rates fail without --pack (which resamples)
    workers: int = 2  # decoding processes for --pack (0: in this process)
    rirs: str = "simulated"  # rirs: simulated, real or both


@dataclass
class _AudioCheck:
    seconds: float = 0.0
    other_rate: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def prepare_musan(src: str | Path, out: str | Path, options: AugmentDataOptions = AugmentDataOptions(),
                  common: CommonOptions | None = None) -> PrepareResult:
    """Check (and with ``pack``, pack) MUSAN; OUT/prepare.json names the ``augment.noise_dir`` to use."""
    return run_stage("musan", src, out, common, partial(_musan, options))


def prepare_rirs(src: str | Path, out: str | Path, options: AugmentDataOptions = AugmentDataOptions(),
                 common: CommonOptions | None = None) -> PrepareResult:
    """Choose (and with ``pack``, pack) RIRS_NOISES' RIRs; OUT/prepare.json names the ``augment.rir_dir``."""
    if options.rirs not in RIR_SETS:
        raise VoxfastError(f"--rirs must be one of {', '.join(RIR_SETS)}, not {options.rirs!r}")
    return run_stage("rirs", src, out, common, partial(_rirs, options))


# ----------------------------------------------------------------------------------------------- MUSAN


def _musan_root(src: Path) -> Path:
    for root in (src, src / "musan"):
        if any((root / c).is_dir() for c in MUSAN_CATEGORIES):
            return root
    raise VoxfastError(f"no MUSAN tree under {src}: expected {'/, '.join(MUSAN_CATEGORIES)}/ in SRC or SRC/musan "
                       "(pass the folder musan.tar.gz was extracted into)")


def _musan(options: AugmentDataOptions, result: PrepareResult, src: Path, out: Path) -> None:
    root = _musan_root(src)
    result.sources["musan"] = str(root)
    _set_options(result, options)
    files: dict[str, Path] = {}
    for category in MUSAN_CATEGORIES:
        found = find_audio_files(root / category)
        if not found:
            _missing_part(result, f"MUSAN {category}/ is missing or has no audio under {root}",
                          f"{category} augmentation needs it (or set its weight in augment.mix to 0)")
        files.update({p.relative_to(root).as_posix(): p for p in found})
        check = _check_audio(found, options, out, result, category)
        result.counts[category] = {"files": len(found), "hours": round(check.seconds / 3600, 3)}
        result.summary.append(f"{category}: {len(found)} files, {check.seconds / 3600:.1f} h")
    target = _pack(files, out / "noise_store", "int16", options, result) if options.pack else root
    result.outputs["noise_dir"] = str(target)
    result.overrides.append(f"augment.noise_dir={target}")


# ----------------------------------------------------------------------------------------------- RIRs


def _rirs_root(src: Path) -> Path:
    for root in (src, src / "RIRS_NOISES"):
        if (root / SIMULATED).is_dir() or (root / REAL).is_dir():
            return root
    if src.name == SIMULATED:
        return src.parent
    raise VoxfastError(f"no RIRS_NOISES tree under {src}: expected {SIMULATED}/ (or {REAL}/) in SRC or "
                       "SRC/RIRS_NOISES (pass the folder rirs_noises.zip was extracted into)")


def _rirs(options: AugmentDataOptions, result: PrepareResult, src: Path, out: Path) -> None:
    root = _rirs_root(src)
    result.sources["rirs_noises"] = str(root)
    _set_options(result, options)
    sets: dict[str, dict[str, Path]] = {}
    if options.rirs in ("simulated", "both"):
        found = find_audio_files(root / SIMULATED)
        if not found:
            raise no_audio_error(root / SIMULATED, "simulated RIRs")
        sets["simulated"] = {p.relative_to(root / SIMULATED).as_posix(): p for p in found}
    if options.rirs in ("real", "both"):
        sets["real"] = _real_rirs(root / REAL, out, result)
    for name, files in sets.items():
        check = _check_audio(list(files.values()), options, out, result, f"{name} RIRs")
        result.counts[f"{name}_rirs"] = {"files": len(files), "seconds": round(check.seconds, 3)}
        result.summary.append(f"{name} RIRs: {len(files)} files")
    if options.rirs == "simulated":
        ids = sets["simulated"]
    else:  # one folder (or store) of both sets: ids real/<file>, simulated/<room>/<file>
        ids = {f"{name}/{rel}": p for name, files in sets.items() for rel, p in files.items()}
    if options.pack:
        target = _pack(ids, out / "rir_store", "float32", options, result)
    else:
        target = root / SIMULATED if options.rirs == "simulated" else _link_tree(out / "rirs", ids)
    result.outputs["rir_dir"] = str(target)
    result.overrides.append(f"augment.rir_dir={target}")


def _real_rirs(folder: Path, out: Path, result: PrepareResult) -> dict[str, Path]:
    """The files ``rir_list`` names (its lines end with ``RIRS_NOISES/real_rirs_isotropic_noises/<file>``):
    that folder also holds isotropic noises, which are not RIRs."""
    rir_list = folder / "rir_list"
    if not rir_list.is_file():
        raise VoxfastError(f"{rir_list} not found: it says which files of {folder} are RIRs (re-extract "
                           "rirs_noises.zip, or use --rirs simulated)")
    files, missing = {}, []
    for lineno, raw in enumerate(rir_list.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.split():
            continue
        rel = raw.split()[-1].split(f"{REAL}/", 1)[-1]
        if (folder / rel).is_file():
            files[rel] = folder / rel
        else:
            missing.append(f"{rir_list}:{lineno}: {rel}: not found")
    if missing:
        listed = problem_list(out, MISSING_RIRS, missing)
        _missing_part(result, f"{len(missing)} RIR(s) named by {rir_list} are missing (listed in {listed})",
                      "re-extract rirs_noises.zip")
    if not files:
        raise VoxfastError(f"none of the RIRs {rir_list} names is in {folder}; re-extract rirs_noises.zip")
    return files


def _link_tree(folder: Path, files: dict[str, Path]) -> Path:
    """A folder of symbolic links ``folder/<id> -> file``: a rir_dir of chosen files without copying them."""
    if folder.exists():
        foreign = [p for p in folder.rglob("*") if not p.is_symlink() and not p.is_dir()]
        if foreign:
            raise VoxfastError(f"{folder} holds files prepare did not write (first: {foreign[0]}); choose another "
                               "OUT folder or delete it")
        shutil.rmtree(folder)  # links only: rmtree removes the links, never what they point to
    for rel, path in files.items():
        link = folder / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return folder


# ----------------------------------------------------------------------------------------------- shared


def _set_options(result: PrepareResult, options: AugmentDataOptions) -> None:
    result.options.update(pack=options.pack, sample_rate=options.sample_rate)
    if result.kind == "rirs":
        result.options["rirs"] = options.rirs


def _missing_part(result: PrepareResult, problem: str, fix: str) -> None:
    """A missing part of a corpus fails the stage unless --allow-missing, which records it instead."""
    if not result.options["allow_missing"]:
        raise VoxfastError(f"{problem}; {fix}, or pass --allow-missing")
    result.problems.append(problem)


def _check_audio(files: Sequence[Path], options: AugmentDataOptions, out: Path, result: PrepareResult,
                 what: str) -> _AudioCheck:
    """Read every header: a file at another rate or unreadable would stop training at its first noise draw."""
    check = _AudioCheck()
    for path in files:
        try:
            frames, rate = audio_info(path)
        except AudioLoadError as exc:
            check.unreadable.append(f"{path}: unreadable: {exc}")
            continue
        check.seconds += frames / rate
        if rate != options.sample_rate:
            check.other_rate.append(f"{path}: {rate} Hz")
    _audio_problems(check, options, out, result, what)
    return check


def _audio_problems(check: _AudioCheck, options: AugmentDataOptions, out: Path, result: PrepareResult,
                    what: str) -> None:
    """Without --pack both kinds of problem fail (the folder would not load); a pack resamples, and drops
    unreadable files only with --allow-missing (see _pack)."""
    if options.pack:
        if check.other_rate:
            result.summary.append(f"{what}: {len(check.other_rate)} file(s) not at {options.sample_rate} Hz, "
                                  "resampled into the store")
        return
    lines = check.unreadable + check.other_rate
    if lines:
        listed = problem_list(out, AUDIO_PROBLEMS, lines)
        raise VoxfastError(f"{what}: {len(check.unreadable)} unreadable file(s) and {len(check.other_rate)} not at "
                           f"{options.sample_rate} Hz, first: {lines[0]}; full list in {listed} (pass --pack, "
                           "which resamples into a store, with --allow-missing to leave unreadable files out)")


def _pack(files: dict[str, Path], store: Path, dtype: str, options: AugmentDataOptions,
          result: PrepareResult) -> Path:
    """Decode `files` (id -> path, ids sorted as NoiseBank sorts them) into a store; a resumed pack continues."""
    utts = [Utterance(rel, rel.split("/", 1)[0], str(path)) for rel, path in sorted(files.items())]
    summary = pack_store(utts, store, sample_rate=options.sample_rate, workers=options.workers, dtype=dtype)
    result.counts["packed"] = {"files": summary.packed, "hours": round(summary.samples / options.sample_rate / 3600, 3),
                               "bad": len(summary.bad)}
    result.outputs["store"] = str(store)
    result.summary.append(f"packed {summary.packed} files ({dtype}) into {store}")
    if summary.bad:
        first = f"{summary.bad[0][0]}: {summary.bad[0][1]}"
        _missing_part(result, f"{len(summary.bad)} file(s) could not be packed, first: {first} "
                              f"(all in {store / 'bad.tsv'})", "fix or delete them and run prepare again")
    return store
