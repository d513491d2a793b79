"""`voxfast import wespeaker`: WeSpeaker's ResNet34 and ECAPA-TDNN (c512, c1024) give WeSpeaker's embeddings.

The fixtures (tools/interop_fixture_wespeaker.py) hold WeSpeaker's own L2-normalised embeddings, computed in float64
from seeded weights over its state_dict keys; here the same weights go through the converter and voxfast's embedder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import yaml

from voxfast.errors import VoxfastError
from voxfast.interop import ImportSummary, import_model
from voxfast.interop.common import seeded_state
from voxfast.tasks.speaker import load_embedder
from voxfast.train.checkpoint import load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ["resnet34", "ecapa_c512", "ecapa_c1024"]
VOXFAST_MODEL = {"resnet34": "resnet34", "ecapa_c512": "ecapa_tdnn", "ecapa_c1024": "ecapa_tdnn_c1024"}


class Converted(NamedTuple):
    fx: dict[str, Any]
    summary: ImportSummary
    ckpt: Path
    embeddings: dict[int, np.ndarray]  # voxfast's, by input length, not normalised


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"wespeaker_{name}.json").read_text())


def _weights(fx: dict[str, Any]) -> dict[str, torch.Tensor]:
    return seeded_state([(k, shape) for k, shape in fx["keys"]], fx["weights_seed"])


def _write_source(folder: Path, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """A WeSpeaker model folder: avg_model.pt (with a training head to drop) and config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    embed_dim = config["model_args"]["embed_dim"]
    torch.save({**weights, "projection.weight": torch.ones(5, embed_dim)}, folder / "avg_model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _waveform(fx: dict[str, Any], length: int) -> torch.Tensor:
    seed, amplitude = fx["input"]["seed"], fx["input"]["amplitude"]
    wave = np.random.default_rng([seed, length]).standard_normal(length).astype(np.float32) * amplitude
    return torch.from_numpy(wave)[None]


def _embeddings(ckpt: Path, fx: dict[str, Any], lengths: list[int] | None = None) -> dict[int, np.ndarray]:
    embedder, _ = load_embedder(ckpt, torch.device("cpu"))
    out = {}
    with torch.no_grad():
        for n in lengths or fx["input"]["lengths"]:
            out[n] = embedder(_waveform(fx, n))[0].double().numpy()
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Converted]:
    """Each fixture's weights converted once per module (the forward passes are most of this file's time)."""
    cache: dict[str, Converted] = {}

    def get(name: str) -> Converted:
        if name not in cache:
            fx, tmp = _fixture(name), tmp_path_factory.mktemp(name)
            src = _write_source(tmp / "exp", _weights(fx), fx["config"])
            summary = import_model("wespeaker", src, tmp / "voxfast.pt")
            cache[name] = Converted(fx, summary, tmp / "voxfast.pt", _embeddings(tmp / "voxfast.pt", fx))
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_converted_model_gives_wespeakers_embeddings(name: str, converted: Callable[[str], Converted]) -> None:
    fx, summary, ckpt, embeddings = converted(name)
    assert summary.tensors == len(fx["keys"]) + (5 if name != "resnet34" else 0)  # + the identity mfa.bn
    saved = load_checkpoint(ckpt)
    assert saved["config"]["model"]["name"] == VOXFAST_MODEL[name]
    assert saved["config"]["model"]["frontend"] == "wespeaker_fbank"
    assert not any("projection" in k for k in saved["model"])  # the training head is dropped
    assert len(embeddings) == 2
    for n, emb in embeddings.items():
        ref = np.asarray(fx["embeddings"][str(n)])
        assert np.abs(_unit(emb) - ref).max() <= 1e-4, f"{name}, {n} samples"


