"""Atomic text writes shared by every list, index and JSON file voxfast writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A text file that replaces `path` only when the block ends without error (temp file in the same folder,
    fsync, rename): a crash leaves the old file or the new one, never half of one. The file gets the permissions
    a plain `open` would (0644 under the usual umask), not mkstemp's 0600."""
    with _atomic(path, binary=False) as f:
        yield f


@contextlib.contextmanager
def atomic_bytes(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """:func:`atomic_text` for bytes: for writers that build large blocks of encoded text themselves (a score file
    of ten million lines), which a text layer would only copy again."""
    with _atomic(path, binary=True) as f:
        yield f


@contextlib.contextmanager
def _atomic(path: str | os.PathLike[str], binary: bool) -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask
