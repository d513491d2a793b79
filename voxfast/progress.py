"""Progress bars only where a person watches: tqdm on a terminal, nothing in logs or CI."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, show: bool = True) -> Any:
    """A tqdm bar when stderr is a terminal (and `show`: rank 0 only), else a no-op with the same update/close."""
    if not show or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def track(items: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    """Iterate `items`, advancing a terminal-only progress bar."""
    bar = progress_bar(total, desc)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
