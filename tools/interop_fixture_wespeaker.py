"""Parity fixtures for `voxfast import wespeaker`: WeSpeaker's own models, seeded weights, reference embeddings.

Why: the converter must give the embeddings WeSpeaker gives, and published checkpoints are too large to ship with
the tests. So this builds WeSpeaker's ResNet34 (embed 256) and ECAPA_TDNN_GLOB c512 / c1024 (embed 192) from the
WeSpeaker source with the VoxCeleb v2 recipe's settings, gives them `voxfast.interop.common.seeded_state` weights
over their own state_dict keys (in their order), and embeds fixed waveforms exactly as WeSpeaker's extraction does
(``kaldi.fbank(wave * 2**15, ..., dither=0, window_type="hamming")``, the utterance mean subtracted, eval mode),
in float64 so the fixture holds the exact answer rather than one float32 rounding of it. Each fixture
(tests/interop/fixtures/wespeaker_<model>.json, a few KB) holds the key list with shapes, the weight seed, the
config.yaml content, the waveform seed and lengths, the L2-normalised reference embeddings and the WeSpeaker commit;
tests/interop/test_wespeaker.py rebuilds the weights from it. The tool also converts the same weights with voxfast
and prints voxfast's max |diff| (against the float64 reference and against WeSpeaker run in float32).

`--wespeaker` is a WeSpeaker clone, or a bare mirror of one (read with `git show`). Only wespeaker/models/resnet.py,
ecapa_tdnn.py and pooling_layers.py are needed: they are copied to a temporary folder (outside the repository) with
empty package __init__ files, because wespeaker/__init__.py imports the CLI and its dependencies (VAD, kaldiio...).

    .venv/bin/python tools/interop_fixture_wespeaker.py --wespeaker /path/to/wespeaker
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
import yaml

from voxfast.interop import import_model
from voxfast.interop.common import seeded_state
from voxfast.tasks.speaker import load_embedder

MODULES = ("resnet", "ecapa_tdnn", "pooling_layers")
FBANK_ARGS = {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25, "dither": 1.0}  # examples/voxceleb/v2/conf
SPECS: dict[str, dict[str, Any]] = {  # fixture name -> WeSpeaker model, model_args (the VoxCeleb v2 configs), seed
    "resnet34": {"module": "resnet", "model": "ResNet34", "seed": 1601,
                 "model_args": {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False}},
    "ecapa_c512": {"module": "ecapa_tdnn", "model": "ECAPA_TDNN_GLOB_c512", "seed": 1602,
                   "model_args": {"feat_dim": 80, "embed_dim": 192, "pooling_func": "ASTP"}},
    "ecapa_c1024": {"module": "ecapa_tdnn", "model": "ECAPA_TDNN_GLOB_c1024", "seed": 1603,
                    "model_args": {"feat_dim": 80, "embed_dim": 192, "pooling_func": "ASTP"}},
}
INPUT_SEED = 16
LENGTHS = (16000, 37913)
AMPLITUDE = 0.1
SAMPLE_RATE = 16000


def waveform(length: int, seed: int = INPUT_SEED) -> np.ndarray:
    """The fixture's input of `length` samples (the tests draw the same)."""
    return np.random.default_rng([seed, length]).standard_normal(length).astype(np.float32) * AMPLITUDE