def test_emb_bn_is_folded_into_the_embedding_layer(converted: Callable[[str], Converted], tmp_path: Path) -> None:
    """WeSpeaker's optional BatchNorm after ECAPA's embedding layer: the converted model computes bn2(embedding)."""
    fx, _, _, plain = converted("ecapa_c512")
    bn = seeded_state([(f"bn2.{leaf}", [192]) for leaf in ("weight", "bias", "running_mean", "running_var")], 7)
    config = {**fx["config"], "model_args": {**fx["config"]["model_args"], "emb_bn": True}}
    src = _write_source(tmp_path / "bn", {**_weights(fx), **bn, "bn2.num_batches_tracked": torch.tensor(3)}, config)
    summary = import_model("wespeaker", src, tmp_path / "bn.pt")
    assert any("emb_bn" in note for note in summary.notes)
    n = min(plain)
    folded = _embeddings(tmp_path / "bn.pt", fx, [n])[n]
    p = {k: v.double().numpy() for k, v in bn.items()}
    expected = (plain[n] - p["bn2.running_mean"]) / np.sqrt(p["bn2.running_var"] + 1e-5) * p["bn2.weight"]
    np.testing.assert_allclose(folded, expected + p["bn2.bias"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda w: w.pop("layer3.2.conv1.weight"), "1 missing: layer3.2.conv1.weight"),
        (lambda w: w.update({"layer5.0.conv1.weight": torch.zeros(3)}), "1 unexpected: layer5.0.conv1.weight"),
        (lambda w: w.update({"seg_1.weight": torch.zeros(256, 10)}), "seg_1.weight (256, 10) (expected (256, 5120))"),
    ],
    ids=["missing", "unexpected", "wrongly_shaped"],
)
def test_tensors_that_do_not_fit_are_named_and_nothing_is_written(change: Any, named: str, tmp_path: Path) -> None:
    fx = _fixture("resnet34")
    weights = _weights(fx)
    change(weights)
    src = _write_source(tmp_path / "exp", weights, fx["config"])
    with pytest.raises(VoxfastError, match=rf"does not match WeSpeaker's ResNet34.*{re.escape(named)}"):
        import_model("wespeaker", src, tmp_path / "voxfast.pt")
    assert not (tmp_path / "voxfast.pt").exists()


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (None, "model", "ResNet50", r"model: 'ResNet50' is not supported \(voxfast lacks bottleneck ResNets\); "
                                    r"supported: ResNet34, ECAPA_TDNN_GLOB_c512, ECAPA_TDNN_GLOB_c1024"),
        (None, "model", "CAMPPlus", r"model: 'CAMPPlus' is not supported; supported: ResNet34"),
        ("model_args", "pooling_func", "ASTP", r"model_args.pooling_func: 'ASTP' is not supported for ResNet34; "
                                               r"supported: TSTP"),
        ("model_args", "two_emb_layer", True, r"model_args.two_emb_layer: true is not supported"),
        ("model_args", "feat_dim", 0, r"model_args.feat_dim: 0 is not a positive integer"),
        ("fbank_args", "num_mel_bins", 64, r"dataset_args.fbank_args.num_mel_bins: 64 differs from "
                                           r"model_args.feat_dim 80"),
        ("fbank_args", "frame_shift", 12.5, r"dataset_args.fbank_args.frame_shift: 12.5 ms is not supported; "
                                            r"supported: 10"),
        ("dataset_args", "resample_rate", 8000, r"dataset_args.resample_rate: 8000 is not supported; "
                                                r"supported: 16000"),
        ("dataset_args", "frontend", "s3prl", r"dataset_args.frontend: 's3prl' is not supported; supported: fbank"),
        ("dataset_args", "cmvn_args", {"norm_var": True}, r"dataset_args.cmvn_args.norm_var: true is not supported"),
    ],
)
def test_config_settings_voxfast_cannot_reproduce_are_refused(section: str | None, key: str, value: Any,
                                                                message: str, tmp_path: Path) -> None:
    fx = _fixture("resnet34")
    config = json.loads(json.dumps(fx["config"]))
    target = {None: config, "model_args": config["model_args"], "dataset_args": config["dataset_args"],
              "fbank_args": config["dataset_args"]["fbank_args"]}[section]
    target[key] = value
    src = tmp_path / "exp"
    src.mkdir()
    torch.save({"conv1.weight": torch.zeros(1)}, src / "avg_model.pt")  # never read: the config fails first
    (src / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(VoxfastError, match=rf"config\.yaml: {message}"):
        import_model("wespeaker", src, tmp_path / "voxfast.pt")
    assert not (tmp_path / "voxfast.pt").exists()


def test_config_is_found_beside_the_checkpoint_or_given(tmp_path: Path) -> None:
    """The error names the config.yaml that was read (its model is refused, so no model is built)."""
    models = tmp_path / "exp" / "models"  # a WeSpeaker experiment folder: models/avg_model.pt, config.yaml above
    models.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1)}, models / "avg_model.pt")
    (tmp_path / "exp" / "config.yaml").write_text(yaml.safe_dump({"model": "ResNet50"}))
    with pytest.raises(VoxfastError, match=re.escape(f"{tmp_path / 'exp' / 'config.yaml'}: model: 'ResNet50'")):
        import_model("wespeaker", tmp_path / "exp", tmp_path / "a.pt")
    (tmp_path / "exp" / "config.yaml").rename(tmp_path / "elsewhere.yaml")
    with pytest.raises(VoxfastError, match=r"no config\.yaml beside it.*--config"):
        import_model("wespeaker", models / "avg_model.pt", tmp_path / "a.pt")
    with pytest.raises(VoxfastError, match=re.escape(f"{tmp_path / 'elsewhere.yaml'}: model: 'ResNet50'")):
        import_model("wespeaker", models / "avg_model.pt", tmp_path / "a.pt", config=tmp_path / "elsewhere.yaml")
    with pytest.raises(VoxfastError, match=r"no avg_model\.pt in it"):
        import_model("wespeaker", tmp_path, tmp_path / "a.pt")
