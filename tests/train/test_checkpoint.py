"""Checkpoint retention, best-model tracking and weight averaging."""

import math

import pytest
import torch
from torch import nn

from voxfast.errors import VoxfastError
from voxfast.train.checkpoint import (
    BestTracker,
    average_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    run_average,
    save_checkpoint,
    select_last_epochs,
)


def _touch_epochs(folder, epochs):
    folder.mkdir(parents=True, exist_ok=True)
    for e in epochs:
        (folder / f"epoch_{e:03d}.pt").write_bytes(b"x")


# --- prune -----------------------------------------------------------------------------------------------------------


def test_prune_orders_by_epoch_number_not_name_or_mtime(tmp_path):
    _touch_epochs(tmp_path, range(1, 13))
    (tmp_path / "epoch_1000.pt").write_bytes(b"x")  # wider than the zero padding: still the newest
    for name in ("last.pt", "best.pt", "notes.txt", "avg_last3.pt"):
        (tmp_path / name).write_bytes(b"x")
    # give the oldest file the newest mtime: retention must not follow it
    (tmp_path / "epoch_001.pt").touch()

    deleted = prune_checkpoints(tmp_path, keep_last=3)

    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == [
        "avg_last3.pt",
        "best.pt",
        "epoch_011.pt",
        "epoch_012.pt",
        "epoch_1000.pt",
        "last.pt",
        "notes.txt",
    ]
    assert sorted(p.name for p in deleted) == [f"epoch_{e:03d}.pt" for e in range(1, 11)]
    assert all(not p.exists() for p in deleted)


