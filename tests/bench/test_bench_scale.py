"""bench-scale: every stage runs at a tiny size, the JSON holds every figure, and the generated data reads back
with voxfast's own readers as the generator meant it. No timings are asserted."""

import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf

from voxfast.audio.store import PackedStore
from voxfast.bench.scale import (
    STAGES,
    STORE_FILES,
    ScaleOptions,
    format_scale_results,
    make_pool,
    parse_size,
    pool_choice,
    process_memory,
    reset_store,
    run_child,
    run_scale_bench,
    size_label,
    smaps_rollup_fields,
    speaker_labels,
    trial_labels_scores,
    trial_pairs,
    uss_from_smaps_rollup,
)
from voxfast.cli import main
from voxfast.cli.bench import SCALE_STAGES
from voxfast.data.manifest import read_scores, read_trials, read_utterances
from voxfast.errors import VoxfastError

N, IDS = 3000, 500
EXPECTED = {
    "generate": {"seconds"},
    "list": {"seconds", "rss_growth_mb", "peak_rss_mb", "utterances"},
    "startup": {"seconds", "imports_seconds", "task_build_seconds", "peak_rss_mb", "epoch_batches"},
    "workers": {"worker_uss_growth_max_mb", "worker_uss_growth_mean_mb", "worker_dirty_growth_max_mb",
                "worker_uss_first_mean_mb", "main_uss_growth_mb", "slice_batches", "workers"},
    "store": {"open_seconds", "open_rss_growth_mb", "reopen_seconds", "reopen_rss_growth_mb", "startup_seconds",
              "worker_uss_growth_max_mb", "worker_uss_growth_mean_mb", "worker_dirty_growth_max_mb",
              "worker_uss_first_mean_mb", "main_uss_growth_mb", "slice_batches", "workers"},
    "sampler": {"epoch_build_seconds", "full_epoch_seconds", "batches", "speakers"},
    "eval": {"seconds", "peak_rss_mb"},
    "score": {"seconds", "peak_rss_mb"},
}

