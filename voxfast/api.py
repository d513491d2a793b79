"""The Python API: verify two recordings in one line.

    >>> import voxfast
    >>> model = voxfast.load("runs/demo/checkpoints/best.pt")
    >>> model.verify("a.wav", "b.wav")          # True when the cosine score reaches the stored threshold
    >>> model.score(wave_a, wave_b, sr=8000)     # arrays are resampled to the model's rate

The threshold is the EER threshold of the checkpoint's last evaluation on a trial list (training with
`train.validate_every`, the evaluation after `voxfast train`, or `voxfast eval --checkpoint`), so `verify`
makes the decision that evaluation measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from voxfast.audio.io import audio_info, read_audio, resample
from voxfast.errors import VoxfastError
from voxfast.eval.embeddings import check_sample_rate, check_waveform, pad_to_minimum
from voxfast.runtime import resolve_device
from voxfast.train.checkpoint import load_checkpoint

Audio = str | Path | np.ndarray | torch.Tensor

log = logging.getLogger(__name__)


class SpeakerModel:
    """A trained embedding network with its sample rate and decision threshold."""

    def __init__(self, embedder: torch.nn.Module, sample_rate: int, device: torch.device,
                 threshold: float | None = None) -> None:
        self.embedder = embedder.eval()
        self.sample_rate = sample_rate
        self.device = device
        self.threshold = threshold

    def embed(self, audio: Audio | Sequence[Audio], sr: int | None = None) -> np.ndarray:
        """L2-normalised float32 embedding (D,) of a file or waveform; (N, D) for a list of them.

        Waveforms are 1-D arrays of real numbers at `sr` Hz (default: the model's rate; int16 is taken as PCM);
        files are read whole and resampled when their rate differs. Anything else (NaN, complex, strings, an empty
        or 2-D array, a non-integer `sr`) is a VoxfastError saying what is wrong. Audio shorter than the front
        end's minimum (voxfast.eval.embeddings.MIN_SAMPLES) is repeat-padded to it, as `voxfast extract` does.
        """
        if sr is not None:
            sr = check_sample_rate(sr)
        if isinstance(audio, list | tuple):
            if not audio:
                return np.zeros((0, 0), np.float32)
            return np.stack([self._embed_one(a, sr, f"audio[{i}]") for i, a in enumerate(audio)])
        return self._embed_one(audio, sr, "waveform")

    def _embed_one(self, audio: Audio, sr: int | None, what: str) -> np.ndarray:
        wave = torch.from_numpy(pad_to_minimum(self._waveform(audio, sr, what))).to(self.device)
        with torch.inference_mode():
            emb = self.embedder(wave[None])
        return F.normalize(emb.float(), dim=1)[0].cpu().numpy()

    def score(self, a: Audio, b: Audio, sr: int | None = None) -> float:
        """Cosine similarity of the two embeddings (the score the trial lists are evaluated with)."""
        return float(np.dot(self.embed(a, sr), self.embed(b, sr)))

    def verify(self, a: Audio, b: Audio, sr: int | None = None, threshold: float | None = None) -> bool:
        """Same speaker? `score >= threshold`, by default the EER threshold stored in the checkpoint."""
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise VoxfastError("this checkpoint holds no decision threshold: evaluate it on a trial list first "
                               "(`voxfast eval --checkpoint CKPT --trials T`) or pass threshold=")
        return self.score(a, b, sr) >= threshold

    def _waveform(self, audio: Audio, sr: int | None, what: str) -> np.ndarray:
        """float32 samples at the model's rate; files are checked by the reader (AudioLoadError naming them)."""
        if isinstance(audio, str | Path):
            rate = audio_info(audio)[1]
            return resample(read_audio(audio), rate, self.sample_rate)
        return resample(check_waveform(audio, what), sr or self.sample_rate, self.sample_rate)


def load(checkpoint: str | Path, device: str = "auto") -> SpeakerModel:
    """The embedding network of a `voxfast train` checkpoint, ready to embed, score and verify."""
    from voxfast.tasks.speaker import embedder_from_state

    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, "cpu")
    embedder, cfg = embedder_from_state(state, checkpoint, dev)
    validation = state.get("validation") or {}
    threshold = validation.get("eer_threshold")
    if validation.get("protocol", "full") != "full":  # scores on another scale than score()'s plain cosine
        log.warning("%s: its stored threshold was measured with the %s protocol, not the full-utterance cosine that "
                    "verify() computes; pass verify(..., threshold=...)", checkpoint, validation["protocol"])
        threshold = None
    return SpeakerModel(embedder, cfg.data.sample_rate, dev, None if threshold is None else float(threshold))
