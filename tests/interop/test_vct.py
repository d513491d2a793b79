"""`voxfast import vct`: voxceleb_trainer's ResNetSE34L / ResNetSE34V2 reproduced, and every misfit refused.

The fixtures (tools/interop_fixture_vct.py) hold what voxceleb_trainer's own code embedded with seeded weights; the
weights are rebuilt here from the recorded keys and seed into a .model file as voxceleb_trainer writes it.
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

import voxfast
from voxfast.audio.frontends_vct import VctLogMel
from voxfast.errors import VoxfastError
from voxfast.interop import import_model
from voxfast.interop.common import seeded_state

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = {"resnetse34l": (40, "sap"), "resnetse34v2": (64, "asp")}
# (model, the STFT window its file carries) -> the front end the import must pick; Hann: the April 2020 ResNetSE34L
# that trained the published baseline_lite_ap.model
CASES = {("resnetse34l", "hamming"): "vct_logmel_nopreemph", ("resnetse34l", "hann"): "vct_logmel_hann_nopreemph",
         ("resnetse34v2", "hamming"): "vct_logmel"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One utterance at a time through a small model: one thread is as fast as several, and immune to the OpenMP
    spin-waits that make these tests 2-3x slower on a busy two-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def fixture(model: str) -> dict:
    return json.loads((FIXTURES / f"vct_{model}.json").read_text())


def wave(input_seed: int, n: int) -> np.ndarray:
    """The fixture tool's waveform."""
    return np.random.default_rng([input_seed, n]).standard_normal(n).astype(np.float32) * np.float32(0.1)


def vct_state(model: str, window: str = "hamming") -> dict[str, torch.Tensor]:
    """The fixture's weights as a .model file holds them: seeded tensors, the front end's own buffers (what
    torchaudio's MelSpectrogram and voxceleb_trainer's PreEmphasis hold), and a loss head the import must drop."""
    fix = fixture(model)
    state = seeded_state(fix["keys"], fix["seed"])
    n_mels = MODELS[model][0]
    for key in fix["constants"]:
        if key.endswith("spectrogram.window"):
            state[key] = {"hamming": torch.hamming_window, "hann": torch.hann_window}[window](400)
        elif key.endswith("mel_scale.fb"):
            state[key] = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, n_mels, 16000)
        else:
            assert key.endswith("flipped_filter"), key
            state[key] = torch.tensor([[[-0.97, 1.0]]])
    state["__L__.W"] = torch.randn(512, 7)
    return state


def save(state: object, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("model", "window"), list(CASES), ids=[f"{m}-{w}" for m, w in CASES])
def test_import_reproduces_voxceleb_trainer_embeddings(model, window, tmp_path):
    fix = fixture(model)
    assert fix["commit"].startswith("f51bab8")
    (tmp_path / "src").mkdir()
    save(vct_state(model, window), tmp_path / "src" / "baseline.model")
    summary = import_model("vct", tmp_path / "src", tmp_path / "out.pt")  # a folder with one .model
    assert summary.tensors == len(fix["keys"]) - len(fix["constants"]) + (model == "resnetse34l")  # + SAP's bias
    speaker = voxfast.load(tmp_path / "out.pt", device="cpu")
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    n_mels, pooling = MODELS[model]
    assert state["config"]["model"] == {"name": model, "n_mels": n_mels, "embed_dim": 512, "pooling": pooling,
                                        "frontend": CASES[model, window]}
    assert not any(k.startswith("head.") for k in state["model"])
    for n, ref in zip(fix["lengths"], fix["embeddings"][window], strict=True):
        ours = speaker.embed(wave(fix["input_seed"], n))
        diff = float(np.abs(ours - np.asarray(ref, dtype=np.float32)).max())
        assert diff <= 1e-4, f"{model} ({window} window), {n} samples: max |diff| {diff:.3g} against voxceleb_trainer"


@pytest.mark.parametrize(("pre_emphasis", "window"), [(True, "hamming"), (False, "hamming"), (False, "hann")],
                         ids=["v2", "34l", "34l-2020"])
