"""Input validation of the Python API and extraction: bad arrays, rates, paths and devices fail with a VoxfastError
that says what is wrong, and very short audio is repeat-padded instead of failing (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import voxfast
from voxfast.config import config_to_dict, load_config
from voxfast.errors import AudioLoadError, VoxfastError
from voxfast.eval.embeddings import (
    MIN_SAMPLES,
    Batching,
    check_sample_rate,
    check_waveform,
    extract_embeddings,
    extract_to_file,
    load_embeddings,
)
from voxfast.models.registry import available_models, create_model
from voxfast.runtime import resolve_device
from voxfast.tasks.speaker import build_embedder
from voxfast.train.checkpoint import save_checkpoint

CPU = torch.device("cpu")
EMBED_DIM = 32


def _voice(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    phase = 2 * np.pi * np.cumsum(np.full(n, rng.uniform(90, 250))) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.1 * wave + 0.005 * rng.standard_normal(n)).astype(np.float32)


def _checkpoint(path, config: str = "small"):
    """A speaker checkpoint as `voxfast train` writes one (config, task, embedder weights), without training."""
    cfg = load_config(config, [f"model.embed_dim={EMBED_DIM}"])
    torch.manual_seed(0)
    embedder = build_embedder(cfg)
    save_checkpoint({"config": config_to_dict(cfg), "task": "speaker",
                     "model": {f"embedder.{k}": v for k, v in embedder.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return voxfast.load(_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), device="cpu")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """Three normal utterances (1-1.5 s) with a 100-sample one among them."""
    root = tmp_path_factory.mktemp("wavs")
    paths = []
    for i, n in enumerate([16000, 100, 24000, 20000]):
        path = root / f"utt{i}.wav"
        sf.write(path, _voice(n, i), 16000, subtype="PCM_16")
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(("wave", "message"), [
    (np.array(["0.1", "0.2"]), "got an array of strings"),
    (np.array([1.0 + 1j, 0.5j]), "got an array of complex numbers"),
    (np.array([0.1, "a", None], dtype=object), "got an array of Python objects"),
    (np.array([0.1, np.nan, 0.2], np.float32), r"1 of 3 samples are NaN or infinite \(first at index 1\)"),
    (np.array([0.1, 0.2, np.inf, -np.inf]), r"2 of 4 samples are NaN or infinite \(first at index 2\)"),
    (np.zeros(0, np.float32), r"expected a non-empty 1-D waveform, got an array of shape \(0,\)"),
    (np.zeros((2, 16000), np.float32), r"shape \(2, 16000\) \(average the channels to mono first\)"),
], ids=["str", "complex", "object", "nan", "inf", "empty", "2d"])
def test_embed_rejects_arrays_that_are_not_a_finite_real_waveform(model, wave, message):
    with pytest.raises(VoxfastError, match=message):
        model.embed(wave)


def test_a_bad_array_in_a_list_is_named_by_its_position(model):
    with pytest.raises(VoxfastError, match=r"audio\[1\]: .*NaN"):
        model.embed([_voice(8000, 0), np.full(8000, np.nan, np.float32)])


def test_check_waveform_gives_float32_and_reads_int16_as_pcm():
    assert check_waveform(np.arange(5, dtype=np.float64)).dtype == np.float32
    np.testing.assert_array_equal(check_waveform(np.array([-32768, 16384], np.int16)), [-1.0, 0.5])
    assert check_waveform(torch.ones(3, dtype=torch.bfloat16)).dtype == np.float32
    with pytest.raises(VoxfastError, match="complex"):
        check_waveform(torch.ones(3, dtype=torch.complex64))


@pytest.mark.parametrize("sr", [0, -1, 1.5, "16000", True, 16000.0], ids=repr)
def test_sample_rates_must_be_positive_integers(model, sr):
    with pytest.raises(VoxfastError, match=r"sr must be a positive integer sample rate in Hz, got"):
        model.embed(_voice(8000, 0), sr=sr)


def test_an_integer_sample_rate_of_any_integer_type_is_accepted():
    assert check_sample_rate(np.int64(8000)) == 8000 and type(check_sample_rate(np.int32(16000))) is int


def test_extraction_rejects_a_bad_sample_rate_before_writing_anything(model, wavs, tmp_path):
    with pytest.raises(VoxfastError, match="sample_rate must be a positive integer"):
        extract_embeddings(model.embedder, wavs, CPU, sample_rate=0)
    with pytest.raises(VoxfastError, match="sample_rate must be a positive integer"):
        extract_to_file(model.embedder, ["a"], wavs[:1], tmp_path / "e.npz", CPU, Batching(), sample_rate="16000")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------- short audio


@pytest.mark.parametrize("name", available_models("speaker"))
def test_every_registered_embedder_takes_the_minimum_length(name):
    torch.manual_seed(0)
    net = create_model(name, n_mels=40).eval()  # the time axis, not the mel count, sets the minimum
    with torch.inference_mode():
        emb = net(torch.from_numpy(_voice(MIN_SAMPLES, 1))[None])
    assert torch.isfinite(emb).all() and emb.norm() > 0


@pytest.mark.parametrize("config", ["small", "voxceleb/ecapa_tdnn"])  # log-mel and Kaldi fbank front ends
def test_a_100_sample_waveform_embeds_to_a_finite_unit_vector(tmp_path, config):
    model = voxfast.load(_checkpoint(tmp_path / "m.pt", config), device="cpu")
    emb = model.embed(_voice(100, 0))
    assert emb.shape == (EMBED_DIM,) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(model.embed(_voice(100, 0), sr=8000)).all()  # 200 samples after resampling, still padded


def test_extraction_pads_a_100_sample_file_among_normal_ones(model, wavs, tmp_path):
    emb = extract_embeddings(model.embedder, wavs, CPU)
    assert emb.shape == (len(wavs), EMBED_DIM) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[1], model.embed(wavs[1]), atol=1e-5)  # padded the same way as embed()
    ids = [f"u{i}" for i in range(len(wavs))]
    for mode in ("full", "crops"):
        summary = extract_to_file(model.embedder, ids, wavs, tmp_path / f"{mode}.npz", CPU,
                                  Batching(mode, crops=2, crop_samples=8000))
        assert summary.written == len(wavs) and not summary.skipped
        assert load_embeddings(tmp_path / f"{mode}.npz")[0] == ids


# ------------------------------------------------------------------------------------------------- files


def test_a_missing_file_says_not_found_and_names_it(model, wavs, tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioLoadError, match=rf"{missing}: file not found"):
        model.embed(missing)
    with pytest.raises(AudioLoadError, match="file not found"):
        extract_embeddings(model.embedder, [wavs[0], str(missing)], CPU)


def test_a_garbage_wav_is_an_audio_load_error_naming_the_file(model, wavs, tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioLoadError, match=rf"cannot read audio {garbage}"):
        model.embed(str(garbage))
    summary = extract_to_file(model.embedder, ["a", "g", "b"], [wavs[0], str(garbage), wavs[2]],
                              tmp_path / "e.npz", CPU, Batching())
    assert summary.written == 2 and [p for p, _ in summary.skipped] == [str(garbage)]
    assert str(garbage) in summary.skipped[0][1]


# ------------------------------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so_and_how_to_fix_it():
    with pytest.raises(VoxfastError, match=r"device 'cuda' is not available: .*use device='cpu' or 'auto'"):
        resolve_device("cuda")
    with pytest.raises(VoxfastError, match=r"device 'cuda:0' is not available"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == CPU and resolve_device("auto", local_rank=1) == CPU


@pytest.mark.parametrize("name", ["gpu7", "cuda:-1", "", "cuda:x"])
def test_an_invalid_device_string_is_named_with_the_choices(name):
    with pytest.raises(VoxfastError, match=rf"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(name)


def test_load_checks_the_device_before_reading_the_checkpoint(tmp_path):
    with pytest.raises(VoxfastError, match="unknown device 'gpu7'"):
        voxfast.load(tmp_path / "not-even-there.pt", device="gpu7")


def test_cuda_indices_past_the_visible_gpus_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cpu", local_rank=1) == CPU
    with pytest.raises(VoxfastError, match=r"'cuda:2' is not available: .*2 GPU\(s\).*use cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(VoxfastError, match=r"'cuda' is not available: .*--nproc-per-node at most 2"):
        resolve_device("cuda", local_rank=3)
