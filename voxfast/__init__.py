"""voxfast: fast speaker-verification training and evaluation.

`voxfast.load(checkpoint)` gives a model that embeds, scores and verifies recordings (see voxfast.api).
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so `import voxfast` (and the CLI's --help) does not pay for importing torch.
    if name == "load":
        from voxfast.api import load

        return load
    raise AttributeError(f"module 'voxfast' has no attribute {name!r}")
