import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from voxfast.audio.features import KaldiFbank, LogMel, crop_samples


@pytest.mark.parametrize("window", ["povey", "hamming"])
def test_batched_kaldi_fbank_matches_torchaudio_per_utterance(window):
    torch.manual_seed(0)
    wave = torch.randn(3, crop_samples(120)) * torch.tensor([[0.05], [0.2], [0.5]])
    ours = KaldiFbank(80, window=window)(wave)
    assert ours.shape == (3, 80, 120)  # frames*160+240 samples give exactly `frames` frames
    for i in range(3):
        ref = kaldi.fbank(wave[i : i + 1] * 32768, num_mel_bins=80, window_type=window, dither=0.0)
        ref = ref - ref.mean(dim=0, keepdim=True)  # WeSpeaker's CMN
        torch.testing.assert_close(ours[i], ref.T, rtol=0, atol=5e-4)


def test_kaldi_fbank_rejects_unknown_windows():
    with pytest.raises(ValueError, match="available: povey, hamming"):
        KaldiFbank(window="blackman")


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _logmel_reference(x, n_mels):
    """voxceleb_trainer's front end in float64 numpy, from the definitions."""
    x = np.concatenate([[x[0] * 0.03], x[1:] - 0.97 * x[:-1]])  # pre-emphasis with x[-1] = x[0]
    padded = np.pad(x, 256, mode="reflect")  # centred STFT
    n = np.arange(400)
    window = np.zeros(512)
    window[56:456] = 0.54 - 0.46 * np.cos(2 * np.pi * n / 400)  # periodic Hamming, centred in 512
    frames = np.stack([padded[t * 160 : t * 160 + 512] for t in range(1 + len(x) // 160)])
    power = np.abs(np.fft.rfft(frames * window, 512)) ** 2  # (F, 257)
    freqs = np.linspace(0, 8000, 257)
    f_pts = _mel_to_hz(np.linspace(_hz_to_mel(20.0), _hz_to_mel(8000.0), n_mels + 2))
    down = (freqs[:, None] - f_pts[None, :-2]) / (f_pts[1:-1] - f_pts[:-2])
    up = (f_pts[None, 2:] - freqs[:, None]) / (f_pts[2:] - f_pts[1:-1])
    banks = np.maximum(0.0, np.minimum(down, up))  # (257, n_mels) triangles
    logmel = np.log(power @ banks + 1e-6).T  # (n_mels, F)
    return (logmel - logmel.mean(1, keepdims=True)) / np.sqrt(logmel.var(1, keepdims=True) + 1e-5)


@pytest.mark.parametrize("n_mels", [40, 64])
def test_logmel_matches_a_float64_reference(n_mels):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(crop_samples(60)) * 0.1
    ours = LogMel(n_mels)(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    ref = _logmel_reference(x, n_mels)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-3)


def test_front_ends_stay_float32_under_autocast():
    wave = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert LogMel(40)(wave).dtype == torch.float32
        assert KaldiFbank(80)(wave).dtype == torch.float32


@pytest.mark.parametrize("front", [LogMel(40), KaldiFbank(80)], ids=["logmel", "fbank"])
def test_conv_dft_mode_for_onnx_gives_the_same_features(front):
    wave = torch.randn(2, crop_samples(30)) * 0.1
    fft = front(wave)
    front.power.matrix_dft = True
    try:
        torch.testing.assert_close(front(wave), fft, rtol=0, atol=2e-3)
    finally:
        front.power.matrix_dft = False
