"""Detection error trade-off (DET) curves: the miss / false-alarm rates of every threshold, and their plot.

The plot uses normal-deviate (probit) axes, as NIST does: for Gaussian-like scores the curve is nearly a
straight line, and the low-error region every system is judged in is spread out instead of squeezed into
a corner. matplotlib is optional (``pip install 'voxfast[plot]'``); the curve itself needs only numpy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from scipy.stats import norm

from voxfast.errors import VoxfastError
from voxfast.eval.metrics import error_rates

__all__ = ["det_curve", "plot_det"]

_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
_STEP = 0.002  # probit units kept apart when thinning a curve: ~1500 steps across the axis, below a pixel


def det_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p_miss, p_fa)`` at every operating point, from accepting everything (0, 1) to rejecting all (1, 0).

    The points are those of :func:`voxfast.eval.metrics.error_rates`, so the EER read off this curve is
    the EER the metrics report. ``p_miss`` never falls and ``p_fa`` never rises along the curve.

    Raises:
        VoxfastError: invalid scores or labels, or a class without trials (see ``error_rates``).
    """
    _, p_miss, p_fa = error_rates(scores, labels)
    return p_miss, p_fa


def _probit(p: np.ndarray) -> np.ndarray:
    """Normal deviates of probabilities, with 0 and 1 pushed far off the axes instead of to -inf / inf."""
    return np.clip(norm.ppf(p), -10.0, 10.0)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep a point only where it moves a curve by at least ``_STEP`` on either axis.

    A curve of 10 M trials has millions of points that land on the same pixel; drawing them all takes
    matplotlib many seconds. The first and last points are always kept.
    """
    cell_x, cell_y = np.floor(x / _STEP), np.floor(y / _STEP)
    keep = np.ones(x.size, dtype=bool)
    keep[1:-1] = (cell_x[1:-1] != cell_x[:-2]) | (cell_y[1:-1] != cell_y[:-2])
    return x[keep], y[keep]


def plot_det(
    path: str | os.PathLike[str],
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    eer_points: Mapping[str, float] | None = None,
) -> None:
    """Write a PNG of DET curves on normal-deviate axes (0.1 % to 50 % on both).

    Args:
        path: the PNG to write.
        curves: legend name -> ``(p_miss, p_fa)``, e.g. from :func:`det_curve`.
        eer_points: legend name -> EER as a fraction, marked on that curve's diagonal.

    Raises:
        VoxfastError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise VoxfastError("plotting a DET curve needs matplotlib: pip install 'voxfast[plot]'") from None
    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import
    import matplotlib.pyplot as plt

    eer_points = eer_points or {}
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    try:
        for name, (p_miss, p_fa) in curves.items():
            (line,) = ax.plot(*_thin(_probit(np.asarray(p_fa)), _probit(np.asarray(p_miss))), label=name)
            if name in eer_points:
                eer = eer_points[name]
                at = float(_probit(np.asarray(eer)))
                ax.plot(at, at, "o", color=line.get_color(), label=f"{name}: EER {100 * eer:.2f} %")
        ticks = norm.ppf(_TICKS)
        labels = [f"{100 * t:g}" for t in _TICKS]
        ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels, xlim=(ticks[0], ticks[-1]),
               ylim=(ticks[0], ticks[-1]), xlabel="false alarm rate (%)", ylabel="miss rate (%)", aspect="equal")
        ax.grid(True, linestyle=":")
        ax.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
