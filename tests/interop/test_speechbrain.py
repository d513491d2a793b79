"""`voxfast import speechbrain`: spkrec-ecapa-voxceleb's embedding_model.ckpt + hyperparams.yaml -> ecapa_tdnn_sb.

The reference is SpeechBrain itself (the `interop` extra): its EncoderClassifier built from the very
hyperparams.yaml the import reads, holding seeded weights (nothing is downloaded). Skipped without speechbrain.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from voxfast.audio.frontends_speechbrain import SpeechBrainFbank
from voxfast.errors import VoxfastError
from voxfast.interop import import_model
from voxfast.interop.common import seeded_state
from voxfast.interop.speechbrain import convert
from voxfast.tasks.speaker import load_embedder

pytestmark = pytest.mark.skipif(importlib.util.find_spec("speechbrain") is None,
                                reason="the reference needs the interop extra: pip install 'voxfast[interop]'")


@pytest.fixture(scope="module")
def sb():
    """SpeechBrain, imported when these tests run rather than at collection, and its lazy placeholders that never
    loaded (optional integrations such as k2) dropped from sys.modules afterwards: hypothesis scans sys.modules for
    constants, and touching such a placeholder raises ImportError inside the hypothesis tests."""
    from hyperpyyaml import load_hyperpyyaml  # installed with speechbrain
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization
    from speechbrain.utils.importutils import LazyModule

    yield {"load_hyperpyyaml": load_hyperpyyaml, "EncoderClassifier": EncoderClassifier, "Fbank": Fbank,
           "InputNormalization": InputNormalization}
    for name, module in list(sys.modules.items()):
        if isinstance(module, LazyModule) and module.lazy_module is None:
            del sys.modules[name]

SEED = 16
LENGTHS = (16000, 37913)  # 101 and 237 frames: one second, and a length no hop divides

# The fields of speechbrain/spkrec-ecapa-voxceleb's hyperparams.yaml that decide the embedding, as published
# (!ref included); the classifier and the embedding normaliser are there too, as in the published file.
HYPERPARAMS = """\
sample_rate: 16000
n_mels: 80
out_n_neurons: 7205

compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
    sample_rate: !ref <sample_rate>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [1024, 1024, 1024, 1024, 3072]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 192

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 192
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>
"""


def _waves(length: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    """Noise under a few harmonics at speech-like levels, with a silent stretch (SpeechBrain's amin / top_db)."""
    g = torch.Generator().manual_seed(seed + length)
    t = torch.arange(length) / 16000.0
    f0 = 100.0 + 150.0 * torch.rand(n, 1, generator=g)
    voiced = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 6))
    wave = 0.05 * voiced + 0.02 * torch.randn(n, length, generator=g)
    wave[:, length // 3 : length // 3 + 800] = 0.0
    return wave * (0.3 + torch.rand(n, 1, generator=g))


@pytest.fixture(scope="module")
def published(sb, tmp_path_factory):
    """A spkrec-ecapa-voxceleb folder (seeded embedding_model.ckpt, hyperparams.yaml) and SpeechBrain's classifier."""
    folder = tmp_path_factory.mktemp("spkrec-ecapa-voxceleb")
    (folder / "hyperparams.yaml").write_text(HYPERPARAMS)
    hparams = sb["load_hyperpyyaml"](HYPERPARAMS)  # what SpeechBrain itself builds from the file
    model = hparams["embedding_model"]
    shapes = [(k, v.shape) for k, v in model.state_dict().items()]
    model.load_state_dict(seeded_state(shapes, SEED))
    torch.save(model.state_dict(), folder / "embedding_model.ckpt")
    classifier = sb["EncoderClassifier"](modules=hparams["modules"], hparams=hparams)  # eval mode, as from_hparams
    return folder, classifier, dict(model.state_dict())


@pytest.fixture(scope="module")
def imported(published, tmp_path_factory):
    folder = published[0]
    out = tmp_path_factory.mktemp("imported") / "sb.pt"
    summary = import_model("speechbrain", folder, out)
    embedder, cfg = load_embedder(out, torch.device("cpu"))
    return summary, embedder, cfg


def test_import_reproduces_speechbrain_embeddings(published, imported):
    classifier = published[1]
    summary, embedder, cfg = imported
    assert (cfg.model.name, cfg.model.frontend, cfg.model.n_mels, cfg.model.embed_dim, cfg.data.sample_rate) == (
        "ecapa_tdnn_sb", "speechbrain_fbank", 80, 192, 16000)
    sb_params = sum(p.numel() for p in classifier.mods.embedding_model.parameters())
    assert summary.parameters == sb_params == 20_767_552  # the published model's 20.8 M
    assert summary.tensors == len(classifier.mods.embedding_model.state_dict())
    for length in LENGTHS:
        wave = _waves(length)
        with torch.inference_mode():
            ref = classifier.encode_batch(wave)[:, 0]  # Fbank -> InputNormalization(sentence) -> ECAPA_TDNN
            ours = embedder(wave)
        diff = (torch.nn.functional.normalize(ours, dim=1) - torch.nn.functional.normalize(ref, dim=1)).abs().max()
        assert diff <= 1e-4, (length, float(diff))


def test_front_end_matches_speechbrain_fbank_and_sentence_norm(sb):
    """Absolute tolerance: features are decibels (tens of dB) around a zero mean, so relative error means nothing
    near zero; 1e-4 dB is far below anything a model resolves."""
    fbank, norm = sb["Fbank"](n_mels=80), sb["InputNormalization"](norm_type="sentence", std_norm=False)
    ours = SpeechBrainFbank(80)
    for length in (*LENGTHS, 401):
        wave = _waves(length, n=3, seed=1)
        ref = norm(fbank(wave), torch.ones(3)).transpose(1, 2)  # (B, n_mels, frames)
        got = ours(wave)
        assert got.shape == ref.shape == (3, 80, 1 + length // 160)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def _checkpoint(state: dict[str, torch.Tensor], tmp_path: Path, change) -> Path:
    state = dict(state)
    change(state)
    torch.save(state, tmp_path / "embedding_model.ckpt")
    (tmp_path / "hyperparams.yaml").write_text(HYPERPARAMS)
    return tmp_path


@pytest.mark.parametrize(("change", "named"), [
    (lambda s: s.pop("asp.conv.conv.bias"), "1 missing: asp.conv.conv.bias"),
    (lambda s: s.update({"classifier.weight": torch.zeros(7205, 192)}), "1 unexpected: classifier.weight"),
    (lambda s: s.update({"fc.conv.weight": torch.zeros(256, 6144, 1)}),
     "1 wrongly shaped: fc.conv.weight (256, 6144, 1) (expected (192, 6144, 1))"),
], ids=["missing", "unexpected", "shape"])
def test_missing_unexpected_and_wrongly_shaped_tensors_are_named(published, tmp_path, change, named):
    src = _checkpoint(published[2], tmp_path, change)
    out = tmp_path / "out" / "sb.pt"
    with pytest.raises(VoxfastError, match=re.escape(named) + ".*nothing was written"):
        import_model("speechbrain", src, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize(("edit", "named"), [
    (("std_norm: False", "std_norm: True"), "mean_var_norm.std_norm is True"),
    (("norm_type: sentence", "norm_type: global"), "mean_var_norm.norm_type is 'global'"),
    (("channels: [1024, 1024, 1024, 1024, 3072]", "channels: [512, 512, 512, 512, 1536]"),
     "embedding_model.channels is"),
    (("attention_channels: 128", "attention_channels: 64"), "embedding_model.attention_channels is 64"),
    (("lin_neurons: 192", "lin_neurons: 192\n    activation: !name:torch.nn.LeakyReLU"),
     "embedding_model.activation"),
    (("sample_rate: !ref <sample_rate>", "sample_rate: !ref <sample_rate>\n    deltas: True"),
     "compute_features.deltas is True"),
    (("sample_rate: !ref <sample_rate>", "sample_rate: !ref <sample_rate>\n    n_fft: 512"),
     "compute_features.n_fft is 512"),
    (("sample_rate: !ref <sample_rate>", "sample_rate: !ref <sample_rate>\n    f_max: 7600"),
     "compute_features.f_max is 7600"),
    (("std_norm: False", "std_norm: False\n    new_option: 3"), "mean_var_norm.new_option: not an argument"),
    (("input_size: !ref <n_mels>", "input_size: 40"), "embedding_model.input_size is 40"),
    (("input_size: !ref <n_mels>", "input_size: !ref <n_mels> * 2"), "embedding_model.input_size is !ref"),
    (("!new:speechbrain.lobes.features.Fbank", "!new:speechbrain.lobes.features.MFCC"),
     "compute_features is !new:speechbrain.lobes.features.MFCC"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_settings_voxfast_cannot_reproduce_are_refused_by_key(published, tmp_path, edit, named):
    old, new = edit
    assert old in HYPERPARAMS
    config = tmp_path / "hyperparams.yaml"
    config.write_text(HYPERPARAMS.replace(old, new, 1))
    out = tmp_path / "sb.pt"
    with pytest.raises(VoxfastError, match=re.escape(named)):
        import_model("speechbrain", published[0] / "embedding_model.ckpt", out, config)
    assert not out.exists()


def test_spelled_out_defaults_and_the_published_activation_are_accepted(published, tmp_path):
    explicit = HYPERPARAMS.replace("    sample_rate: !ref <sample_rate>\n", "    sample_rate: !ref <sample_rate>\n"
                                   "    f_min: 0\n    f_max: 8000\n    n_fft: 400\n    win_length: 25.0\n"
                                   "    hop_length: 10\n    filter_shape: triangular\n    deltas: False\n")
    explicit = explicit.replace("    lin_neurons: 192\n", "    lin_neurons: 192\n    activation: !name:torch.nn.ReLU\n"
                                "    res2net_scale: 8\n    se_channels: 128\n    global_context: True\n"
                                "    dropout: 0.1\n")
    assert explicit.count("f_max: 8000") == explicit.count("activation: !name") == 1
    config = tmp_path / "explicit.yaml"
    config.write_text(explicit)
    imported = convert(published[0], config)
    assert (imported.config.model.n_mels, imported.config.model.embed_dim) == (80, 192)
    assert imported.files == [published[0] / "embedding_model.ckpt", config]
    assert len(imported.notes) == 1 and "dropout 0.1" in imported.notes[0]


def test_hyperparams_are_needed_and_a_folder_needs_the_checkpoint(tmp_path):
    lone = tmp_path / "embedding_model.ckpt"
    lone.write_bytes(b"")  # never read: the missing hyperparams.yaml is found first
    with pytest.raises(VoxfastError, match=r"hyperparams\.yaml: not found.*--config"):
        import_model("speechbrain", lone, tmp_path / "a.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VoxfastError, match=r"no embedding_model\.ckpt in this folder"):
        import_model("speechbrain", empty, tmp_path / "b.pt")
