import re

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from voxfast.audio.augment import (
    BABBLE,
    KINDS,
    MAX_BABBLE,
    MUSIC,
    NOISE,
    NONE,
    REVERB,
    AugmentSpec,
    DeviceBank,
    NoiseBank,
    Plan,
    add_noise,
    augment_batch,
    augment_numpy,
    draw_plan,
    fft_size,
    reverberate,
    reverberate_rows,
    stack_plans,
)
from voxfast.config import AugmentConfig
from voxfast.errors import AudioLoadError, ConfigError, VoxfastError

L = 4000  # crop length of the agreement tests: small, so the file stays fast


def _waves(rng, lengths):
    return [(rng.standard_normal(n) * rng.uniform(0.05, 1.0)).astype(np.float32) for n in lengths]


def _rir(rng, n):
    return (rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 5))).astype(np.float32)


@pytest.fixture(scope="module")
def bank():
    rng = np.random.default_rng(7)
    return NoiseBank.from_arrays(
        noise=_waves(rng, [1500, 4000, 9000, 12000]),  # 1500 < L wraps, 4000 == L
        speech=_waves(rng, [2500, 7000, 20000, 3999, 11000, 600, 8000, 15000]),
        music=_waves(rng, [30000, 3000, 16000]),
        rirs=[_rir(rng, n) for n in (300, 1200, 5000)],  # 5000 > L
    )


def _one_hot(kind):
    return AugmentSpec(mix=tuple(float(k == kind) for k in range(len(KINDS))))


def _snr_db(x, y):
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return 10 * np.log10(np.mean(x64**2) / np.mean((y64 - x64) ** 2))


# ------------------------------------------------------------------------------------------ reverb


@pytest.mark.parametrize(("n_x", "n_h"), [(4000, 800), (3000, 5000), (32240, 8000)])
def test_reverberate_equals_linear_convolution_with_unit_energy_rir(n_x, n_h):
    rng = np.random.default_rng(n_x + n_h)
    x, h = rng.standard_normal(n_x).astype(np.float32), _rir(rng, n_h) * 3.0
    h64 = h.astype(np.float64)
    ref = scipy.signal.convolve(x.astype(np.float64), h64 / np.sqrt(np.sum(h64**2)), mode="full")[:n_x]
    y = reverberate(x, h)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_reverberate_tail_of_a_late_sound_does_not_wrap_to_the_start():
    rng = np.random.default_rng(1)
    x = np.zeros(3000, np.float32)
    x[-10] = 1.0
    h = _rir(rng, 2000)
    y = reverberate(x, h)
    h_unit = h / np.sqrt(np.sum(h.astype(np.float64) ** 2))
    assert np.max(np.abs(y[:-10])) < 1e-6  # a circular convolution would put h[10:] here
    np.testing.assert_allclose(y[-10:], h_unit[:10], atol=1e-6)


def test_fft_size_is_a_two_heavy_length_at_least_n():
    for n in (1, 7, 17, 37039, 40239, 48239, 65537):
        size = fft_size(n)
        odd = size
        while odd % 2 == 0:
            odd //= 2
        assert n <= size <= 1.2 * n + 2 and odd in (1, 3, 5, 9, 15, 25)
    assert fft_size(40239) == 40960


# ------------------------------------------------------------------------------------------ noise


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 15.0, 20.0])
def test_add_noise_achieves_the_target_snr(snr):
    rng = np.random.default_rng(int(snr) + 10)
    x = (rng.standard_normal(32240) * np.sin(np.linspace(0, 20, 32240)) ** 2 * 0.3).astype(np.float32)
    noise = (rng.standard_normal(32240) * 2.0 + 0.5).astype(np.float32)
    y = add_noise(x, [noise], [snr])
    assert y.dtype == np.float32
    assert abs(_snr_db(x, y) - snr) < 0.05


