import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from voxfast.audio.features import crop_samples
from voxfast.audio.io import read_audio, read_random_crop
from voxfast.data.speaker import (
    BatchRing,
    CropItem,
    CropKey,
    FileSource,
    RingBatches,
    SpeakerBatchSampler,
    TrainCrops,
    collate_crops,
    item_rng,
    to_float_wave,
)
from voxfast.errors import AudioLoadError, VoxfastError


def _wav(path, n, sr=16000):
    x = (np.arange(n) % 1000 / 1000.0 - 0.5).astype(np.float32)
    sf.write(path, x, sr, subtype="FLOAT")
    return x


def test_crop_length_matches_voxceleb_trainer():
    assert crop_samples(200) == 32240


def test_random_crop_reads_the_right_samples(tmp_path):
    x = _wav(tmp_path / "a.wav", 5000)
    for seed in range(5):
        crop = read_random_crop(tmp_path / "a.wav", 1200, np.random.default_rng(seed))
        start = int(np.random.default_rng(seed).integers(0, 5000 - 1200 + 1))
        np.testing.assert_array_equal(crop, x[start : start + 1200])


def test_short_file_is_wrap_padded(tmp_path):
    x = _wav(tmp_path / "short.wav", 700)
    crop = read_random_crop(tmp_path / "short.wav", 1500, np.random.default_rng(0))
    np.testing.assert_array_equal(crop, np.concatenate([x, x, x[:100]]))


def test_bad_files_raise_audio_load_errors(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioLoadError, match=r"junk\.wav"):
        read_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="NaN"):
        read_audio(tmp_path / "nan.wav")
    _wav(tmp_path / "8k.wav", 100, sr=8000)
    with pytest.raises(AudioLoadError, match="sample rate 8000 Hz, expected 16000"):
        read_audio(tmp_path / "8k.wav", sample_rate=16000)


def test_stereo_is_downmixed(tmp_path):
    stereo = np.stack([np.full(10, 0.2), np.full(10, 0.6)], axis=1).astype(np.float32)
    sf.write(tmp_path / "st.wav", stereo, 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(tmp_path / "st.wav"), np.full(10, 0.4), rtol=1e-6)


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("n_per_speaker", [1, 2])
def test_batches_never_repeat_a_speaker_and_keep_groups_together(n_per_speaker):
    labels = _labels([40, 3, 7, 12, 5, 9, 30, 4, 6, 8])
    sampler = SpeakerBatchSampler(labels, batch_size=8, n_per_speaker=n_per_speaker, seed=3)
    seen = []
    for batch in sampler:
        idx = [i for i, _ in batch]
        assert len(batch) == 8
        spk = labels[idx].reshape(-1, n_per_speaker)
        assert (spk == spk[:, :1]).all()  # a speaker's crops sit side by side
        assert len(set(spk[:, 0])) == 8 // n_per_speaker  # ... and the speaker fills one slot only
        seen += idx
    assert len(seen) == len(set(seen))  # no utterance twice in an epoch
    # The most batches any packing can make: B such that the speakers' groups, each capped at B, fill B batches.
    groups = np.bincount(labels) // n_per_speaker
    slots = 8 // n_per_speaker
    best = max(b for b in range(1, len(labels)) if np.minimum(groups, b).sum() >= slots * b)
    assert len(seen) // 8 >= best - 1  # deferring (not dropping) clashing groups stays near the optimum


def test_sampler_epochs_seeds_and_cap():
    labels = _labels([20] * 6)
    s = SpeakerBatchSampler(labels, batch_size=4, max_seg_per_spk=5, seed=1)
    first = list(s)
    assert first == list(SpeakerBatchSampler(labels, batch_size=4, max_seg_per_spk=5, seed=1))
    counts = np.bincount(labels[[i for b in first for i, _ in b]], minlength=6)
    assert counts.max() <= 5
    s.set_epoch(1)
    assert list(s) != first
    assert len({d for b in first for _, d in b}) == sum(len(b) for b in first)  # a crop seed per draw


