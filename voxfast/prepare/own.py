"""`voxfast prepare own`: a folder per speaker into a training list and a trial list of held-out speakers.

Layout: ``SRC/<speaker>/**/<file>`` with any suffix in ``voxfast.audio.io.AUDIO_SUFFIXES``. A sub-folder of a
speaker folder is a session (``SRC/<speaker>/<session>/**``): a target trial never pairs two files of one
session, because clips of one recording share the microphone and room and would make the trials easier than
the task. Files directly in a speaker folder have no session and pair with any other file of the speaker.

The split is speaker-disjoint: ``--test-speakers`` (a count, or a fraction of the speakers; at least 2) are held
out for trials and never trained on. Trials are drawn uniformly from the allowed pairs with the seed (split and
trials from separate streams, so asking for more trials keeps the split), ``--target-fraction`` of them target
trials, without duplicates; when fewer pairs exist than asked, all of them are used and the summary says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from voxfast.audio.io import AUDIO_SUFFIXES, find_audio_files
from voxfast.data.manifest import Trial
from voxfast.errors import VoxfastError
from voxfast.prepare import CommonOptions, PrepareResult
from voxfast.prepare.lists import TRAIN_LIST, no_audio_error, write_train_list, write_trial_list
from voxfast.prepare.pairs import PairPool, draw_pairs
from voxfast.prepare.stage import run_stage

__all__ = ["MIN_TEST_SPEAKERS", "MIN_TRAIN_SPEAKERS", "TRIALS", "TRIALS_NAME", "OwnOptions", "SpeakerFiles",
           "prepare_own", "scan_speakers"]

TRIALS = "trials.txt"
TRIALS_NAME = "own"  # its name in prepare.json: outputs.trials and counts.trials map names, as for VoxCeleb
MIN_TEST_SPEAKERS = 2  # a non-target trial needs two held-out speakers
MIN_TRAIN_SPEAKERS = 2  # a speaker classifier needs two classes


@dataclass(frozen=True)
class OwnOptions:
    """The split and the trials."""

    test_speakers: float = 0.2  # >= 1: that many speakers; < 1: that fraction of them (at least 2 either way)
    trials: int = 10_000  # trials to draw (all allowed pairs when fewer exist)
    target_fraction: float = 0.5  # share of target (same-speaker) trials
    seed: int = 0


@dataclass(frozen=True)
class SpeakerFiles:
    """One speaker folder: its files in path order and each file's session folder (None: directly inside)."""

    name: str
    files: tuple[Path, ...]
    sessions: tuple[str | None, ...]


def prepare_own(src: str | Path, out: str | Path, options: OwnOptions = OwnOptions(),
                common: CommonOptions | None = None) -> PrepareResult:
    """Write OUT/train_list.txt (training speakers), OUT/trials.txt (held-out speakers) and OUT/prepare.json."""
    _check_options(options)
    return run_stage("own", src, out, common, partial(_prepare, options))


def scan_speakers(src: Path) -> tuple[list[SpeakerFiles], list[Path]]:
    """Speaker folders holding audio (sorted by name), and the audio files outside any speaker folder."""
    speakers = []
    for folder in sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = find_audio_files(folder)
        if files:
            rels = [f.relative_to(folder).parts for f in files]
            speakers.append(SpeakerFiles(folder.name, tuple(files), tuple(r[0] if len(r) > 1 else None for r in rels)))
    loose = sorted(f for f in src.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())
    return speakers, loose


def _check_options(options: OwnOptions) -> None:
    if options.trials < 1:
        raise VoxfastError(f"--trials must be at least 1, got {options.trials}")
    if not 0 < options.target_fraction < 1:
        raise VoxfastError(f"--target-fraction must be between 0 and 1 (both excluded: the EER needs target and "
                           f"non-target trials), got {options.target_fraction}")
    whole = options.test_speakers == int(options.test_speakers)
    if options.test_speakers <= 0 or (options.test_speakers >= 1 and not whole):
        raise VoxfastError(f"--test-speakers must be a whole count >= 1 or a fraction in (0, 1), got "
                           f"{options.test_speakers}")


def _prepare(options: OwnOptions, result: PrepareResult, src: Path, out: Path) -> None:
    speakers, loose = scan_speakers(src)
    if not speakers:
        raise no_audio_error(src, "expected one folder per speaker: SRC/<speaker>/**/<audio>")
    if loose:
        result.problems.append(f"{len(loose)} audio file(s) directly in {src}, outside any speaker folder, left "
                               f"out (first: {loose[0]})")
    result.options.update(test_speakers=options.test_speakers, trials=options.trials,
                          target_fraction=options.target_fraction, seed=options.seed)
    split_rng, trial_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(options.seed).spawn(2))
    test = _choose_test(speakers, options.test_speakers, split_rng, src)
    train = [s for s in speakers if s.name not in {t.name for t in test}]
    rows = [(s.name, f) for s in train for f in s.files]
    write_train_list(out / TRAIN_LIST, rows)
    trials = _trials(test, options, trial_rng, result)
    write_trial_list(out / TRIALS, trials)
    _report(result, out, speakers, train, test, len(rows))