def test_babble_scales_each_voice_to_its_own_snr_against_the_clean_crop():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(32240) * 0.2).astype(np.float32)
    voices = _waves(rng, [32240] * 5)
    snrs = [13.0, 14.5, 16.0, 18.2, 20.0]
    x_before = x.copy()
    y = add_noise(x, voices, snrs)
    np.testing.assert_array_equal(x, x_before)  # the input crop is not modified
    singles = [add_noise(x, [v], [s]) - x for v, s in zip(voices, snrs, strict=True)]
    for part, snr in zip(singles, snrs, strict=True):
        assert abs(_snr_db(x, x + part) - snr) < 0.05
    np.testing.assert_allclose(y - x, np.sum(singles, axis=0), atol=1e-5)


def test_noise_crop_wraps_short_files_and_late_starts(bank):
    for category, index, start in (("noise", 0, 0), ("noise", 2, 8990), ("music", 0, 100), ("speech", 5, 599)):
        wave = bank.categories[category][index]
        ref = wave[(start + np.arange(L)) % len(wave)]
        np.testing.assert_array_equal(bank.crop(category, index, start, L), ref)


# ------------------------------------------------------------------------------------------ plans


def test_kinds_follow_the_mix_and_a_zero_weight_is_never_drawn(bank):
    spec = AugmentSpec(mix=(1.0, 4.0, 0.0, 3.0, 2.0))
    rng = np.random.default_rng(0)
    kinds = np.array([spec.draw_kind(rng) for _ in range(20000)])
    freq = np.bincount(kinds, minlength=len(KINDS)) / len(kinds)
    assert freq[MUSIC] == 0
    np.testing.assert_allclose(freq, spec.mix, atol=0.01)
    plans = [draw_plan(rng, spec, bank, L) for _ in range(2000)]
    freq = np.bincount([p.kind for p in plans], minlength=len(KINDS)) / len(plans)
    assert freq[MUSIC] == 0
    np.testing.assert_allclose(freq, spec.mix, atol=0.03)


def test_plan_draws_stay_in_their_ranges(bank):
    spec = AugmentSpec(babble_count=(2, 6))
    rng = np.random.default_rng(1)
    for plan in (draw_plan(rng, spec, bank, L) for _ in range(1500)):
        assert plan.noise_idx.dtype == plan.noise_start.dtype == np.int64 and plan.snr.dtype == np.float32
        n = plan.n_noise
        assert n == {NONE: 0, REVERB: 0, MUSIC: 1, NOISE: 1}.get(plan.kind, n)
        assert 0 <= plan.rir < len(bank.rirs) and (plan.kind == REVERB or plan.rir == 0)
        assert not plan.noise_idx[n:].any() and not plan.noise_start[n:].any() and not plan.snr[n:].any()
        if n == 0:
            continue
        if plan.kind == BABBLE:
            assert 2 <= n <= 6 and len(set(plan.noise_idx[:n])) == n  # distinct voices
        lo, hi = spec.snr_range(plan.kind)
        assert np.all((lo <= plan.snr[:n]) & (plan.snr[:n] <= hi))
        lengths = bank.lengths({MUSIC: "music", BABBLE: "speech", NOISE: "noise"}[plan.kind])
        idx = plan.noise_idx[:n]
        assert np.all((idx >= 0) & (idx < len(lengths)))
        assert np.all((plan.noise_start[:n] >= 0) & (plan.noise_start[:n] <= np.maximum(lengths[idx] - L, 0)))


