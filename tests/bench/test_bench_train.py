"""`voxfast bench-train`: the two configurations it compares, its results, and its CLI output."""

import json

import pytest
import yaml

from tests.bench.corpus import tiny_overrides
from voxfast.bench.train import (
    PLAIN,
    PLAIN_SWITCHES,
    SPEED,
    TrainBench,
    format_train_results,
    plain_config,
    run_train_bench,
    speed_config,
)
from voxfast.cli import main
from voxfast.config import find_config, find_preset, load_config

DEMO = find_config("demo")
SPEED_YAML = find_preset("speed")


def _configs(root):
    overrides = tiny_overrides(root)
    plain = plain_config(load_config(DEMO, overrides))
    return plain, speed_config(DEMO, overrides, [], SPEED_YAML, use_compile=False)


def test_plain_config_has_the_voxceleb_trainer_switches(tiny_corpus):
    base = load_config(DEMO, tiny_overrides(tiny_corpus, "train.compile=true", "train.channels_last=true"))
    plain = plain_config(base)
    for section, values in PLAIN_SWITCHES.items():
        for key, value in values.items():
            assert getattr(getattr(plain, section), key) == value, f"{section}.{key}"
    assert plain.train.log_every == 1 and plain.train.precision == "fp32" and not plain.train.compile
    assert base.train.compile and base.train.channels_last  # the input is left alone
    assert plain.model == base.model and plain.data.train_list == base.data.train_list


def test_speed_config_has_the_preset_switches_with_workers_capped(tiny_corpus, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    preset = yaml.safe_load(SPEED_YAML.read_text())
    speed = speed_config(DEMO, tiny_overrides(tiny_corpus), [], SPEED_YAML)
    for section, values in preset.items():
        for key, value in values.items():
            expected = min(value, 3) if (section, key) == ("data", "num_workers") else value
            assert getattr(getattr(speed, section), key) == expected, f"{section}.{key}"
    assert speed.data.num_workers == 3 and speed.train.compile
    assert not speed_config(DEMO, tiny_overrides(tiny_corpus), [], SPEED_YAML, use_compile=False).train.compile
    assert speed.train.micro_batch == 4  # the config's data and batch are kept


@pytest.fixture(scope="module")
def results(tiny_corpus):
    plain, speed = _configs(tiny_corpus)
    return run_train_bench([(PLAIN, plain), (SPEED, speed)], steps=2, warmup=1)


def test_results_report_both_configurations_with_measured_ratios(results):
    assert [r.name for r in results] == [PLAIN, SPEED]
    assert all(isinstance(r, TrainBench) for r in results)
    for r in results:
        assert r.steps == 2 and r.samples_per_s > 0 and 0 <= r.data_wait_pct <= 100
        assert r.device == "cpu" and r.model == "resnetse_demo" and r.micro_batch == 4
    plain, speed = results
    assert plain.precision == "fp32" and not plain.compile and not speed.compile
    assert plain.speedup == pytest.approx(1.0)
    assert speed.speedup == pytest.approx(speed.samples_per_s / plain.samples_per_s)


def test_format_prints_a_table_or_json(results):
    table = format_train_results(results, as_json=False)
    assert "speedup" in table and PLAIN in table and SPEED in table
    rows = json.loads(format_train_results(results, as_json=True))
    assert [r["name"] for r in rows] == [PLAIN, SPEED]
    assert rows[1]["speedup"] == pytest.approx(rows[1]["samples_per_s"] / rows[0]["samples_per_s"])


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_prints_a_table_and_valid_json(tiny_corpus, capsys, as_json):
    argv = ["bench-train", "--steps", "2", "--warmup", "1", "--no-compile", *tiny_overrides(tiny_corpus)]
    assert main([*argv, "--json"] if as_json else argv) == 0
    out = capsys.readouterr().out
    if as_json:
        rows = json.loads(out)
        assert [r["name"] for r in rows] == [PLAIN, SPEED] and all(r["steps"] == 2 for r in rows)
        assert rows[1]["speedup"] == pytest.approx(rows[1]["samples_per_s"] / rows[0]["samples_per_s"])
    else:
        lines = out.strip().splitlines()
        assert lines[0].startswith("voxfast bench-train on cpu") and "samples/s" in lines[1]
        assert lines[2].startswith(PLAIN) and lines[3].startswith(SPEED) and lines[2].endswith("1.00x")