def test_distributed_ranks_split_the_epoch_evenly():
    labels = _labels([15] * 10)
    full = list(SpeakerBatchSampler(labels, batch_size=5, seed=2))
    ranks = [list(SpeakerBatchSampler(labels, batch_size=5, seed=2, rank=r, world=3)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == len(full) // 3
    for r, batches in enumerate(ranks):
        assert [[i for i, _ in b] for b in batches] == [[i for i, _ in b] for b in full[r::3][: len(ranks[0])]]


def _files(tmp_path, n_files=6, subtype="PCM_16"):
    paths = []
    for i in range(n_files):
        rng = np.random.default_rng(i)
        sf.write(tmp_path / f"u{i}.wav", rng.uniform(-0.5, 0.5, 8000).astype(np.float32), 16000, subtype=subtype)
        paths.append(str(tmp_path / f"u{i}.wav"))
    return paths


def _crops(source, labels, n=1000, dtype=torch.float32, batch=6, **kw):
    return TrainCrops(source, labels, n, BatchRing(9, batch, n, dtype), **kw)


def _epoch(ds, crop_labels, seed, workers):
    sampler = RingBatches(SpeakerBatchSampler(crop_labels, batch_size=6, seed=seed), ds.ring.slots)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_crops, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    waves, labels = [], []
    for batch in loader:
        waves.append(ds.batch_wave(batch).clone())  # clone: the ring slot is reused a few batches later
        labels.append(torch.from_numpy(batch["label"]))
    return torch.cat(waves), torch.cat(labels)


def test_worker_seeding_gives_distinct_crops_and_repeats_for_a_seed(tmp_path):
    paths = _files(tmp_path) * 4  # 6 speakers, each file listed 4 times
    labels = list(range(6)) * 4
    ds = _crops(FileSource(paths, 16000), labels)
    a, la = _epoch(ds, labels, 5, workers=2)
    b, lb = _epoch(ds, labels, 5, workers=2)
    c, _ = _epoch(ds, labels, 6, workers=2)
    torch.testing.assert_close(a, b)  # same seed, same crops, whatever worker served them
    assert torch.equal(la, lb) and not torch.equal(a, c)
    assert len({tuple(row[:16].tolist()) for row in a}) == len(a)  # no two workers replay the same random stream
    zero, _ = _epoch(ds, labels, 5, workers=0)
    torch.testing.assert_close(zero, a)  # and the worker count does not change them


def test_int16_transport_carries_the_same_crops(tmp_path):
    paths = _files(tmp_path)
    labels = list(range(6))
    as_float = _epoch(_crops(FileSource(paths, 16000), labels), labels, 3, workers=0)[0]
    as_int16 = _epoch(_crops(FileSource(paths, 16000), labels, dtype=torch.int16), labels, 3, workers=1)[0]
    assert as_int16.dtype == torch.int16
    torch.testing.assert_close(to_float_wave(as_int16), as_float, rtol=0, atol=0)  # 16-bit PCM: exact


def test_ring_batches_key_items_by_name_and_items_name_their_parts(tmp_path):
    from voxfast.audio.augment import NOISE, Augmentation, AugmentSpec, NoiseBank

    paths = _files(tmp_path)
    labels = list(range(6))
    sampler = RingBatches(SpeakerBatchSampler(labels, batch_size=3, seed=1), slots=2)
    batches = list(sampler)
    assert all(isinstance(key, CropKey) for batch in batches for key in batch)
    assert [[(k.slot, k.row) for k in b] for b in batches] == [[(j % 2, r) for r in range(3)] for j in range(2)]
    bank = NoiseBank.from_arrays(noise=[np.ones(3000, np.float32)])
    ds = _crops(FileSource(paths, 16000), labels, batch=3, augment=(AugmentSpec(mix=(0, 0, 0, 0, 1)), bank),
                augment_on_device=True)
    assert isinstance(ds.augment, Augmentation) and ds.augment.bank is bank  # a (spec, bank) pair is named too
    items = ds.__getitems__(batches[1])
    assert all(isinstance(item, CropItem) for item in items)
    assert [item.label for item in items] == [labels[k.index] for k in batches[1]]
    assert {item.slot for item in items} == {1} and all(item.plan.kind == NOISE for item in items)
    batch = collate_crops(items)
    assert batch["slot"] == 1 and batch["aug"]["kind"].tolist() == [NOISE] * 3


def test_item_rng_is_a_pure_function_of_the_seed():
    a = item_rng(42).random(5)
    item_rng(7).random(3)
    np.testing.assert_array_equal(item_rng(42).random(5), a)
    assert not np.array_equal(item_rng(43).random(5), a)
    draws = np.concatenate([item_rng(s).random(1000) for s in range(50)])
    assert abs(draws.mean() - 0.5) < 0.01 and abs(draws.std() - np.sqrt(1 / 12)) < 0.01


def test_unreadable_files_are_skipped_counted_and_bounded(tmp_path):
    _wav(tmp_path / "ok.wav", 4000)
    paths = [str(tmp_path / "ok.wav")] + [str(tmp_path / f"missing{i}.wav") for i in range(3)]
    ds = _crops(FileSource(paths, 16000), [0, 1, 1, 1], max_consecutive_failures=3)
    batch = collate_crops([ds[(0, 1, 0, 0)], ds[(1, 2, 0, 1)], ds[(2, 3, 0, 2)]])
    assert batch["failed"] == 2 and batch["label"].tolist() == [0] and batch["size"] == 3
    wave = ds.batch_wave(batch)
    assert wave.shape == (1, 1000)
    np.testing.assert_array_equal(wave[0].numpy(), read_random_crop(paths[0], 1000, item_rng(1)))
    assert ds[(0, 4, 1, 0)][1] == 0  # a good read resets the run of failures
    ds[(1, 5, 1, 1)]
    ds[(2, 6, 1, 2)]
    with pytest.raises(VoxfastError, match="3 audio files in a row failed"):
        ds[(3, 7, 1, 3)]


def test_speed_perturbation_relabels_and_resamples(tmp_path):
    ds = _crops(FileSource(_files(tmp_path), 16000), list(range(6)), speed_perturb=True)
    assert ds.n_classes == 18
    seen = set()
    for seed in range(40):
        _, label, _ = ds[(2, seed, 0, 0)]
        assert ds.ring.buffer[0, 0].dtype == torch.float32
        seen.add(label)
    assert seen == {2, 8, 14}  # speaker 2 at speeds 1.0, 0.9 and 1.1


def test_resample_on_read_when_allowed(tmp_path):
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "8k.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="voxfast pack"):
        read_random_crop(tmp_path / "8k.wav", 1000, np.random.default_rng(0), 16000)
    crop = read_random_crop(tmp_path / "8k.wav", 1000, np.random.default_rng(0), 16000, resample_mismatch=True)
    assert crop.shape == (1000,)
    spectrum = np.abs(np.fft.rfft(crop))
    assert abs(np.argmax(spectrum) * 16000 / 1000 - 440) <= 16  # still a 440 Hz tone at the new rate


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_store_crops_converted_into_the_ring_equal_plain_crops(tmp_path, dtype):
    """CPU augmentation converts a store crop straight into its ring row; the samples must not change."""
    from voxfast.audio.store import PackedStore, pack_store
    from voxfast.data.manifest import Utterance
    from voxfast.data.speaker import StoreSource

    utts = [Utterance(f"u{i}", f"s{i}", p) for i, p in enumerate(_files(tmp_path))]
    pack_store(utts, tmp_path / "store", workers=0, progress=False, dtype=dtype)
    source = StoreSource(PackedStore(tmp_path / "store"))
    for index in range(len(source)):
        out = np.full(12000, np.nan, dtype=np.float32)  # longer than the files: wraps
        assert source.random_crop_into(index, item_rng(index), out) is out
        np.testing.assert_array_equal(out, source.random_crop(index, 12000, item_rng(index)))


def test_cpu_augmented_store_crops_equal_augment_numpy_of_the_same_draws(tmp_path):
    from voxfast.audio.augment import AugmentSpec, NoiseBank, augment_numpy, draw_plan
    from voxfast.audio.store import PackedStore, pack_store
    from voxfast.data.manifest import Utterance
    from voxfast.data.speaker import StoreSource

    utts = [Utterance(f"u{i}", f"s{i}", p) for i, p in enumerate(_files(tmp_path))]
    pack_store(utts, tmp_path / "store", workers=0, progress=False)
    source = StoreSource(PackedStore(tmp_path / "store"))
    rng = np.random.default_rng(0)
    bank = NoiseBank.from_arrays(noise=[rng.standard_normal(3000)], speech=[rng.standard_normal(2500)] * 3,
                                 music=[rng.standard_normal(4000)], rirs=[rng.standard_normal(300)])
    spec = AugmentSpec()
    labels = list(range(6))
    ds = _crops(source, labels, augment=(spec, bank))
    for index in range(6):
        ds[(index, 100 + index, 0, index)]
        draw = item_rng(100 + index)
        crop = source.random_crop(index, 1000, draw)
        expected = augment_numpy(crop, draw_plan(draw, spec, bank, 1000), bank)
        # the same draws; FFT libraries may round differently, so float32 rounding of the peak is allowed
        np.testing.assert_allclose(ds.ring.buffer[0, index].numpy(), expected, rtol=0,
                                   atol=1e-5 * np.abs(expected).max())


def test_a_batch_fetch_transforms_reverb_rows_together_with_the_same_result(tmp_path):
    """The DataLoader calls __getitems__ for a batch: reverb crops are convolved as one 2-D FFT there."""
    from voxfast.audio.augment import REVERB, AugmentSpec, NoiseBank, augment_numpy, draw_plan

    paths = _files(tmp_path)
    rng = np.random.default_rng(1)
    bank = NoiseBank.from_arrays(noise=[rng.standard_normal(3000)], speech=[rng.standard_normal(2500)] * 3,
                                 music=[rng.standard_normal(4000)], rirs=[rng.standard_normal(n) for n in (300, 900)])
    spec = AugmentSpec(mix=(1.0, 3.0, 1.0, 1.0, 1.0))  # mostly reverb, every kind present
    ds = _crops(FileSource(paths, 16000), list(range(6)), batch=12, augment=(spec, bank))
    keys = [(i % 6, 50 + i, 1, i) for i in range(12)]
    items = ds.__getitems__(keys)
    assert [label for _, label, _ in items] == [i % 6 for i in range(12)]
    kinds = []
    for index, seed, _, row in keys:
        draw = item_rng(seed)
        crop = FileSource(paths, 16000).random_crop(index, 1000, draw)
        plan = draw_plan(draw, spec, bank, 1000)
        kinds.append(plan.kind)
        np.testing.assert_allclose(ds.ring.buffer[1, row].numpy(), augment_numpy(crop, plan, bank), atol=1e-6)
    assert kinds.count(REVERB) >= 3 and len(set(kinds)) >= 3
    single = _crops(FileSource(paths, 16000), list(range(6)), batch=12, augment=(spec, bank))
    for key in keys:
        single[key]
    np.testing.assert_allclose(single.ring.buffer[1].numpy(), ds.ring.buffer[1].numpy(), atol=1e-6)


@pytest.mark.parametrize(("suffix", "subtype", "channels"),
                         [(".wav", "PCM_16", 1), (".wav", "PCM_16", 2), (".wav", "FLOAT", 1), (".flac", "PCM_16", 2)])
def test_file_crops_converted_into_the_ring_equal_plain_crops(tmp_path, suffix, subtype, channels):
    """CPU augmentation reads a file crop straight into its ring row, through the fast path or soundfile."""
    paths = []
    for i, n in enumerate((8000, 500)):  # the second is shorter than the crop: wrap-padded
        x = np.random.default_rng(i).uniform(-0.5, 0.5, (n, channels)).astype(np.float32)
        paths.append(str(tmp_path / f"u{i}{suffix}"))
        sf.write(paths[-1], x, 16000, subtype=subtype)
    source = FileSource(paths, 16000)
    for index in range(2):
        out = np.full(3000, np.nan, dtype=np.float32)
        assert source.random_crop_into(index, item_rng(index), out) is out
        np.testing.assert_array_equal(out, source.random_crop(index, 3000, item_rng(index)))
