"""One heavy run at a time on this machine: the benchmarks and the soak test both take this lock,
so neither measures the other's load."""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Iterator

HEAVY_LOCK = Path("/tmp/tsvision-heavy.lock")


@contextlib.contextmanager
def heavy_run(timeout_s: float = 900, path: Path = HEAVY_LOCK) -> Iterator[None]:
    """Hold the machine-wide lock; wait up to ``timeout_s`` for it, then raise TimeoutError."""
    with open(path, "a") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} held by another heavy run for {timeout_s:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
