"""The classification base shared by the image and EEG tasks, against numpy references, and the task registry."""

import numpy as np
import pytest
import torch

from voxfast.config import Config, load_config
from voxfast.errors import ConfigError, VoxfastError
from voxfast.tasks import TASKS, task_class
from voxfast.tasks.classification import EpochBatches, channel_stats, classification_metrics, epoch_generator, take
from voxfast.tasks.eeg import EEGTask
from voxfast.tasks.image import ImageTask
from voxfast.tasks.speaker import SpeakerTask
from voxfast.train.task import Task


def test_the_registry_names_every_task_class():
    assert {name: task_class(name) for name in TASKS} == {"speaker": SpeakerTask, "image": ImageTask,
                                                           "eeg": EEGTask}
    assert all(Task in cls.__mro__ and cls.name == name for name, cls in ((n, task_class(n)) for n in TASKS))
    with pytest.raises(VoxfastError, match="unknown task 'audio'; choose one of speaker, image, eeg"):
        task_class("audio")


@pytest.mark.parametrize("shape", [(37, 3, 5, 6), (11, 4, 50)])
def test_channel_stats_match_float64_numpy_in_small_chunks(shape):
    rng = np.random.default_rng(0)
    x = (rng.normal(1e4, 3.0, shape)).astype(np.float32)  # a large offset: E[x^2] - mean^2 would cancel
    x[:, 1] = 7.0  # a flat channel keeps std 1
    mean, std = channel_stats(x, chunk=4)
    axes = (0, *range(2, x.ndim))
    ref = x.astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=axes), rtol=1e-12)
    expected = ref.std(axis=axes)
    expected[1] = 1.0
    np.testing.assert_allclose(std, expected, rtol=1e-9)
    images = rng.integers(0, 256, (9, 3, 4, 4), dtype=np.uint8)
    np.testing.assert_allclose(channel_stats(images, chunk=2)[0], images.mean(axis=(0, 2, 3), dtype=np.float64))


def test_classification_metrics_against_a_per_class_loop():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 0, 1, 0, 2, 2, 0, 2])
    result = classification_metrics(labels, predicted, ["a", "b", "c", "d"])
    recalls = [np.mean(predicted[labels == c] == c) for c in range(3)]
    assert result["accuracy"] == pytest.approx(np.mean(labels == predicted))
    assert result["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert result["per_class_accuracy"][:3] == pytest.approx(recalls) and result["per_class_accuracy"][3] is None
    assert result["n_val"] == 9 and result["classes"] == ["a", "b", "c", "d"]


def test_epoch_batches_are_made_when_read_and_slice_like_a_list():
    made = []
    batches = EpochBatches(lambda b: made.append(b) or {"number": b}, range(1, 10, 3))
    assert len(batches) == 3 and made == []
    assert [b["number"] for b in batches] == [1, 4, 7]
    assert [b["number"] for b in batches[1:]] == [4, 7]


def test_take_gathers_rows_and_the_generator_is_a_function_of_its_seeds():
    source = torch.arange(20).view(10, 2)
    assert take(source, np.array([3, 0, 9]), pin=False).tolist() == [[6, 7], [0, 1], [18, 19]]
    draw = [torch.rand(3, generator=epoch_generator(1, 2, n)) for n in (3, 3, 4)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


@pytest.mark.parametrize(("task", "key", "bad"), [("image", "image.model", "eegnet"), ("eeg", "eeg.model", "nope")])
def test_a_model_name_is_checked_against_its_task_before_data_is_read(tmp_path, task, key, bad):
    cfg = load_config(None, [f"{key}={bad}", f"{task}.data={tmp_path}/missing.npz"])
    assert isinstance(cfg, Config)
    with pytest.raises(ConfigError, match=rf"unknown model '{bad}'.*\(set {key}\)"):
        task_class(task)(cfg)