def test_front_ends_are_torchaudio_melspectrogram_as_voxceleb_trainer_builds_it(pre_emphasis, window):
    n_mels = 64 if pre_emphasis else 40
    x = torch.from_numpy(wave(5, 16000 + 77))[None]
    ref = x
    if pre_emphasis:  # voxceleb_trainer's PreEmphasis: reflect padding, so x[-1] is x[1]
        padded = torch.nn.functional.pad(x[:, None], (1, 0), mode="reflect")[:, 0]
        ref = padded[:, 1:] - 0.97 * padded[:, :-1]
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160,
                                               window_fn=getattr(torch, f"{window}_window"), n_mels=n_mels)
    ref = torch.nn.InstanceNorm1d(n_mels)((mel(ref) + 1e-6).log())
    torch.testing.assert_close(VctLogMel(n_mels, pre_emphasis=pre_emphasis, window=window)(x), ref, rtol=0, atol=1e-4)


def _refused(tmp_path: Path, state: object, *names: str, config: str | None = None) -> None:
    src = save(state, tmp_path / "x.model")
    with pytest.raises(VoxfastError) as err:
        import_model("vct", src, tmp_path / "out.pt", config)
    for name in names:
        assert name in str(err.value), str(err.value)
    assert not (tmp_path / "out.pt").exists()


def test_missing_unexpected_and_wrongly_shaped_tensors_are_named(tmp_path):
    state = vct_state("resnetse34l")
    del state["__S__.layer2.0.conv1.weight"]
    state["__S__.layer2.0.extra"] = torch.zeros(3)
    state["__S__.layer3.1.conv2.weight"] = torch.zeros(64, 64, 3, 1)
    _refused(tmp_path, state, "1 missing: __S__.layer2.0.conv1.weight", "1 unexpected: __S__.layer2.0.extra",
             "__S__.layer3.1.conv2.weight (64, 64, 3, 1) (expected (64, 64, 3, 3))")


@pytest.mark.parametrize(
    ("change", "named"),
    [({"__S__.conv1.weight": torch.zeros(8, 1, 5, 5)}, "conv1.weight is (8, 1, 5, 5)"),
     ({"__S__.fc.weight": torch.zeros(512, 256)}, "ResNetSE34L with ASP"),
     ({"__S__.torchfb.mel_scale.fb": torchaudio.functional.melscale_fbanks(257, 20.0, 8000.0, 40, 16000)},
      "__S__.torchfb.mel_scale.fb differs"),
     ({"__S__.torchfb.spectrogram.window": torch.hann_window(400, periodic=False)},
      "the STFT window __S__.torchfb.spectrogram.window (400,) is not"),
     ({"stray": torch.zeros(1)}, "stray")],
    ids=["other-model", "other-encoder", "other-mel-banks", "other-window", "outside-speakernet"],
)
def test_other_models_encoders_and_features_are_refused(tmp_path, change, named):
    _refused(tmp_path, {**vct_state("resnetse34l"), **change}, named)


@pytest.mark.parametrize(
    ("state", "named"),
    [([torch.zeros(3)], "holds a list"), ({"epoch": 3, "lr": 0.1}, "not a voxceleb_trainer model state dict"),
     ({"conv.weight": torch.zeros(3)}, "no '__S__.' tensors")],
    ids=["list", "no-tensors", "other-tensors"],
)
def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path, state, named):
    _refused(tmp_path, state, named)


def test_newer_save_format_and_config_checks(tmp_path):
    """trainSpeakerNet's {"model_state_dict", "optimizer_state_dict", ...} file imports; --config only checks."""
    wrapped = {"model_state_dict": vct_state("resnetse34l"), "optimizer_state_dict": {"state": {}, "param_groups": []},
               "epoch": 7}
    src = save(wrapped, tmp_path / "new.model")
    (tmp_path / "ap.yaml").write_text("model: ResNetSE34L\nlog_input: True\nencoder_type: SAP\nnOut: 512\n")
    summary = import_model("vct", src, tmp_path / "a.pt", tmp_path / "ap.yaml")
    assert summary.description.startswith("voxceleb_trainer ResNetSE34L (new.model: encoder SAP, n_mels 40, nOut 512")
    _refused(tmp_path, wrapped, "holds ResNetSE34L", config="resnetse34v2")
    (tmp_path / "v2.yaml").write_text("model: ResNetSE34V2\nn_mels: 64\n")
    _refused(tmp_path, wrapped, "model 'ResNetSE34V2'", "n_mels 64", config=str(tmp_path / "v2.yaml"))