def test_same_seed_gives_the_same_plans(bank):
    spec = AugmentSpec()
    first = [draw_plan(np.random.default_rng(s), spec, bank, L) for s in range(50)]
    again = [draw_plan(np.random.default_rng(s), spec, bank, L) for s in range(50)]
    for a, b in zip(first, again, strict=True):
        assert (a.kind, a.rir, a.n_noise) == (b.kind, b.rir, b.n_noise)
        for name in ("noise_idx", "noise_start", "snr"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert len({p.kind for p in first}) > 1


def test_spec_from_config_normalises_the_mix_and_rejects_impossible_settings():
    spec = AugmentSpec.from_config(AugmentConfig(mix=(2.0, 2.0, 0.0, 0.0, 4.0), babble_count=(4, 5)))
    assert spec.mix == (0.25, 0.25, 0.0, 0.0, 0.5) and spec.babble_count == (4, 5)
    for bad in ({"mix": (0.0,) * 5}, {"mix": (1.0, -1.0, 1.0, 1.0, 1.0)}, {"mix": (1.0, 1.0)},
                {"noise_snr": (10.0, 5.0)}, {"babble_count": (3, MAX_BABBLE + 1)}, {"babble_count": (0, 2)}):
        with pytest.raises(ConfigError, match="augment"):
            AugmentSpec(**bad)


def test_a_drawn_kind_with_an_empty_category_is_a_user_error():
    empty = NoiseBank.from_arrays(noise=[np.ones(100, np.float32)])
    with pytest.raises(VoxfastError, match="music"):
        draw_plan(np.random.default_rng(0), _one_hot(MUSIC), empty, L)
    with pytest.raises(VoxfastError, match="rir_dir"):
        draw_plan(np.random.default_rng(0), _one_hot(REVERB), empty, L)


def test_stack_plans_makes_fixed_size_batch_arrays(bank):
    rng = np.random.default_rng(2)
    stacked = stack_plans([draw_plan(rng, AugmentSpec(), bank, L) for _ in range(5)])
    assert {k: (tuple(v.shape), v.dtype) for k, v in stacked.items()} == {
        "kind": ((5,), np.int64), "rir": ((5,), np.int64), "n_noise": ((5,), np.int64),
        "noise_idx": ((5, MAX_BABBLE), np.int64), "noise_start": ((5, MAX_BABBLE), np.int64),
        "snr": ((5, MAX_BABBLE), np.float32),
    }


# ------------------------------------------------------------------------------------------ two paths agree


def _batch_plans(bank, rng, num_samples):
    """16 plans covering every kind, plus late starts that wrap past the end of long files."""
    plans = [draw_plan(rng, _one_hot(i % len(KINDS)), bank, num_samples) for i in range(14)]
    late = Plan(NOISE, n_noise=1)
    late.noise_idx[0], late.noise_start[0], late.snr[0] = 3, 11900, 3.0
    babble = Plan(BABBLE, n_noise=MAX_BABBLE)
    babble.noise_idx[:] = np.arange(MAX_BABBLE)
    babble.noise_start[:] = [2400, 6990, 100, 0, 10999, 599, 7000]
    babble.snr[:] = np.linspace(13, 20, MAX_BABBLE)
    return [*plans, late, babble]


@pytest.mark.parametrize("num_samples", [L, 2500])
def test_numpy_and_batched_paths_agree(bank, num_samples):
    rng = np.random.default_rng(5)
    plans = _batch_plans(bank, rng, num_samples)
    wave = (rng.standard_normal((len(plans), num_samples)) * rng.uniform(0.1, 1, (len(plans), 1))).astype(np.float32)
    ref = np.stack([augment_numpy(w, p, bank) for w, p in zip(wave, plans, strict=True)])
    device_bank = DeviceBank(bank, "cpu")
    out = augment_batch(torch.from_numpy(wave), stack_plans(plans), device_bank)
    assert out.dtype == torch.float32 and out.shape == wave.shape
    assert torch.max(torch.abs(out - torch.from_numpy(ref))) <= 1e-4 * np.max(np.abs(ref))
    np.testing.assert_array_equal(out.numpy()[[p.kind == NONE for p in plans]], wave[[p.kind == NONE for p in plans]])


def test_float16_device_bank_stays_close(bank):
    rng = np.random.default_rng(9)
    plans = _batch_plans(bank, rng, L)
    wave = rng.standard_normal((len(plans), L)).astype(np.float32)
    ref = np.stack([augment_numpy(w, p, bank) for w, p in zip(wave, plans, strict=True)])
    out = augment_batch(torch.from_numpy(wave), stack_plans(plans), DeviceBank(bank, "cpu", dtype=torch.float16))
    assert out.dtype == torch.float32
    assert torch.max(torch.abs(out - torch.from_numpy(ref))) <= 2e-3 * np.max(np.abs(ref))


def test_batched_path_rebuilds_its_layout_when_the_crop_length_changes(bank):
    rng = np.random.default_rng(6)
    device_bank = DeviceBank(bank, "cpu")
    for n in (L, 1800, L):
        plans = _batch_plans(bank, rng, n)[:14]
        wave = rng.standard_normal((len(plans), n)).astype(np.float32)
        ref = np.stack([augment_numpy(w, p, bank) for w, p in zip(wave, plans, strict=True)])
        out = augment_batch(torch.from_numpy(wave), stack_plans(plans), device_bank)
        assert device_bank.crop_len == n
        assert torch.max(torch.abs(out - torch.from_numpy(ref))) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("n_rows", [1, 3, 8, 19])  # below, at and across REVERB_ROWS_PER_FFT chunks
def test_reverberate_rows_is_linear_convolution_in_place_and_leaves_other_rows(bank, n_rows):
    rng = np.random.default_rng(n_rows)
    wave = rng.standard_normal((n_rows + 4, L)).astype(np.float32)
    before = wave.copy()
    rows = rng.permutation(n_rows + 4)[:n_rows]
    rirs = rng.integers(len(bank.rirs), size=n_rows)  # 300 to 5000 taps: shorter and longer than the crop
    reverberate_rows(wave, rows, rirs, bank)
    for row, rir in zip(rows, rirs, strict=True):
        ref = scipy.signal.convolve(before[row].astype(np.float64), bank.rirs[rir].astype(np.float64))[:L]
        np.testing.assert_allclose(wave[row], ref, atol=1e-5 * np.abs(ref).max())
        plan = Plan(REVERB, rir=int(rir))  # the per-crop path gives the same samples
        np.testing.assert_allclose(wave[row], augment_numpy(before[row], plan, bank), rtol=0, atol=1e-6)
    untouched = np.setdiff1d(np.arange(n_rows + 4), rows)
    np.testing.assert_array_equal(wave[untouched], before[untouched])


def test_reverberate_rows_rejects_mismatched_lengths(bank):
    with pytest.raises(ValueError, match="2 rows but 1 RIR"):
        reverberate_rows(np.zeros((3, L), np.float32), [0, 1], [0], bank)


def test_augment_numpy_is_float32_for_every_kind_and_none_is_the_input(bank):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(L).astype(np.float32)
    for kind in range(len(KINDS)):
        y = augment_numpy(x, draw_plan(rng, _one_hot(kind), bank, L), bank)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert (y is x) == (kind == NONE)


def test_augment_numpy_out_receives_the_same_result_and_may_alias_the_input(bank):
    """The loader writes augmented crops straight into its ring row; that must not change a single sample."""
    rng = np.random.default_rng(9)
    for kind in range(len(KINDS)):
        x = rng.standard_normal(L).astype(np.float32)
        plan = draw_plan(rng, _one_hot(kind), bank, L)
        expected = augment_numpy(x.copy(), plan, bank)
        out = np.full(L, np.nan, dtype=np.float32)
        assert augment_numpy(x, plan, bank, out=out) is out
        np.testing.assert_array_equal(out, expected)
        assert augment_numpy(x, plan, bank, out=x) is x  # in place
        np.testing.assert_array_equal(x, expected)


# ------------------------------------------------------------------------------------------ folders


def _write(path, seconds, rate=16000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * rate))
    sf.write(path, wave, rate)