def _target_pairs(speaker: SpeakerFiles) -> int:
    """Pairs of this speaker's files that the same-session guard allows."""
    n = len(speaker.files)
    sizes = np.unique([s for s in speaker.sessions if s is not None], return_counts=True)[1]
    return n * (n - 1) // 2 - int((sizes * (sizes - 1) // 2).sum())


def _choose_test(speakers: list[SpeakerFiles], wanted: float, rng: np.random.Generator,
                 src: Path) -> list[SpeakerFiles]:
    """Held-out speakers drawn from those with at least one allowed target pair, in name order."""
    n_test = max(MIN_TEST_SPEAKERS, int(wanted) if wanted >= 1 else round(wanted * len(speakers)))
    need = n_test + MIN_TRAIN_SPEAKERS
    if len(speakers) < need:
        raise VoxfastError(f"{len(speakers)} speaker folder(s) with audio under {src}; the split needs at least "
                           f"{need} ({n_test} held out for trials, {MIN_TRAIN_SPEAKERS} to train): add speaker "
                           "folders, or lower --test-speakers")
    eligible = [s for s in speakers if _target_pairs(s) > 0]
    if len(eligible) < n_test:
        raise VoxfastError(f"only {len(eligible)} of {len(speakers)} speakers can be held out for trials (a held-out "
                           f"speaker needs 2 files, from 2 session folders when it has session folders), "
                           f"{n_test} needed: add files to more speakers, or lower --test-speakers")
    chosen = sorted(rng.choice(len(eligible), size=n_test, replace=False))
    return [eligible[i] for i in chosen]


def _trials(test: list[SpeakerFiles], options: OwnOptions, rng: np.random.Generator,
            result: PrepareResult) -> list[Trial]:
    """Target and non-target pairs over the held-out files, mixed in a seeded order."""
    files = [f for s in test for f in s.files]
    speaker = np.repeat(np.arange(len(test)), [len(s.files) for s in test])
    pool = PairPool(speaker.astype(np.int64), _session_numbers(test))
    wanted_target = round(options.trials * options.target_fraction)
    target = draw_pairs(pool, wanted_target, True, rng)
    nontarget = draw_pairs(pool, options.trials - wanted_target, False, rng)
    pairs = np.concatenate([target, nontarget])
    labels = np.repeat([1, 0], [len(target), len(nontarget)])
    order = rng.permutation(len(pairs))
    _count_trials(result, pool, wanted_target, options.trials - wanted_target, len(target), len(nontarget))
    return [Trial(str(files[pairs[k, 0]]), str(files[pairs[k, 1]]), int(labels[k])) for k in order]


def _session_numbers(speakers: list[SpeakerFiles]) -> np.ndarray:
    """A number per file, shared by the files of one session folder; a file outside any has its own."""
    counter = itertools.count()
    numbers: dict[tuple[str, str], int] = {}
    return np.array([next(counter) if sess is None else numbers.setdefault((s.name, sess), next(counter))
                     for s in speakers for sess in s.sessions], dtype=np.int64)


def _count_trials(result: PrepareResult, pool: PairPool, want_t: int, want_n: int, got_t: int, got_n: int) -> None:
    guarded = pool.same_session_pairs()
    result.counts["trials"] = {TRIALS_NAME: {
        "trials": got_t + got_n, "target": got_t, "nontarget": got_n,
        "target_available": pool.available(True), "nontarget_available": pool.available(False),
        "same_session_pairs_excluded": guarded,
    }}
    result.summary.append(f"trials: {got_t + got_n} ({got_t} target, {got_n} non-target)")
    result.summary.append(f"same-session guard: {guarded} same-session pair(s) excluded, "
                          f"{pool.available(True)} target pair(s) left to draw from")
    for kind, want, got in (("target", want_t, got_t), ("non-target", want_n, got_n)):
        if got < want:
            result.summary.append(f"only {got} {kind} pairs exist, fewer than the {want} asked: all are used")


def _report(result: PrepareResult, out: Path, speakers: list[SpeakerFiles], train: list[SpeakerFiles],
            test: list[SpeakerFiles], n_train_utts: int) -> None:
    sessions = sum(len({s for s in sp.sessions if s is not None}) for sp in speakers)
    result.counts.update(speakers=len(speakers), sessions=sessions,
                         train={"speakers": len(train), "utterances": n_train_utts},
                         test={"speakers": len(test), "utterances": sum(len(s.files) for s in test)})
    result.summary.insert(0, f"train: {len(train)} speakers, {n_train_utts} utterances; held out for trials: "
                             f"{len(test)} speakers, {result.counts['test']['utterances']} utterances; "
                             f"{sessions} session folder(s)")
    result.outputs.update(train_list=str(out / TRAIN_LIST), trials={TRIALS_NAME: str(out / TRIALS)},
                          test_speakers=[s.name for s in test])
    result.overrides += [f"data.train_list={out / TRAIN_LIST}", f"eval.trials={out / TRIALS}"]
