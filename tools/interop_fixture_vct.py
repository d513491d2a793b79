"""Parity fixtures for `voxfast import vct`: voxceleb_trainer's own ResNetSE34L / ResNetSE34V2 embed fixed waveforms.

Why: a converter can map every tensor onto a name of the right shape and still compute something else (a
transposed attention vector, a batch norm on the wrong side of a ReLU, another mel range). The only proof is the
reference code itself running the same weights. Shipping real weights would cost megabytes, so the reference gets
`voxfast.interop.common.seeded_state` weights drawn over its own state_dict keys (in order, named as a .model file
names them: ``__S__.``); the front end's buffers (window, mel banks, pre-emphasis filter) keep the model's own
values, as they are constants of the features, not weights. ResNetSE34L is also run with a Hann window in its
window buffer: the published baseline_lite_ap.model was trained by the April 2020 code (torchaudio's default
window) and carries that window, which voxceleb_trainer loads with the weights. tests/interop/test_vct.py rebuilds
the same files from the recorded keys and seed, imports them and compares embeddings.

The reference source is read from a voxceleb_trainer checkout or bare git mirror (extracted to a temporary folder,
never into this repository) and imported from there:

    .venv/bin/python tools/interop_fixture_vct.py --vct /work/.mirror/clovaai+voxceleb_trainer/repo

writes tests/interop/fixtures/vct_resnetse34l.json and vct_resnetse34v2.json and prints the max |diff| of voxfast's
import against the reference for each model and length.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from voxfast.interop import import_model
from voxfast.interop.common import seeded_state
from voxfast.tasks.speaker import load_embedder

SOURCES = ["models/ResNetSE34L.py", "models/ResNetSE34V2.py", "models/ResNetBlocks.py", "utils.py"]
# the published models' settings (README and configs/*.yaml): nOut 512, --log_input, SAP / ASP, 40 / 64 mels; the
# STFT windows their files can carry
MODELS = {
    "resnetse34l": ("ResNetSE34L", {"nOut": 512, "encoder_type": "SAP", "n_mels": 40, "log_input": True},
                    ("hamming", "hann")),
    "resnetse34v2": ("ResNetSE34V2", {"nOut": 512, "encoder_type": "ASP", "n_mels": 64, "log_input": True},
                     ("hamming",)),
}
WINDOWS = {"hamming": torch.hamming_window, "hann": torch.hann_window}
OUT = Path(__file__).resolve().parent.parent / "tests" / "interop" / "fixtures"
DEFAULT_COMMIT = "f51bab870672a9b0b50fa158b4e30f329e7866d7"


def wave(input_seed: int, n: int) -> np.ndarray:
    """The test waveform of `n` samples (tests/interop/test_vct.py draws the same)."""
    return np.random.default_rng([input_seed, n]).standard_normal(n).astype(np.float32) * np.float32(0.1)


def reference_source(vct: Path, commit: str | None, tmp: Path) -> tuple[Path, str]:
    """(folder to put on sys.path, commit): a bare git mirror is extracted at `commit` (default HEAD) into `tmp`."""
    if (vct / "objects").is_dir() and (vct / "HEAD").is_file():
        rev = subprocess.run(["git", f"--git-dir={vct}", "rev-parse", commit or "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
        for name in SOURCES:
            text = subprocess.run(["git", f"--git-dir={vct}", "show", f"{rev}:{name}"], check=True,
                                  capture_output=True, text=True).stdout
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        (tmp / "models" / "__init__.py").touch()
        return tmp, rev
    missing = [n for n in SOURCES if not (vct / n).is_file()]
    if missing:
        raise SystemExit(f"{vct}: not a voxceleb_trainer checkout or bare mirror (no {', '.join(missing)})")
    return vct, commit or DEFAULT_COMMIT


def reference_model(vct_name: str, kwargs: dict, seed: int) -> tuple[torch.nn.Module, list, list[str]]:
    """The reference with seeded weights, its (key, shape) list as a .model file names them, and the keys that kept
    the model's own values (front-end buffers)."""
    model = importlib.import_module(f"models.{vct_name}").MainModel(**kwargs)
    own = {f"__S__.{k}": v for k, v in model.state_dict().items()}
    shapes = [(k, list(v.shape)) for k, v in own.items()]
    state = seeded_state(shapes, seed)
    constants = [k for k in own if k.startswith("__S__.torchfb.")]
    state.update({k: own[k] for k in constants})
    model.load_state_dict({k[len("__S__."):]: v for k, v in state.items()}, strict=True)
    return model.eval(), shapes, constants


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vct", type=Path, required=True, help="voxceleb_trainer checkout, or its bare git mirror")
    p.add_argument("--commit", help="commit to extract from a bare mirror (default HEAD) / to record for a checkout")
    p.add_argument("--seed", type=int, default=1234, help="weight seed (default 1234)")
    p.add_argument("--input-seed", type=int, default=99, help="waveform seed (default 99)")
    p.add_argument("--lengths", type=int, nargs="+", default=[16000, 37913], help="waveform lengths in samples")
    p.add_argument("--out", type=Path, default=OUT, help=f"fixture folder (default {OUT})")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src, commit = reference_source(args.vct.resolve(), args.commit, tmp / "vct")
        sys.path.insert(0, str(src))
        args.out.mkdir(parents=True, exist_ok=True)
        for name, (vct_name, kwargs, windows) in MODELS.items():
            model, shapes, constants = reference_model(vct_name, kwargs, args.seed)
            window_key = next(k for k in constants if k.endswith("spectrogram.window"))
            refs: dict[str, list[torch.Tensor]] = {}
            for window in windows:
                state = {f"__S__.{k}": v.clone() for k, v in model.state_dict().items()}
                state[window_key] = WINDOWS[window](400)  # what voxceleb_trainer's loadParameters does with a file
                model.load_state_dict({k[len("__S__."):]: v for k, v in state.items()}, strict=True)
                state["__L__.W"] = torch.zeros(3)  # a loss head, which the import drops
                torch.save(state, tmp / f"{name}_{window}.model")
                with torch.no_grad():
                    refs[window] = [torch.nn.functional.normalize(
                        model(torch.from_numpy(wave(args.input_seed, n))[None])[0], dim=0) for n in args.lengths]
            fixture = {
                "source": f"clovaai/voxceleb_trainer@{commit} models/{vct_name}.py MainModel({kwargs})",
                "commit": commit,
                "model": name,
                "seed": args.seed,
                "constants": constants,
                "input_seed": args.input_seed,
                "lengths": args.lengths,
                "keys": shapes,
                "embeddings": {w: [[round(float(v), 7) for v in r] for r in rs] for w, rs in refs.items()},
            }
            path = args.out / f"vct_{name}.json"
            path.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                                               for k, v in fixture.items()) + "\n}\n")
            for window, rs in refs.items():  # voxfast's import of the same file, embedding the same waveforms
                import_model("vct", tmp / f"{name}_{window}.model", tmp / f"{name}_{window}.pt")
                embedder, _ = load_embedder(tmp / f"{name}_{window}.pt", torch.device("cpu"))
                with torch.no_grad():
                    for n, ref in zip(args.lengths, rs, strict=True):
                        x = torch.from_numpy(wave(args.input_seed, n))[None]
                        ours = torch.nn.functional.normalize(embedder(x)[0], dim=0)
                        print(f"{name} ({window} window) {n} samples: max |diff| voxfast vs reference "
                              f"{float((ours - ref).abs().max()):.3g}")
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