@pytest.fixture
def musan(tmp_path):
    noise = tmp_path / "musan"
    _write(noise / "noise" / "free-sound" / "n1.wav", 0.5, seed=1)
    _write(noise / "noise" / "sound-bible" / "n2.flac", 0.3, seed=2)
    _write(noise / "speech" / "librivox" / "s1.wav", 0.4, seed=3)
    _write(noise / "music" / "fma" / "m1.wav", 0.6, seed=4)
    (noise / "music" / "ANNOTATIONS.txt").write_text("not audio: skipped by its suffix\n")
    rirs = tmp_path / "RIRS" / "simulated"
    _write(rirs / "room1" / "r1.wav", 0.2, seed=6)
    _write(rirs / "room2" / "r2.wav", 0.1, seed=7)
    return noise, tmp_path / "RIRS"


def test_from_dirs_reads_a_musan_style_tree(musan):
    noise_dir, rir_dir = musan
    bank = NoiseBank.from_dirs(str(noise_dir), str(rir_dir))
    assert [len(bank.categories[c]) for c in ("noise", "speech", "music")] == [2, 1, 1]
    assert list(bank.lengths("noise")) == [8000, 4800]  # sorted by path: free-sound before sound-bible
    assert len(bank.rirs) == 2 and all(r.dtype == np.float32 for r in bank.rirs)
    np.testing.assert_allclose([np.sum(r.astype(np.float64) ** 2) for r in bank.rirs], 1.0, rtol=1e-5)