def test_prune_keeps_epoch_010_over_epoch_009(tmp_path):
    _touch_epochs(tmp_path, [8, 9, 10])
    prune_checkpoints(tmp_path, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_010.pt"]


def test_prune_keep_last_zero_keeps_all_but_removes_stale_tmp(tmp_path):
    _touch_epochs(tmp_path, range(1, 6))
    (tmp_path / ".epoch_006.pt.tmp").write_bytes(b"partial")
    (tmp_path / ".epoch_007.pt.4242.tmp").write_bytes(b"partial")  # a writer's own temp name (its pid)
    (tmp_path / ".last.pt.tmp").write_bytes(b"partial")  # not an epoch write: not ours to judge

    deleted = prune_checkpoints(tmp_path, keep_last=0)

    assert sorted(p.name for p in deleted) == [".epoch_006.pt.tmp", ".epoch_007.pt.4242.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.pt.tmp"] + [f"epoch_{e:03d}.pt" for e in range(1, 6)]


def test_prune_fewer_files_than_keep_last_and_missing_folder(tmp_path):
    _touch_epochs(tmp_path, [1, 2])
    assert prune_checkpoints(tmp_path, keep_last=5) == []
    assert prune_checkpoints(tmp_path / "absent", keep_last=1) == []
    with pytest.raises(VoxfastError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=-1)


# --- BestTracker -----------------------------------------------------------------------------------------------------


def test_best_tracker_min():
    t = BestTracker("min")
    assert t.is_better(3.0)
    assert not t.is_better(3.0)  # a tie keeps the earlier model
    assert not t.is_better(4.0)
    assert t.is_better(torch.tensor(2.5))
    assert t.best == 2.5


def test_best_tracker_max():
    t = BestTracker("max")
    assert t.is_better(0.5)
    assert not t.is_better(0.4)
    assert t.is_better(0.9)
    assert t.best == 0.9


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_best_tracker_non_finite_never_best(bad):
    t = BestTracker("min")
    assert not t.is_better(bad)  # not even as the first value
    assert t.best is None
    assert t.is_better(1.0)
    assert not t.is_better(bad)
    assert t.best == 1.0


def test_best_tracker_round_trips_through_a_checkpoint(tmp_path):
    t = BestTracker("min", metric="eer")
    t.is_better(0.05)
    save_checkpoint({"best": t.state_dict()}, tmp_path / "last.pt")
    # plain Python values: loadable without unpickling arbitrary objects
    torch.load(tmp_path / "last.pt", weights_only=True)

    resumed = BestTracker("min", metric="eer")
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt")["best"])
    assert resumed.best == 0.05
    assert not resumed.is_better(0.06)  # compares with the best from before the interruption
    assert resumed.is_better(0.04)


def test_best_tracker_load_none_or_other_metric_starts_afresh():
    t = BestTracker("max", metric="acc")
    t.load_state_dict(None)
    assert t.best is None
    t.load_state_dict({"mode": "min", "metric": "eer", "best": 0.01})
    assert t.best is None
    assert t.is_better(0.5)


def test_best_tracker_rejects_unknown_mode():
    with pytest.raises(VoxfastError, match="'min' or 'max'"):
        BestTracker("lowest")


# --- averaging -------------------------------------------------------------------------------------------------------


def _model(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    m.train()
    for _ in range(seed + 1):  # a different num_batches_tracked and running stats per checkpoint
        m(torch.randn(8, 4))
    return m


def _write_run(folder, epochs):
    paths = []
    for e in epochs:
        m = _model(e)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        m(torch.randn(8, 4)).sum().backward()
        opt.step()
        path = folder / f"epoch_{e:03d}.pt"
        state = {
            "model": m.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": {"scale": 1.0},
            "torch_rng": torch.get_rng_state(),
            "epoch": e,
            "step": 10 * e,
            "config": {"name": f"cfg{e}"},
            "speakers": [f"spk{e}"],
        }
        save_checkpoint(state, path)
        paths.append(path)
    return paths


def test_average_is_float64_mean_with_int_buffers_and_metadata_from_last(tmp_path):
    paths = _write_run(tmp_path, [1, 2, 3])
    states = [torch.load(p, weights_only=False) for p in paths]

    avg = average_checkpoints(paths)

    model = avg["model"]
    assert list(model) == list(states[-1]["model"])
    for key, value in model.items():
        if value.is_floating_point():
            expected = sum(s["model"][key].double() for s in states) / 3
            assert value.dtype == states[-1]["model"][key].dtype
            torch.testing.assert_close(value, expected.to(value.dtype), rtol=0, atol=0)
        else:
            assert torch.equal(value, states[-1]["model"][key])
    assert model["1.num_batches_tracked"].dtype == torch.int64
    assert int(model["1.num_batches_tracked"]) == int(states[-1]["model"]["1.num_batches_tracked"]) == 5
    assert avg["epoch"] == 3 and avg["step"] == 30
    assert avg["config"] == {"name": "cfg3"} and avg["speakers"] == ["spk3"]
    assert avg["averaged_from"] == ["epoch_001.pt", "epoch_002.pt", "epoch_003.pt"]
    for key in ("optimizer", "scaler", "torch_rng"):
        assert key not in avg
    # the result loads into the model as it is
    _model(0).load_state_dict(model)


def test_average_keeps_half_precision_dtype(tmp_path):
    paths = []
    for i, v in enumerate((1.0, 2.0, 4.0)):
        p = tmp_path / f"epoch_{i:03d}.pt"
        save_checkpoint({"model": {"w": torch.full((2,), v, dtype=torch.float16)}, "epoch": i, "step": i}, p)
        paths.append(p)
    w = average_checkpoints(paths)["model"]["w"]
    assert w.dtype == torch.float16
    torch.testing.assert_close(w, torch.full((2,), 7 / 3, dtype=torch.float64).half(), rtol=0, atol=0)


def test_average_of_one_is_that_model(tmp_path):
    (path,) = _write_run(tmp_path, [4])
    avg = average_checkpoints([path])
    for key, value in torch.load(path, weights_only=False)["model"].items():
        assert torch.equal(avg["model"][key], value)


def test_average_needs_a_path():
    with pytest.raises(VoxfastError, match="at least one"):
        average_checkpoints([])


def test_average_names_key_and_files_on_missing_key(tmp_path):
    a, b = tmp_path / "epoch_001.pt", tmp_path / "epoch_002.pt"
    save_checkpoint({"model": {"w": torch.zeros(2), "b": torch.zeros(1)}, "epoch": 1, "step": 1}, a)
    save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2, "step": 2}, b)
    with pytest.raises(VoxfastError, match=r"'b' is in epoch_001\.pt but not in epoch_002\.pt") as err:
        average_checkpoints([a, b])
    assert str(a) in str(err.value) and str(b) in str(err.value)
    with pytest.raises(VoxfastError, match=r"'b' is in epoch_001\.pt but not in epoch_002\.pt"):
        average_checkpoints([b, a])


