import re
from pathlib import Path

import pytest
import yaml

from voxfast.config import (
    Config,
    find_config,
    find_preset,
    load_config,
    load_config_dict,
    save_config,
    shipped_configs,
)
from voxfast.errors import ConfigError

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "voxfast" / "configs"
CONFIGS = sorted(PACKAGE_CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    assert isinstance(load_config(path), Config)


def test_defaults_without_file():
    cfg = load_config()
    assert cfg.train.lr == Config().train.lr


def _write(tmp_path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_is_rejected_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.nmae: unknown key; did you mean 'name'\?"):
        load_config(_write(tmp_path, {"model": {"nmae": "x"}}))


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean 'train'\?"):
        load_config(_write(tmp_path, {"trian": {"lr": 1.0}}))


def test_wrong_type_names_path_and_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 'ten'"):
        load_config(_write(tmp_path, {"train": {"epochs": "ten"}}))


def test_all_errors_are_reported_together(tmp_path):
    path = _write(tmp_path, {"train": {"epochs": "x", "lr": [1]}, "model": {"nmae": 1}, "head": {"name": "arc"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.num_frames=abc"])
    msg = str(info.value)
    assert "5 problems" in msg
    for key in ("train.epochs", "train.lr", "model.nmae", "head.name", "data.num_frames"):
        assert key in msg
    assert str(path) in msg


def test_overrides_are_coerced_to_field_types():
    cfg = load_config(None, ["train.lr=1e-3", "train.epochs=3", "data.pin_memory=false", "augment.noise_dir=null",
                             "head.name=am", "augment.rir_dir=/x/rirs"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.data.pin_memory is False
    assert cfg.augment.noise_dir is None and cfg.augment.rir_dir == "/x/rirs" and cfg.head.name == "am"


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=2.5", "train.epochs: expected int"),
    ("train=3", "expected section.key=value"),
    ("train.lr", "expected section.key=value"),
    ("head.name=arcface", "head.name: expected one of 'softmax', 'am', 'aam'"),
    ("data.pin_memory=maybe", "data.pin_memory: expected bool"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n")  # YAML 1.1 reads this as a string
    assert load_config(path).train.lr == pytest.approx(1e-3)


def test_value_checks():
    with pytest.raises(ConfigError, match=r"multiple of train\.micro_batch"):
        load_config(None, ["train.global_batch=100", "train.micro_batch=64"])
    with pytest.raises(ConfigError, match=r"train\.epochs: must be > 0"):
        load_config(None, ["train.epochs=0"])


def test_augment_settings_are_checked_once_for_configs_and_specs():
    from voxfast.audio.augment import AugmentSpec
    from voxfast.config import augment_problems

    defaults = {"mix": (1.0,) * 5, "noise_snr": (0.0, 15.0), "music_snr": (5.0, 15.0), "speech_snr": (13.0, 20.0),
                "babble_count": (3, 7)}
    assert augment_problems(**defaults) == []
    cases = [("augment.mix=0,0,0,0,0", {"mix": (0.0,) * 5}), ("augment.noise_snr=10,5", {"noise_snr": (10.0, 5.0)}),
             ("augment.music_snr=5,inf", {"music_snr": (5.0, float("inf"))}),
             ("augment.babble_count=3,8", {"babble_count": (3, 8)})]
    for override, bad in cases:
        (problem,) = augment_problems(**(defaults | bad))
        assert problem.startswith(override.split("=")[0] + ":")
        with pytest.raises(ConfigError) as from_config:
            load_config(None, [override])
        with pytest.raises(ConfigError) as from_spec:
            AugmentSpec(**bad)
        assert problem in str(from_config.value) and problem in str(from_spec.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=0.01", "model.embed_dim=128"])
    save_config(cfg, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml") == cfg
    assert load_config_dict(yaml.safe_load((tmp_path / "run.yaml").read_text())) == cfg


def test_shipped_configs_are_package_data_found_by_name():
    assert [n for n in shipped_configs() if "/" not in n] == ["demo", "eeg_demo", "eeg_physionet_mi", "image_demo",
                                                               "small", "voxceleb_trainer"]  # voxceleb/*: test_recipes
    assert shipped_configs("presets") == ["reproducible", "speed"]
    for name in shipped_configs():
        assert find_config(name) == PACKAGE_CONFIGS / f"{name}.yaml" == find_config(f"{name}.yaml")
    assert find_preset("speed") == PACKAGE_CONFIGS / "presets" / "speed.yaml"
    by_name = load_config("demo", ["train.lr=0.01"], ["reproducible"])
    preset = PACKAGE_CONFIGS / "presets" / "reproducible.yaml"
    by_path = load_config(PACKAGE_CONFIGS / "demo.yaml", ["train.lr=0.01"], [preset])
    assert by_name == by_path and by_name.train.deterministic and by_name.train.lr == 0.01


def test_a_local_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("demo").write_text("train:\n  lr: 0.5\n")
    assert load_config("demo").train.lr == 0.5


@pytest.mark.parametrize("name", ["nope", "presets/speed", "../demo", ""])
def test_unknown_config_names_list_the_shipped_ones(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="demo, eeg_demo, eeg_physionet_mi, image_demo"):
        find_config(name)


def test_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'fast': choose one of \['reproducible', 'speed'\]"):
        load_config(None, [], ["fast"])


@pytest.mark.parametrize("override", ["train.lr=inf", "train.warmup_epochs=nan", "head.scale=nan", "head.margin=-inf",
                                      "train.budget_minutes=inf", "eval.crop_seconds=nan", "head.margin_ramp=[0,inf]",
                                      "augment.noise_snr=[0,nan]"])
def test_non_finite_values_are_rejected_with_their_path(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: must be finite"):
        load_config(None, [override])


def test_every_float_field_is_checked_for_finiteness():
    """Walk the whole config: a NaN in any float field, of any section, is reported by its path."""
    import dataclasses

    cfg = load_config(None, [])
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            if isinstance(getattr(getattr(cfg, section.name), f.name), float):
                with pytest.raises(ConfigError, match=rf"{section.name}\.{f.name}: must be finite"):
                    load_config(None, [f"{section.name}.{f.name}=nan"])


@pytest.mark.parametrize("override", ["data.num_workers=2000", "data.prefetch_factor=1000", "train.micro_batch=100000",
                                      "data.num_frames=100000", "eval.crops=5000", "eval.batch_seconds=1e9"])
def test_counts_and_sizes_that_allocate_memory_have_a_ceiling(override):
    key = override.split("=")[0]
    extra = ["train.global_batch=100000"] if key == "train.micro_batch" else []
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: must be at most \d+ \(.+\), got"):
        load_config(None, [override, *extra])


def test_a_batch_ring_larger_than_free_memory_is_refused_before_allocation():
    """1e5 slots of 256 x 32,240 float32 samples is 3 TB: refused by size, not by the kernel mid-allocation."""
    import torch

    from voxfast.data.speaker import BatchRing
    from voxfast.errors import VoxfastError

    with pytest.raises(VoxfastError, match=r"batch ring needs 3\d{3}\.\d\d GiB .* lower data.num_workers"):
        BatchRing(100_000, 256, 32_240, torch.float32)
    assert BatchRing(4, 2, 100, torch.float32).slots == 4
