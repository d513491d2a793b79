"""Tiny dataset trees for the prepare tests: short noise WAVs in the real datasets' layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf


def write_wav(path: Path, seconds: float = 0.05, rate: int = 16000, seed: int = 0, channels: int = 1) -> Path:
    """A short 16-bit noise file (distinct content per seed, so md5s differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal((max(1, int(seconds * rate)), channels)) * 0.1).astype(np.float32)
    sf.write(str(path), samples, rate, subtype="PCM_16", format="WAV")
    return path


def vox_tree(root: Path, speakers: dict[str, dict[str, int]], suffix: str = ".wav", seed: int = 0) -> Path:
    """``root/<speaker>/<video>/<NNNNN><suffix>`` (files named like VoxCeleb's, WAV content whatever the suffix)."""
    for s, (spk, videos) in enumerate(sorted(speakers.items())):
        for v, (video, n) in enumerate(sorted(videos.items())):
            for k in range(1, n + 1):
                write_wav(root / spk / video / f"{k:05d}{suffix}", seed=seed + 1000 * s + 100 * v + k)
    return root


def own_tree(root: Path, speakers: dict[str, dict[str | None, int]]) -> Path:
    """``root/<speaker>/<session>/<k>.wav``; session None puts files directly in the speaker folder."""
    for s, (spk, sessions) in enumerate(sorted(speakers.items())):
        for v, (session, n) in enumerate(sorted(sessions.items(), key=lambda kv: str(kv[0]))):
            folder = root / spk if session is None else root / spk / session
            for k in range(n):
                write_wav(folder / f"{v}_{k:03d}.wav", seed=1000 * s + 100 * v + k)
    return root


def read_json(out: Path) -> dict[str, Any]:
    return json.loads((out / "prepare.json").read_text(encoding="utf-8"))