ROLLUP = """55d4c7a1e000-7ffd1a3f5000 ---p 00000000 00:00 0                          [rollup]
Rss:              123456 kB
Pss:               60000 kB
Pss_Dirty:         40000 kB
Shared_Clean:      50000 kB
Shared_Dirty:      10000 kB
Private_Clean:      1200 kB
Private_Dirty:     30000 kB
Referenced:       120000 kB
Anonymous:         35000 kB
LazyFree:              0 kB
AnonHugePages:      2048 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:    4096 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_scale")
    opts = ScaleOptions(sizes=[N], out=out, workers=2, batches=10, ids=IDS, keep=True,
                        overrides=["train.micro_batch=32", "data.num_frames=50"], timeout=600)
    return run_scale_bench(opts), out


def test_every_stage_reports_every_figure_in_the_json(report):
    result, out = report
    assert json.loads((out / "bench_scale.json").read_text()) == json.loads(json.dumps(result))
    got: dict[str, dict[str, dict]] = {}
    for f in result["figures"]:
        assert f["size"] == N
        got.setdefault(f["stage"], {})[f["name"]] = f
    assert {stage: set(names) for stage, names in got.items()} == EXPECTED
    for stage, figures in got.items():
        for name, f in figures.items():
            assert f["value"] is not None, (stage, name, f["note"])
            if f["target"]:
                assert f["passed"] is not None
    assert got["list"]["utterances"]["value"] == N
    assert got["workers"]["workers"]["value"] == 2 and got["store"]["workers"]["value"] == 2
    assert got["workers"]["slice_batches"]["value"] >= 2
    assert got["sampler"]["speakers"]["value"] == int(speaker_labels(N)[-1]) + 1
    table = format_scale_results(result)
    assert "worker_uss_growth_max_mb" in table and "< 1.5 GB" in table


def test_kaldi_dir_reads_back_as_generated(report):
    _, out = report
    pool = make_pool(out / "pool")
    utts = read_utterances(out / f"n{N}" / "kaldi")
    assert len(utts) == N
    labels, choice = speaker_labels(N), pool_choice(N, len(pool.paths))
    for i in (0, 1, N // 2, N - 1):
        u = utts[i]
        assert (u.utt, u.spk, u.path) == (f"id{labels[i]:06d}-{i:04d}", f"id{labels[i]:06d}", pool.paths[choice[i]])
    assert len({u.spk for u in utts}) == int(labels[-1]) + 1


def test_trials_and_shuffled_scores_read_back_as_generated(report):
    _, out = report
    trials = read_trials(out / f"n{N}" / "trials" / "trials.txt")
    pairs, scores = read_scores(out / f"n{N}" / "trials" / "scores.txt")
    assert len(trials) == len(pairs) == len(scores) == N
    labels, millionths = trial_labels_scores(N)
    e, t = trial_pairs(np.arange(N), IDS)
    for i in (0, 7, N - 1):
        assert (trials[i].label, trials[i].enroll, trials[i].test) == (labels[i], f"u{e[i]:03d}", f"u{t[i]:03d}")
    by_pair = dict(zip(pairs, scores.tolist(), strict=True))
    assert set(by_pair) == {(x.enroll, x.test) for x in trials}
    assert pairs != [(x.enroll, x.test) for x in trials]  # shuffled, as a foreign score file may be
    assert by_pair[(trials[5].enroll, trials[5].test)] == pytest.approx(millionths[5] / 1e6)


def test_store_passes_its_checks_and_crops_are_the_pool_audio(report):
    _, out = report
    pool = make_pool(out / "pool")
    folder = out / f"n{N}" / "store"
    (folder / "derived").mkdir(exist_ok=True)
    (folder / "derived.cache").write_text("left by a reader")
    reset_store(folder)
    assert {p.name for p in folder.iterdir()} <= STORE_FILES
    store = PackedStore(folder)
    assert len(store) == N
    assert store.verify() == []  # every entry's crc32 matches the pool clip it points at
    choice = pool_choice(N, len(pool.paths))
    for i in (0, N - 1):
        np.testing.assert_array_equal(store.read_raw(i), sf.read(pool.paths[choice[i]], dtype="int16")[0])


def test_trial_pairs_never_repeat_nor_pair_an_id_with_itself():
    ids = 101
    e, t = trial_pairs(np.arange(ids * (ids - 1)), ids)
    assert not np.any(e == t)
    assert len(set(zip(e.tolist(), t.tolist(), strict=True))) == ids * (ids - 1)


def test_uss_reader_sums_the_private_lines_of_smaps_rollup():
    assert uss_from_smaps_rollup(ROLLUP) == (1200 + 30000 + 4096) * 1024
    assert uss_from_smaps_rollup("Rss: 10 kB\n") == 0
    assert smaps_rollup_fields(ROLLUP)["Private_Dirty"] == 30000 * 1024
    assert "55d4c7a1e000-7ffd1a3f5000 ---p 00000000 00" not in smaps_rollup_fields(ROLLUP)


def test_a_child_peak_rss_is_its_own_not_the_parents(tmp_path):
    ballast = np.ones(300_000_000 // 8)  # the parent resident well above what the child will touch
    code = "import time; x = bytearray(50_000_000); time.sleep(0.3)"  # the parent polls every 20 ms
    run = run_child([sys.executable, "-c", code], tmp_path / "child.log", 60)
    assert run.returncode == 0 and 40e6 < run.peak_rss < ballast.nbytes
    own = process_memory(os.getpid())
    assert own is not None and own[0] >= own[1] > 0


def test_sizes_parse_and_print():
    assert [parse_size(s) for s in ("10M", "1m", "100k", "3000", "2.5M")] == [10**7, 10**6, 10**5, 3000, 2_500_000]
    assert [size_label(n) for n in (10**7, 10**6, 100_000, 3000, 1234)] == ["10M", "1M", "100k", "3k", "1234"]
    for bad in ("0", "1.5", "ten", "-3k"):
        with pytest.raises(VoxfastError, match="--sizes"):
            parse_size(bad)


def test_speaker_counts_follow_voxceleb2_and_the_issue():
    assert int(speaker_labels(1_000_000)[-1]) + 1 == 5994
    counts = np.bincount(speaker_labels(1_000_000))
    assert counts.min() >= 1 and counts.max() > 3 * np.median(counts)  # skewed


def test_cli_runs_a_stage_subset(tmp_path, capsys):
    assert SCALE_STAGES == STAGES
    code = main(["bench-scale", "--sizes", "3k", "--stages", "sampler", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "epoch_build_seconds" in text and "< 2 s" in text
    assert not (tmp_path / "n3000").exists()  # removed without --keep
