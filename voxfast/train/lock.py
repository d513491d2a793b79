"""One run per run folder: an exclusive lock that names its holder.

Two runs writing one `train.out_dir` interleave metrics.jsonl, overwrite config.yaml and each other's
checkpoints. The lock is an `flock` on `RUN/run.lock`, so the kernel drops it when its process dies however it
dies; the file also holds the holder's PID, host and start time, for the message the second run prints and for
the log line of a run that takes over the lock a killed run left behind.

The lock is held per process and counted: `voxfast train` takes it around the whole run (config, training,
final evaluation) and the trainer's `fit` takes it again, so the API and the CLI are both covered.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from voxfast.errors import VoxfastError

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
_held: dict[Path, tuple[int, int]] = {}  # lock file -> (descriptor, times taken) in this process


@contextlib.contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold the run folder's lock for the block; a folder locked by another live process is refused."""
    path = (Path(folder) / LOCK_NAME).resolve()
    if path in _held:
        fd, count = _held[path]
        _held[path] = (fd, count + 1)
    else:
        _held[path] = (_acquire(path), 1)
    try:
        yield
    finally:
        fd, count = _held[path]
        if count > 1:
            _held[path] = (fd, count - 1)
        else:
            del _held[path]
            _release(fd)


def _acquire(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise VoxfastError(f"{path.parent} is in use by another run ({holder}); wait for it to finish or stop it, "
                           "or give this run another train.out_dir / --out") from None
    left = _holder(fd)
    if left:  # a clean release empties the file: this holder died without releasing
        log.warning("%s: took over the run lock left by %s, which is no longer running (killed or crashed)",
                    path.parent, left)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    return fd


def _holder(fd: int) -> str:
    """The holder line the lock file holds ('' when empty)."""
    return os.pread(fd, 256, 0).decode(errors="replace").strip()


def _release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # empty: the next run knows the last one ended cleanly
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