def extract_reference(source: Path, folder: Path) -> str:
    """Copy WeSpeaker's model modules under `folder`/wespeaker/models; returns the source's commit."""
    package = folder / "wespeaker" / "models"
    package.mkdir(parents=True)
    (folder / "wespeaker" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    bare = (source / "HEAD").is_file() and (source / "objects").is_dir()
    git = ["git", f"--git-dir={source}"] if bare else ["git", "-C", str(source)]
    for name in MODULES:
        rel = f"wespeaker/models/{name}.py"
        text = (subprocess.run([*git, "show", f"HEAD:{rel}"], check=True, capture_output=True, text=True).stdout
                if bare else (source / rel).read_text())
        (package / f"{name}.py").write_text(text)
    done = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def reference_features(wave: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """WeSpeaker's processor.compute_fbank (dither 0 at extraction) and apply_cmvn: (1, frames, bins)."""
    w = torch.from_numpy(wave).to(dtype)[None] * (1 << 15)
    feats = kaldi.fbank(w, num_mel_bins=FBANK_ARGS["num_mel_bins"], frame_length=FBANK_ARGS["frame_length"],
                        frame_shift=FBANK_ARGS["frame_shift"], dither=0.0, sample_frequency=SAMPLE_RATE,
                        window_type="hamming", use_energy=False)
    return (feats - feats.mean(dim=0))[None]


def reference_embedding(model: torch.nn.Module, wave: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """WeSpeaker's embedding (the last output, as its extraction takes it), L2-normalised, float64."""
    with torch.no_grad():
        out = model.to(dtype)(reference_features(wave, dtype))
    emb = (out[-1] if isinstance(out, tuple) else out)[0].double().numpy()
    return emb / np.linalg.norm(emb)


def voxfast_embeddings(state: dict[str, torch.Tensor], config: dict[str, Any], folder: Path) -> dict[int, np.ndarray]:
    """The same weights through `voxfast import wespeaker` and voxfast's embedder, L2-normalised."""
    src = folder / "src"
    src.mkdir()
    torch.save(state, src / "avg_model.pt")
    (src / "config.yaml").write_text(yaml.safe_dump(config))
    import_model("wespeaker", src, folder / "voxfast.pt")
    embedder, _ = load_embedder(folder / "voxfast.pt", torch.device("cpu"))
    out = {}
    with torch.no_grad():
        for n in LENGTHS:
            emb = embedder(torch.from_numpy(waveform(n))[None])[0].double().numpy()
            out[n] = emb / np.linalg.norm(emb)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wespeaker", type=Path, required=True, help="a WeSpeaker clone or bare mirror")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/interop/fixtures")
    parser.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wespeaker_ref_") as tmp:
        commit = extract_reference(args.wespeaker.resolve(), Path(tmp))
        sys.path.insert(0, tmp)
        for name in args.models:
            spec = SPECS[name]
            module = importlib.import_module(f"wespeaker.models.{spec['module']}")
            model = getattr(module, spec["model"])(**spec["model_args"]).eval()
            keys = [(k, list(v.shape)) for k, v in model.state_dict().items()]
            weights = seeded_state(keys, spec["seed"])
            model.load_state_dict(weights)
            config = {"model": spec["model"], "model_args": spec["model_args"],
                      "dataset_args": {"resample_rate": SAMPLE_RATE, "fbank_args": FBANK_ARGS}}
            ref64 = {n: reference_embedding(model, waveform(n), torch.float64) for n in LENGTHS}
            ref32 = {n: reference_embedding(model, waveform(n), torch.float32) for n in LENGTHS}
            fixture = {
                "wespeaker_commit": commit, "config": config, "weights_seed": spec["seed"], "keys": keys,
                "input": {"seed": INPUT_SEED, "lengths": list(LENGTHS), "amplitude": AMPLITUDE,
                          "waveform": "np.random.default_rng([seed, length]).standard_normal(length)"
                                      ".astype(float32) * amplitude"},
                "reference": "WeSpeaker in float64: kaldi.fbank(wave * 2**15, dither=0, window_type='hamming') "
                             "minus its mean over frames; the model's last output, L2-normalised",
                "embeddings": {str(n): [round(float(x), 9) for x in ref64[n]] for n in LENGTHS},
            }
            path = args.out / f"wespeaker_{name}.json"
            path.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
            with tempfile.TemporaryDirectory(prefix="wespeaker_vf_") as work:
                head = {"projection.weight": torch.zeros(8, spec["model_args"]["embed_dim"])}  # dropped on import
                ours = voxfast_embeddings({**weights, **head}, config, Path(work))
            print(f"{path.name}: {len(keys)} tensors, {path.stat().st_size / 1024:.1f} KB")
            for n in LENGTHS:
                diff = {k: np.abs(a - b).max() for k, (a, b) in
                        {"64": (ours[n], ref64[n]), "32": (ours[n], ref32[n]), "ref": (ref32[n], ref64[n])}.items()}
                print(f"  {n:6d} samples: voxfast vs WeSpeaker float64 max |diff| {diff['64']:.2e}, vs WeSpeaker "
                      f"float32 {diff['32']:.2e} (WeSpeaker float32 vs float64 {diff['ref']:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