def test_from_dirs_names_the_folder_of_a_missing_needed_category(musan):
    noise_dir, rir_dir = musan
    for f in (noise_dir / "music").rglob("*"):
        if f.is_file():
            f.unlink()
    with pytest.raises(VoxfastError, match=re.escape(str(noise_dir / "music"))):
        NoiseBank.from_dirs(str(noise_dir), str(rir_dir))
    bank = NoiseBank.from_dirs(str(noise_dir), str(rir_dir), mix=(1, 1, 0, 1, 1))  # music not needed
    assert bank.categories["music"] == []
    with pytest.raises(VoxfastError, match=r"augment\.rir_dir is not set"):
        NoiseBank.from_dirs(str(noise_dir), None, mix=(1, 1, 0, 1, 1))
    assert len(NoiseBank.from_dirs(str(noise_dir), None, mix=(1, 0, 0, 1, 1)).rirs) == 0
    assert NoiseBank.from_dirs(None, str(rir_dir)).categories == {"noise": [], "speech": [], "music": []}


def test_from_dirs_rejects_a_file_of_another_sample_rate(musan):
    noise_dir, rir_dir = musan
    _write(noise_dir / "speech" / "other" / "s8k.wav", 0.2, rate=8000)
    with pytest.raises(AudioLoadError, match="8000 Hz"):
        NoiseBank.from_dirs(str(noise_dir), str(rir_dir))


