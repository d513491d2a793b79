"""`prepare own`: a speaker-disjoint split, seeded trials with the asked balance, and the same-session guard."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.prepare.trees import own_tree, read_json
from voxfast.data.manifest import read_trials, read_utterances
from voxfast.errors import VoxfastError
from voxfast.prepare.own import OwnOptions, prepare_own
from voxfast.prepare.pairs import PairPool, draw_pairs

# 10 speakers: two session folders of 3 files each, except spk0 (files in the speaker folder) and spk9 (one
# session only, so it can never be held out: every pair of its files shares a session)
SPEAKERS = {f"spk{i}": {"sessA": 3, "sessB": 3} for i in range(1, 9)} | {"spk0": {None: 4}, "spk9": {"only": 5}}


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return own_tree(tmp_path_factory.mktemp("own") / "speakers", SPEAKERS)


def _session(path: str) -> tuple[str, str]:
    """(speaker, session folder) of a file; a file directly in its speaker folder is its own session."""
    parts = Path(path).parts
    return (parts[-3], parts[-2]) if parts[-3].startswith("spk") else (parts[-2], parts[-1])


def test_split_is_speaker_disjoint_and_trials_keep_the_guard(src: Path, tmp_path: Path) -> None:
    result = prepare_own(src, tmp_path, OwnOptions(test_speakers=3, trials=60, target_fraction=0.25, seed=1))
    train, trials = read_utterances(tmp_path / "train_list.txt"), read_trials(tmp_path / "trials.txt")
    test_files = {p for t in trials for p in (t.enroll, t.test)}
    test_speakers = {Path(p).relative_to(src.resolve()).parts[0] for p in test_files}
    assert len(test_speakers) == 3 and "spk9" not in test_speakers
    assert not test_speakers & {u.spk for u in train}
    assert len({u.spk for u in train}) == 7 and len(train) == len(read_utterances(tmp_path / "train_list.txt"))
    assert Counter(t.label for t in trials) == {1: 15, 0: 45}
    pairs = [frozenset((t.enroll, t.test)) for t in trials]
    assert len(set(pairs)) == len(pairs) and all(t.enroll != t.test for t in trials)
    for t in trials:
        same_speaker = _session(t.enroll)[0] == _session(t.test)[0]
        assert same_speaker == (t.label == 1)
        assert _session(t.enroll) != _session(t.test)  # the same-session guard
    counts = read_json(tmp_path)["counts"]
    assert counts["trials"]["own"]["trials"] == 60 and counts["test"]["speakers"] == 3
    assert counts["train"] == {"speakers": 7, "utterances": len(train)}
    assert result.overrides == [f"data.train_list={tmp_path.resolve() / 'train_list.txt'}",
                                f"eval.trials={tmp_path.resolve() / 'trials.txt'}"]
    assert any("same-session guard" in line for line in result.summary)


def test_the_seed_fixes_split_and_trials(src: Path, tmp_path: Path) -> None:
    options = OwnOptions(test_speakers=0.3, trials=40, seed=7)
    for name in ("a", "b"):
        prepare_own(src, tmp_path / name, options)
    prepare_own(src, tmp_path / "c", OwnOptions(test_speakers=0.3, trials=40, seed=8))
    files = ("train_list.txt", "trials.txt", "prepare.json")
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files[:2])
    assert (tmp_path / "a" / "trials.txt").read_bytes() != (tmp_path / "c" / "trials.txt").read_bytes()
    assert read_json(tmp_path / "a")["counts"] == read_json(tmp_path / "b")["counts"]


def test_fewer_pairs_than_asked_uses_all_of_them(src: Path, tmp_path: Path) -> None:
    result = prepare_own(src, tmp_path, OwnOptions(test_speakers=2, trials=10_000, seed=0))
    counts = result.counts["trials"]["own"]
    assert counts["target"] == counts["target_available"] and counts["nontarget"] == counts["nontarget_available"]
    assert any("all are used" in line for line in result.summary)
    assert len(read_trials(tmp_path / "trials.txt")) == counts["trials"]


def test_too_few_speakers_or_holdable_speakers_say_how_many(tmp_path: Path) -> None:
    src = own_tree(tmp_path / "few", {"a": {None: 2}, "b": {None: 2}, "c": {None: 2}})
    with pytest.raises(VoxfastError, match=r"3 speaker folder\(s\).*at least 4 \(2 held out.*2 to train\)"):
        prepare_own(src, tmp_path / "out")
    src = own_tree(tmp_path / "one_session", {s: {"only": 3} for s in "abcd"} | {"e": {None: 2}})
    with pytest.raises(VoxfastError, match="only 1 of 5 speakers can be held out"):
        prepare_own(src, tmp_path / "out")
    with pytest.raises(VoxfastError, match="target-fraction"):
        prepare_own(src, tmp_path / "out", OwnOptions(target_fraction=1.0))
    with pytest.raises(VoxfastError, match=r"no .* files under"):
        prepare_own(tmp_path / "out", tmp_path / "out2")


def test_files_outside_speaker_folders_are_reported(src: Path, tmp_path: Path) -> None:
    loose = src / "stray.wav"
    loose.write_bytes((src / "spk0" / "0_000.wav").read_bytes())
    try:
        result = prepare_own(src, tmp_path)
    finally:
        loose.unlink()
    assert any("stray.wav" in p for p in result.problems)


@pytest.mark.parametrize("rejection", [False, True])
def test_pairs_are_distinct_allowed_and_all_reachable(monkeypatch: pytest.MonkeyPatch, rejection: bool) -> None:
    if rejection:
        monkeypatch.setattr("voxfast.prepare.pairs._ENUMERATE_BELOW", 0)
    speaker = np.repeat(np.arange(4), [5, 6, 7, 8]).astype(np.int64)
    session = (speaker * 10 + np.arange(26) % 3).astype(np.int64)  # three sessions per speaker
    pool = PairPool(speaker, session)
    for target in (True, False):
        n = pool.available(target) // 3
        pairs = draw_pairs(pool, n, target, np.random.default_rng(0))
        assert len(pairs) == n and len({tuple(p) for p in pairs}) == n and np.all(pairs[:, 0] < pairs[:, 1])
        assert np.all((speaker[pairs[:, 0]] == speaker[pairs[:, 1]]) == target)
        assert np.all(session[pairs[:, 0]] != session[pairs[:, 1]])
        again = draw_pairs(pool, n, target, np.random.default_rng(0))
        assert np.array_equal(pairs, again)
    # uniform over the allowed pairs: every one of them turns up when drawing a third at a time, many times
    seen = {tuple(p) for seed in range(60) for p in draw_pairs(pool, 20, True, np.random.default_rng(seed))}
    assert len(seen) == pool.available(True)
