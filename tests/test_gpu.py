"""The CUDA paths against their CPU references: batched augmentation, front ends, autocast and channels_last
models, the fp16/bf16 trainer with GradScaler, and a speaker run with device augmentation.

Marked `gpu` and skipped without a CUDA device, so CI (CPU only) collects them and the GPU machine runs them
with the rest of the suite. Every CPU path has its own tests; these check only that CUDA gives the same
numbers, since a kernel that differs there would pass every CPU test.
"""

import json

import numpy as np
import pytest
import torch

from tests.bench.corpus import make_tiny_corpus
from tests.train.toy import ToyTask, toy_config
from voxfast.audio.augment import (
    KINDS,
    AugmentSpec,
    DeviceBank,
    NoiseBank,
    augment_batch,
    augment_numpy,
    draw_plan,
    stack_plans,
)
from voxfast.audio.features import KaldiFbank, LogMel, crop_samples
from voxfast.cli import main
from voxfast.models.registry import available_models, create_model
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.trainer import Trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("gpu_corpus"))


def _waves(rng, lengths, decay=False):
    return [(rng.standard_normal(n) * (np.exp(-np.arange(n) / (n / 5)) if decay else 0.3)).astype(np.float32)
            for n in lengths]


def test_batched_augmentation_on_cuda_matches_the_numpy_path():
    rng = np.random.default_rng(0)
    bank = NoiseBank.from_arrays(noise=_waves(rng, [9000, 40000]), speech=_waves(rng, [20000, 7000, 33000, 50000]),
                                 music=_waves(rng, [64000]), rirs=_waves(rng, [800, 8000], decay=True))
    n = crop_samples(200)
    specs = [AugmentSpec(mix=tuple(float(k == kind) for k in range(len(KINDS)))) for kind in range(len(KINDS))]
    plans = [draw_plan(rng, specs[i % len(KINDS)], bank, n) for i in range(20)]
    wave = (rng.standard_normal((len(plans), n)) * 0.2).astype(np.float32)
    ref = np.stack([augment_numpy(w, p, bank) for w, p in zip(wave, plans, strict=True)])
    out = augment_batch(torch.from_numpy(wave).cuda(), stack_plans(plans), DeviceBank(bank, "cuda"))
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.max(torch.abs(out.cpu() - torch.from_numpy(ref))) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("front", [LogMel(40), KaldiFbank(80)], ids=["logmel", "fbank"])
def test_front_ends_on_cuda_match_the_cpu(front):
    wave = torch.randn(4, crop_samples(200), generator=torch.Generator().manual_seed(1)) * 0.1
    ref = front(wave)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = front.cuda()(wave.cuda())
    assert out.dtype == torch.float32  # the front end stays float32 under autocast
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=2e-3)


@pytest.mark.parametrize("name", available_models())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_models_on_cuda_keep_the_cpu_embedding(name, dtype):
    torch.manual_seed(1)
    model = create_model(name).eval()
    wave = torch.randn(3, 16000, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.inference_mode():
        ref = model(wave)
        gpu = model.cuda().to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype):
            low = gpu(wave.cuda()).float().cpu()
    assert torch.isfinite(low).all()
    assert (torch.nn.functional.cosine_similarity(low, ref, dim=1) > 0.98).all()


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_trainer_on_cuda_follows_the_cpu_run(tmp_path, precision):
    """The toy regression trained on CUDA ends where the CPU run ends (fp16 goes through GradScaler)."""
    finals = {}
    for device in ("cpu", "cuda"):
        cfg = toy_config(epochs=20, device=device, precision=precision if device == "cuda" else "fp32")
        trainer = Trainer(ToyTask(cfg.micro_batch, cfg.global_batch), cfg, tmp_path / device)
        trainer.fit()
        finals[device] = torch.cat([p.detach().float().cpu().flatten() for p in trainer.module.parameters()])
    tol = 1e-4 if precision == "fp32" else 3e-2
    torch.testing.assert_close(finals["cuda"], finals["cpu"], rtol=0, atol=tol)


@pytest.mark.parametrize("preset", ["speed", "reproducible"])
def test_speaker_run_on_cuda_with_device_augmentation(corpus, tmp_path, capsys, preset):
    out = tmp_path / preset
    args = ["train", "--config", "demo", "--preset", preset, f"data.train_list={corpus}/train_list.txt",
            f"eval.trials={corpus}/trials.txt", f"train.out_dir={out}", "train.epochs=2", "train.device=cuda",
            "train.micro_batch=12", "train.global_batch=12", "data.num_workers=1", "train.compile=false",
            "augment.enabled=true", f"augment.noise_dir={corpus}", f"augment.rir_dir={corpus}/rirs",
            "train.tensorboard=false"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["eer"] <= 100.0
    weights = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    capsys.readouterr()