def test_rir_spectrum_cache_is_exact_and_bounded():
    rng = np.random.default_rng(9)
    bank = NoiseBank.from_arrays(rirs=[rng.standard_normal(300).astype(np.float32) for _ in range(4)])
    bank.RIR_CACHE_BYTES = 2 * (fft_size(1000 + 299) // 2 + 1) * 8  # room for two spectra
    x = rng.standard_normal(1000).astype(np.float32)
    for i in (0, 1, 2, 3, 0):
        plan = Plan(REVERB, rir=i)
        np.testing.assert_allclose(augment_numpy(x, plan, bank), reverberate(x, bank.rirs[i]), rtol=0, atol=1e-6)
    assert len(bank._rir_spectra) == 2 and bank._rir_cache_bytes <= bank.RIR_CACHE_BYTES


def test_bank_from_packed_stores_equals_bank_from_folders(tmp_path):
    from voxfast.audio.store import pack_store
    from voxfast.data.manifest import Utterance

    rng = np.random.default_rng(4)
    for sub in ("noise/a", "noise/b", "speech", "music"):
        (tmp_path / "musan" / sub).mkdir(parents=True)
        sf.write(tmp_path / "musan" / sub / "x.wav", rng.uniform(-0.5, 0.5, 900).astype(np.float32), 16000,
                 subtype="PCM_16")
    (tmp_path / "rirs").mkdir()
    sf.write(tmp_path / "rirs" / "r.wav", rng.uniform(-0.5, 0.5, 200).astype(np.float32), 16000, subtype="FLOAT")
    for name, dtype in (("musan", "int16"), ("rirs", "float32")):
        files = sorted((tmp_path / name).rglob("*.wav"))
        utts = [Utterance(str(p.relative_to(tmp_path / name)), "x", str(p)) for p in files]
        pack_store(utts, tmp_path / f"{name}.store", workers=0, dtype=dtype, progress=False)
    folders = NoiseBank.from_dirs(str(tmp_path / "musan"), str(tmp_path / "rirs"))
    stores = NoiseBank.from_dirs(str(tmp_path / "musan.store"), str(tmp_path / "rirs.store"))
    for category in ("noise", "speech", "music"):
        assert stores.is_int16(category) and not folders.is_int16(category)
        assert len(stores.categories[category]) == len(folders.categories[category])
        for a, b in zip(stores.categories[category], folders.categories[category], strict=True):
            assert isinstance(a, np.memmap)  # mapped, not copied: one page cache for every worker and rank
            np.testing.assert_array_equal(a / np.float32(32768.0), b)
    np.testing.assert_array_equal(stores.rirs[0], folders.rirs[0])
    assert not stores.rirs._raw[0].flags.owndata  # a view of the float32 store's map, not a copy
    # The int16 bank augments exactly like the float32 one, on the CPU and in the batched path.
    rng = np.random.default_rng(5)
    plans = [draw_plan(rng, AugmentSpec(), stores, 600) for _ in range(30)]
    wave = (rng.standard_normal((30, 600)) * 0.3).astype(np.float32)
    for p, w in zip(plans, wave, strict=True):
        np.testing.assert_array_equal(augment_numpy(w, p, stores), augment_numpy(w, p, folders))
    device_int16, device_float = DeviceBank(stores, "cpu"), DeviceBank(folders, "cpu")
    out = augment_batch(torch.from_numpy(wave), stack_plans(plans), device_int16)
    torch.testing.assert_close(out, augment_batch(torch.from_numpy(wave), stack_plans(plans), device_float))
    assert device_int16._windows["speech"].dtype == torch.int16


def test_add_noise_takes_int16_noise_as_samples_over_32768():
    rng = np.random.default_rng(11)
    x = rng.standard_normal(2000).astype(np.float32)
    ints = [rng.integers(-20000, 20000, 2000).astype(np.int16) for _ in range(3)]
    floats = [n / np.float32(32768.0) for n in ints]
    np.testing.assert_array_equal(add_noise(x, ints, [5.0, 10.0, 15.0]), add_noise(x, floats, [5.0, 10.0, 15.0]))
    with pytest.raises(ValueError, match="3 noises but 2 SNRs"):
        add_noise(x, ints, [5.0, 10.0])


def test_rirs_from_an_int16_store_are_mapped_and_equal_the_folders_unit_energy_rirs(tmp_path):
    from voxfast.audio.store import pack_store
    from voxfast.data.manifest import Utterance

    rng = np.random.default_rng(12)
    (tmp_path / "rirs").mkdir()
    for i, n in enumerate((300, 1700)):
        sf.write(tmp_path / "rirs" / f"r{i}.wav", _rir(rng, n) * 0.4, 16000, subtype="PCM_16")
    files = sorted((tmp_path / "rirs").glob("*.wav"))
    pack_store([Utterance(p.name, "x", str(p)) for p in files], tmp_path / "rirs.store", workers=0, progress=False)
    folder = NoiseBank.from_dirs(None, str(tmp_path / "rirs"))
    store = NoiseBank.from_dirs(None, str(tmp_path / "rirs.store"))
    assert store.rirs._raw[0].dtype == np.int16 and isinstance(store.rirs._raw[0], np.memmap)
    assert store.max_rir == folder.max_rir == 1700
    for i in range(2):  # the unit-energy scale absorbs the 1/32768: the same float32 samples, bit for bit
        np.testing.assert_array_equal(store.rirs[i], folder.rirs[i])
        assert abs(np.sum(store.rirs[i].astype(np.float64) ** 2) - 1.0) < 1e-5
        np.testing.assert_array_equal(store.rir_spectrum(i, 4096), folder.rir_spectrum(i, 4096))