def test_average_names_key_and_files_on_shape_mismatch(tmp_path):
    a, b = tmp_path / "epoch_001.pt", tmp_path / "epoch_002.pt"
    save_checkpoint({"model": {"w": torch.zeros(2, 3), "v": torch.zeros(3)}, "epoch": 1, "step": 1}, a)
    save_checkpoint({"model": {"w": torch.zeros(2, 3), "v": torch.zeros(4)}, "epoch": 2, "step": 2}, b)
    with pytest.raises(VoxfastError, match=r"'v' has shape \(3,\) in epoch_001\.pt but \(4,\) in epoch_002\.pt"):
        average_checkpoints([a, b])


def test_average_rejects_checkpoint_without_model(tmp_path):
    a = tmp_path / "epoch_001.pt"
    save_checkpoint({"epoch": 1}, a)
    with pytest.raises(VoxfastError, match=r"epoch_001\.pt: no model weights"):
        average_checkpoints([a])


# --- selection and the CLI entry point -------------------------------------------------------------------------------


def test_select_last_epochs_by_number(tmp_path):
    _touch_epochs(tmp_path, [8, 9, 10, 11])
    (tmp_path / "last.pt").write_bytes(b"x")
    assert [p.name for p in select_last_epochs(tmp_path, 3)] == ["epoch_009.pt", "epoch_010.pt", "epoch_011.pt"]


def test_select_last_epochs_too_few(tmp_path):
    _touch_epochs(tmp_path, [9, 10])
    (tmp_path / "best.pt").write_bytes(b"x")
    with pytest.raises(VoxfastError, match=r"found 2 epoch_\*\.pt.*keep_last must be >= 5 .* to average 5"):
        select_last_epochs(tmp_path, 5)
    with pytest.raises(VoxfastError, match=">= 1"):
        select_last_epochs(tmp_path, 0)


def test_run_average_with_a_run_folder(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    paths = _write_run(ckpts, [1, 2, 3, 4])
    save_checkpoint(torch.load(paths[-1], weights_only=False), ckpts / "last.pt")

    out = run_average(run, 3, tmp_path / "avg.pt")

    assert out == tmp_path / "avg.pt"
    avg = load_checkpoint(out)
    assert avg["averaged_from"] == ["epoch_002.pt", "epoch_003.pt", "epoch_004.pt"]
    assert avg["epoch"] == 4 and "optimizer" not in avg
    expected = average_checkpoints(paths[1:])
    for key, value in expected["model"].items():
        assert torch.equal(avg["model"][key], value)
    # the checkpoints folder itself works too
    assert load_checkpoint(run_average(ckpts, 2, tmp_path / "avg2.pt"))["averaged_from"] == [
        "epoch_003.pt",
        "epoch_004.pt",
    ]


def test_run_average_with_explicit_files(tmp_path):
    paths = _write_run(tmp_path, [1, 2, 3])
    out = run_average([paths[2], paths[0]], None, tmp_path / "out" / "avg.pt")
    assert load_checkpoint(out)["averaged_from"] == ["epoch_003.pt", "epoch_001.pt"]
    assert load_checkpoint(out)["epoch"] == 1  # metadata from the last one given


def test_run_average_errors(tmp_path):
    paths = _write_run(tmp_path, [1, 2])
    with pytest.raises(VoxfastError, match="--last N"):
        run_average(tmp_path, None, tmp_path / "avg.pt")
    with pytest.raises(VoxfastError, match="drop --last"):
        run_average(paths, 2, tmp_path / "avg.pt")
    with pytest.raises(VoxfastError, match="one of the checkpoints"):
        run_average(tmp_path, 2, paths[1])
    with pytest.raises(VoxfastError, match="not found"):
        run_average([tmp_path / "missing.pt"], None, tmp_path / "avg.pt")
    assert paths[1].is_file() and not (tmp_path / "avg.pt").exists()
