"""`voxfast prepare voxceleb`: extracted VoxCeleb1/2 trees into a training list and the Vox1-O/E/H trial lists.

Layouts (as the archives extract):

* VoxCeleb1: ``<DIR>/wav/idXXXXX/<video>/<NNNNN>.wav`` (dev and test archives both extract into ``wav/``; when
  they were extracted apart, pass ``--vox1`` once per folder);
* VoxCeleb2: ``<DIR>/dev/aac/idXXXXX/<video>/<NNNNN>.m4a``.

``--vox1`` / ``--vox2`` may also name the ``wav`` / ``aac`` folder itself; without either, SRC and its
sub-folders are searched for these layouts. Speakers named in the trial lists are left out of the training
list, so a model is never scored on voices it trained on (VoxCeleb1 test speakers for Vox1-O; all of VoxCeleb1
for Vox1-E/H, which is why those are used with VoxCeleb2 training).

Trial lists are the official files (``1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav``), whose
paths are relative to the VoxCeleb1 ``wav`` folder. Every file a trial names must exist: missing ones are listed
with file:line and fail the stage unless ``--allow-missing`` (then those trials are dropped and counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from voxfast.audio.io import find_audio_files
from voxfast.data.manifest import Trial, read_trials
from voxfast.errors import VoxfastError
from voxfast.prepare import MISSING_TRIALS, CommonOptions, PrepareResult, absolute, problem_list
from voxfast.prepare.lists import TRAIN_LIST, no_audio_error, write_train_list, write_trial_list
from voxfast.prepare.stage import run_stage

__all__ = ["MISSING_TRIALS", "TRAIN_PARTS", "TRIAL_NAMES", "VoxcelebOptions", "prepare_voxceleb", "trial_name"]

# The official list files and the names their converted lists get (the cleaned `2` versions are the standard).
TRIAL_NAMES = {
    "veri_test2.txt": "vox1_O", "list_test_all2.txt": "vox1_E", "list_test_hard2.txt": "vox1_H",
    "veri_test.txt": "vox1_O_orig", "list_test_all.txt": "vox1_E_orig", "list_test_hard.txt": "vox1_H_orig",
}
TRAIN_PARTS = ("vox2", "vox1", "vox1+vox2")
_VOX2_SUBDIRS = ("dev/aac", "aac")


@dataclass(frozen=True)
class VoxcelebOptions:
    """Where the trees are and what to make of them."""

    vox1: Sequence[str] = ()  # VoxCeleb1 folders (each holding wav/, or a wav folder itself)
    vox2: str | None = None  # VoxCeleb2 folder (holding dev/aac/ or aac/, or the aac folder itself)
    train: str | None = None  # vox2, vox1 or vox1+vox2; None: vox2 when a VoxCeleb2 tree is there, else vox1
    trials: Sequence[str] = ()  # official trial list files


@dataclass
class _Trees:
    vox1: list[Path]
    vox2: Path | None


def prepare_voxceleb(src: str | Path, out: str | Path, options: VoxcelebOptions,
                     common: CommonOptions | None = None) -> PrepareResult:
    """Write OUT/train_list.txt, OUT/trials/<name>.txt per trial list and OUT/prepare.json."""
    return run_stage("voxceleb", src, out, common, partial(_prepare, options))


def trial_name(path: str | Path) -> str:
    """vox1_O / vox1_E / vox1_H for the cleaned official lists (``_orig`` for the uncleaned), else the stem."""
    return TRIAL_NAMES.get(Path(path).name, Path(path).stem)


def _prepare(options: VoxcelebOptions, result: PrepareResult, src: Path, out: Path) -> None:
    trees = _find_trees(options, src)
    train = _train_parts(options.train, trees)
    result.sources.update(vox1=[str(r) for r in trees.vox1], vox2=str(trees.vox2) if trees.vox2 else None,
                          trials=[str(absolute(t)) for t in options.trials])
    result.options["train"] = train
    vox1 = _scan(trees.vox1, "VoxCeleb1", result) if trees.vox1 and ("vox1" in train or options.trials) else {}
    held_out = _convert_all(options.trials, vox1, trees.vox1, out, result)
    rows = _train_rows(train, vox1, trees, held_out, result)
    write_train_list(out / TRAIN_LIST, rows)
    result.outputs["train_list"] = str(out / TRAIN_LIST)
    result.overrides.insert(0, f"data.train_list={out / TRAIN_LIST}")


def _vox2_root(folder: Path) -> Path:
    return next((folder / sub for sub in _VOX2_SUBDIRS if (folder / sub).is_dir()), folder)


def _find_trees(options: VoxcelebOptions, src: Path) -> _Trees:
    """The explicit folders, or the layouts found in SRC and its sub-folders."""
    if options.vox1 or options.vox2:
        vox1 = [absolute(d) for d in options.vox1]
        vox2 = absolute(options.vox2) if options.vox2 else None
        for d in [*vox1, *([vox2] if vox2 else [])]:
            if not d.is_dir():
                raise VoxfastError(f"VoxCeleb folder not found: {d}; pass the folder the archive was extracted into")
        return _Trees([d / "wav" if (d / "wav").is_dir() else d for d in vox1], _vox2_root(vox2) if vox2 else None)
    candidates = [src, *sorted(d for d in src.iterdir() if d.is_dir())]
    vox1 = [c / "wav" for c in candidates if (c / "wav").is_dir()]
    vox2 = [c / "dev" / "aac" for c in candidates if (c / "dev" / "aac").is_dir()]
    if not vox1 and not vox2:
        raise VoxfastError(f"no VoxCeleb tree under {src}: expected <dir>/wav/idXXXXX/<video>/<n>.wav (VoxCeleb1) "
                           "or <dir>/dev/aac/idXXXXX/<video>/<n>.m4a (VoxCeleb2) in SRC or a sub-folder; "
                           "or pass --vox1 / --vox2")
    if len(vox2) > 1:
        raise VoxfastError(f"{len(vox2)} VoxCeleb2 trees under {src} ({', '.join(map(str, vox2))}); pass --vox2")
    return _Trees(vox1, vox2[0] if vox2 else None)


def _train_parts(train: str | None, trees: _Trees) -> str:
    """The requested training part, checked against the trees that exist."""
    train = train or ("vox2" if trees.vox2 else "vox1")
    if train not in TRAIN_PARTS:
        raise VoxfastError(f"--train must be one of {', '.join(TRAIN_PARTS)}, not {train!r}")
    if "vox1" in train and not trees.vox1:
        raise VoxfastError(f"--train {train} needs a VoxCeleb1 tree; pass --vox1 DIR")
    if "vox2" in train and trees.vox2 is None:
        raise VoxfastError(f"--train {train} needs a VoxCeleb2 tree; pass --vox2 DIR")
    return train


def _scan(roots: Sequence[Path], what: str, result: PrepareResult) -> dict[str, Path]:
    """``speaker/video/file`` (posix) -> absolute path over the roots; the first root wins a duplicate."""
    files: dict[str, Path] = {}
    for root in roots:
        found = find_audio_files(root)
        if not found:
            raise no_audio_error(root, what)
        for path in found:
            rel = path.relative_to(root)
            if len(rel.parts) < 2:
                result.problems.append(f"{what}: {path}: not in a speaker folder, left out")
                continue
            files.setdefault(rel.as_posix(), path)
    return files


def _speaker(rel: str) -> str:
    return rel.split("/", 1)[0]


def _convert_all(trial_files: Sequence[str], vox1: dict[str, Path], roots: Sequence[Path], out: Path,
                 result: PrepareResult) -> set[str]:
    """Convert every trial list (all checked before any is written); returns the speakers they name."""
    if trial_files and not roots:
        raise VoxfastError("trial lists name VoxCeleb1 files; pass --vox1 DIR (the folder holding wav/)")
    names = [trial_name(f) for f in trial_files]
    if len(set(names)) < len(names):
        raise VoxfastError(f"two trial lists would both be written as the same name ({', '.join(names)}); "
                           "rename one of the files")
    converted, missing, speakers = [], [], set()
    for name, path in zip(names, trial_files, strict=True):
        trials, absent, spk = _convert(Path(path), vox1)
        converted.append((name, trials, len(absent)))
        missing += absent
        speakers |= spk
    _check_missing(missing, roots, out, result)
    for name, trials, dropped in converted:
        _write_trials(name, trials, dropped, out, result)
    return speakers


def _convert(path: Path, vox1: dict[str, Path]) -> tuple[list[Trial], list[str], set[str]]:
    """The trials with absolute paths, the ``file:line: path`` of each missing file, and the speakers named."""
    trials, lines = read_trials(path), _data_lines(path)
    kept, missing, speakers = [], [], set()
    for trial, lineno in zip(trials, lines, strict=True):
        enroll, test = (p.removeprefix("./") for p in (trial.enroll, trial.test))
        speakers |= {_speaker(enroll), _speaker(test)}
        absent = [p for p in (enroll, test) if p not in vox1]
        if absent:
            missing += [f"{path}:{lineno}: {p}" for p in absent]
        else:
            kept.append(Trial(str(vox1[enroll]), str(vox1[test]), trial.label))
    return kept, missing, speakers


def _data_lines(path: Path) -> list[int]:
    """1-based line numbers of the lines read_trials parses (neither blank nor a # comment), in one pass."""
    with path.open(encoding="utf-8-sig") as f:
        return [n for n, raw in enumerate(f, start=1) if raw.split() and not raw.split()[0].startswith("#")]


def _check_missing(missing: list[str], roots: Sequence[Path], out: Path, result: PrepareResult) -> None:
    if not missing:
        return
    listed = problem_list(out, MISSING_TRIALS, missing)
    if not result.options["allow_missing"]:
        raise VoxfastError(f"{len(missing)} trial file(s) are not under the VoxCeleb1 folder(s) "
                           f"{', '.join(map(str, roots))}, first: {missing[0]}; full list in {listed} (extract the "
                           "missing VoxCeleb1 parts and pass their folder with --vox1, or pass --allow-missing "
                           "to drop those trials)")
    result.problems.append(f"{len(missing)} trial file(s) missing, their trials dropped (listed in {listed})")


def _write_trials(name: str, trials: list[Trial], dropped: int, out: Path, result: PrepareResult) -> None:
    if not trials:
        raise VoxfastError(f"trial list {name}: every trial names a missing file; nothing to write")
    path = out / "trials" / f"{name}.txt"
    write_trial_list(path, trials)
    target = sum(t.label == 1 for t in trials)
    result.outputs.setdefault("trials", {})[name] = str(path)
    result.counts.setdefault("trials", {})[name] = {"trials": len(trials), "target": target,
                                                    "nontarget": len(trials) - target, "dropped": dropped}
    result.summary.append(f"trials {name}: {len(trials)} ({target} target), {dropped} dropped -> {path}")
    if name == "vox1_O" or not any(o.startswith("eval.trials=") for o in result.overrides):
        result.overrides[:] = [o for o in result.overrides if not o.startswith("eval.trials=")]
        result.overrides.append(f"eval.trials={path}")


def _train_rows(train: str, vox1: dict[str, Path], trees: _Trees, held_out: set[str],
                result: PrepareResult) -> list[tuple[str, Path]]:
    """``(speaker, path)`` of every training file, trial speakers left out, sorted by part then path."""
    parts = {"vox1": vox1} if "vox1" in train else {}
    if "vox2" in train and trees.vox2 is not None:
        parts["vox2"] = _scan([trees.vox2], "VoxCeleb2", result)
    rows: list[tuple[str, Path]] = []
    excluded: set[str] = set()
    for part, files in sorted(parts.items()):
        speakers = {_speaker(rel) for rel in files}
        result.counts[part] = {"speakers": len(speakers), "utterances": len(files)}
        excluded |= speakers & held_out
        rows += [(_speaker(rel), p) for rel, p in sorted(files.items()) if _speaker(rel) not in held_out]
    if not rows:
        raise VoxfastError(f"no training utterances left: every {train} speaker is in the trial lists (Vox1-E/H "
                           "cover all of VoxCeleb1); train on VoxCeleb2 (--vox2 DIR --train vox2)")
    n_spk = len({spk for spk, _ in rows})
    result.counts["train"] = {"speakers": n_spk, "utterances": len(rows), "excluded_trial_speakers": len(excluded)}
    result.summary.insert(0, f"train ({train}): {n_spk} speakers, {len(rows)} utterances "
                             f"({len(excluded)} trial speakers left out)")
    return rows
