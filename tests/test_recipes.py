"""The published VoxCeleb recipes shipped as package configs (`voxceleb/NAME`).

Each recipe must load, validate and be found by name like the demos, and hold the values its source publishes:
a wrong edit to a learning rate, margin ramp or batch should fail here, not after a GPU-week. The expected
values are those read from the sources cited in each file's header (WeSpeaker examples/voxceleb/v2/conf/*.yaml
and run.sh; voxceleb_trainer's README.md and trainSpeakerNet.py defaults).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from voxfast.config import Config, config_to_dict, find_config, load_config, shipped_configs
from voxfast.errors import ConfigError
from voxfast.train.schedule import peak_lr

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "voxfast" / "configs"
RECIPES = ["voxceleb/ecapa_tdnn", "voxceleb/resnet34", "voxceleb/resnet34_lm", "voxceleb/resnetse34l",
           "voxceleb/resnetse34v2"]


def test_shipped_configs_list_the_recipes_and_not_the_presets():
    names = shipped_configs()
    assert [n for n in names if n.startswith("voxceleb/")] == RECIPES
    assert "demo" in names and not any(n.startswith("presets") for n in names)
    assert shipped_configs("presets") == ["reproducible", "speed"]


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_is_found_by_name(name):
    assert find_config(name) == PACKAGE_CONFIGS / f"{name}.yaml" == find_config(f"{name}.yaml")
    assert find_config(Path(name)) == find_config(name)


def test_an_unknown_recipe_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="voxceleb/resnet34, voxceleb/resnet34_lm"):
        find_config("voxceleb/resnet35")
    with pytest.raises(ConfigError, match="voxceleb/ecapa_tdnn"):
        find_config("voxceleb/../demo")  # only listed names resolve: no path tricks into or out of the folder


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_validates_alone_with_its_run_line_and_under_the_speed_preset(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    run = load_config(name, ["data.train_list=vox2/train_list.txt", "eval.trials=vox1_O_cleaned.txt"])
    assert run.data.train_list == "vox2/train_list.txt" and run.train == cfg.train
    fast = load_config(name, [], ["speed"])
    # The preset decides how fast the recipe runs, never what it trains.
    assert (fast.model, fast.head, fast.data.num_frames, fast.data.n_per_speaker) == (
        cfg.model, cfg.head, cfg.data.num_frames, cfg.data.n_per_speaker)
    assert (fast.train.lr, fast.train.epochs, fast.train.global_batch) == (
        cfg.train.lr, cfg.train.epochs, cfg.train.global_batch)
    assert fast.train.compile and fast.augment.placement == "device"


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_says_how_to_run_it_and_what_its_source_reports(name):
    text = (PACKAGE_CONFIGS / f"{name}.yaml").read_text()
    assert f"voxfast train --config {name} " in text
    assert "EER" in text and "Vox1-O" in text
    assert ("wenet-e2e/wespeaker at " in text) != ("clovaai/voxceleb_trainer at " in text)  # one pinned source


def _mix(cfg: Config) -> dict[str, float]:
    total = math.fsum(cfg.augment.mix)
    return dict(zip(("none", "reverb", "music", "babble", "noise"), (w / total for w in cfg.augment.mix), strict=True))


def test_resnet34_is_wespeakers_v2_recipe():
    cfg = load_config("voxceleb/resnet34")
    t, h, a = cfg.train, cfg.head, cfg.augment
    assert (t.optimizer, t.momentum, t.weight_decay) == ("sgd", 0.9, 1e-4)
    assert (t.scheduler, t.lr, t.lr_reference_batch, t.warmup_epochs) == ("exp", 0.1, 64, 6.0)
    assert math.isclose(t.lr * t.min_lr_ratio, 5e-5)  # ExponentialDecrease 0.1 -> 5e-5
    assert math.isclose(peak_lr(t), 0.4)  # scale_ratio 2 GPUs x 128 / 64 = 4
    assert (t.epochs, t.global_batch, t.micro_batch, t.clip_grad_norm, t.seed) == (150, 256, 128, 0.0, 42)
    assert t.keep_last >= 10  # num_avg 10 needs the last ten epochs
    assert (h.name, h.margin, h.scale, h.margin_increase) == ("aam", 0.2, 32.0, "exp")
    assert h.margin_ramp == (19.0, 39.0)  # increase_start_epoch 20, fix_start_epoch 40, counted from epoch 1
    assert (cfg.model.name, cfg.model.n_mels, cfg.model.embed_dim, cfg.model.pooling) == ("resnet34", 80, 256, "tstp")
    assert (cfg.data.num_frames, cfg.data.n_per_speaker, cfg.data.max_seg_per_spk) == (200, 1, 0)
    assert a.enabled and a.speed_perturb
    mix = _mix(cfg)  # aug_prob 0.6, then reverb or one MUSAN file at 1:1
    assert math.isclose(mix["none"], 0.4) and math.isclose(mix["reverb"], 0.3)
    assert math.isclose(mix["music"] + mix["babble"] + mix["noise"], 0.3)
    assert (a.noise_snr, a.music_snr, a.speech_snr, a.babble_count) == ((0.0, 15.0), (5.0, 15.0), (10.0, 30.0), (1, 1))
    assert (cfg.eval.mode, cfg.eval.top_n) == ("full", 300) and cfg.eval.cohort > 0


def test_resnet34_lm_is_wespeakers_large_margin_stage():
    base, cfg = load_config("voxceleb/resnet34"), load_config("voxceleb/resnet34_lm")
    t = cfg.train
    assert cfg.model == base.model and cfg.head.scale == base.head.scale == 32.0
    assert (cfg.head.name, cfg.head.margin, cfg.head.margin_ramp) == ("aam", 0.5, (0.0, 0.0))
    assert (cfg.data.num_frames, cfg.augment.speed_perturb) == (600, False)  # train.py: no speed perturb with do_lm
    assert (t.optimizer, t.scheduler, t.lr, t.lr_reference_batch, t.warmup_epochs) == ("sgd", "exp", 1e-4, 64, 1.0)
    assert math.isclose(t.lr * t.min_lr_ratio, 2.5e-5)
    assert (t.epochs, t.global_batch, t.micro_batch) == (5, 128, 64)
    assert cfg.augment.mix == base.augment.mix and cfg.eval == base.eval


def test_ecapa_tdnn_is_wespeakers_c512_recipe_with_the_resnet34_schedule():
    base, cfg = load_config("voxceleb/resnet34"), load_config("voxceleb/ecapa_tdnn")
    assert (cfg.model.name, cfg.model.n_mels, cfg.model.embed_dim, cfg.model.pooling) == ("ecapa_tdnn", 80, 192,
                                                                                           "ecapa")
    # conf/ecapa_tdnn.yaml differs from conf/resnet.yaml in the model keys only.
    assert (cfg.data, cfg.augment, cfg.head, cfg.eval) == (base.data, base.augment, base.head, base.eval)
    assert _train_without_out_dir(cfg) == _train_without_out_dir(base)
    assert cfg.train.out_dir != base.train.out_dir


def _train_without_out_dir(cfg: Config) -> dict[str, object]:
    return {k: v for k, v in config_to_dict(cfg)["train"].items() if k != "out_dir"}


def test_resnetse34v2_is_voxceleb_trainers_recipe():
    cfg = load_config("voxceleb/resnetse34v2")
    t = cfg.train
    assert (cfg.model.name, cfg.model.n_mels, cfg.model.embed_dim, cfg.model.pooling) == ("resnetse34v2", 64, 512,
                                                                                          "asp")
    assert cfg.head.name == "softmaxproto"
    assert (cfg.data.num_frames, cfg.data.n_per_speaker, cfg.data.max_seg_per_spk) == (200, 2, 500)
    assert (t.global_batch, t.micro_batch) == (400, 400)  # batch_size 200 speakers x nPerSpeaker 2, one pass
    assert (t.optimizer, t.lr, t.weight_decay, t.warmup_epochs) == ("adam", 1e-3, 0.0, 0.0)
    assert (t.scheduler, t.step_epochs, t.step_gamma, t.epochs) == ("step", 10.0, 0.95, 500)
    a = cfg.augment
    assert a.enabled and not a.speed_perturb and len(set(a.mix)) == 1  # randint(0, 4): five kinds, uniform
    assert (a.noise_snr, a.music_snr, a.speech_snr, a.babble_count) == ((0.0, 15.0), (5.0, 15.0), (13.0, 20.0), (3, 7))
    assert (cfg.eval.mode, cfg.eval.crops, cfg.eval.crop_seconds, cfg.eval.crop_score) == ("crops", 10, 4.0,
                                                                                          "mean_pairwise")


def test_resnetse34l_is_voxceleb_trainers_baseline_lite_ap_recipe():
    cfg, v2 = load_config("voxceleb/resnetse34l"), load_config("voxceleb/resnetse34v2")
    assert (cfg.model.name, cfg.model.n_mels, cfg.model.embed_dim, cfg.model.pooling) == ("resnetse34l", 40, 512,
                                                                                          "sap")
    assert cfg.head.name == "angleproto" and not cfg.augment.enabled
    assert (cfg.data.n_per_speaker, cfg.train.global_batch, cfg.train.micro_batch) == (2, 800, 800)
    same = ("optimizer", "lr", "weight_decay", "warmup_epochs", "scheduler", "step_epochs", "step_gamma", "epochs")
    assert all(getattr(cfg.train, k) == getattr(v2.train, k) for k in same)  # both are the trainer's defaults
    assert cfg.eval == v2.eval


@pytest.mark.parametrize(("name", "published_millions"), [("voxceleb/resnet34", 6.63), ("voxceleb/ecapa_tdnn", 6.19)])
def test_the_wespeaker_recipes_build_the_published_model_size(name, published_millions):
    from voxfast.models.registry import create_model

    m = load_config(name).model
    model = create_model(m.name, n_mels=m.n_mels, embed_dim=m.embed_dim, pooling=m.pooling)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(params, 2) == published_millions  # WeSpeaker README "Params" column


@pytest.mark.parametrize("name", RECIPES)
def test_voxfast_train_dry_run_validates_each_recipe(name, capsys):
    from voxfast.cli import main

    assert main(["train", "--config", name, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"# model: {load_config(name).model.name}" in printed and "# embedder_parameters: " in printed
    assert "# steps_per_epoch: unknown until" in printed  # the recipe is checked before its data exist


def test_the_recipe_runner_knows_each_recipes_published_figures():
    from voxfast.recipe import PUBLISHED

    assert set(PUBLISHED) == set(RECIPES) - {"voxceleb/resnet34_lm"}  # the LM stage reports through resnet34
    assert PUBLISHED["voxceleb/resnet34"]["vox1_O"] == 0.723 and PUBLISHED["voxceleb/resnetse34l"]["vox1_O"] == 2.1792
