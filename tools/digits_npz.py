"""Write scikit-learn's bundled 8x8 handwritten digits as an .npz that `voxfast train --task image` reads.

The digits ship inside scikit-learn (no download), so they are the smallest real image set at hand for checking
that the image defaults suit small images: 1797 gray 8x8 images of 10 classes, pixel values 0-16.

    python tools/digits_npz.py digits.npz
    voxfast train --task image image.data=digits.npz

Pixels are scaled to 0-255 and stored as uint8 (the task's in-memory format, normalised per channel at training
time), so the file is 115 KB and reads without any pickle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_digits(out: str | Path) -> Path:
    """Write `images` (1797, 8, 8) uint8 and `labels` (1797,) int64 to `out`; return its path."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # a tool, not a voxfast dependency
        raise SystemExit("this tool needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0-16 -> 0-255, exact at both ends
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=digits.target.astype(np.int64))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="digits.npz", help="the .npz to write (default: digits.npz)")
    path = write_digits(parser.parse_args().out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
