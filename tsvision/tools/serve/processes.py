"""Servers as processes: waiting until one is ready, and stopping one by process id (its whole tree,
politely first, by force after a timeout)."""

from __future__ import annotations

import signal
import time
from typing import Callable, Optional

import psutil


def stop_tree(pid: int, first_signal: int = signal.SIGTERM, timeout: float = 30, whole_tree: bool = True) -> None:
    """Send ``first_signal`` to ``pid`` (and, with ``whole_tree``, to its descendants), wait up to
    ``timeout`` seconds, then SIGKILL whatever is left of the tree."""
    try:
        root = psutil.Process(pid)
        tree = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for process in tree if whole_tree else [root]:
        try:
            process.send_signal(first_signal)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def wait_for(check: Callable[[], Optional[str]], timeout: float, interval: float = 0.5, what: str = "server") -> None:
    """Call ``check`` every ``interval`` seconds until it returns None (ready); each other answer says
    what is missing. An exception from ``check`` (the server exited) goes through; after ``timeout``
    seconds a TimeoutError names ``what`` and the last answer."""
    deadline, last = time.monotonic() + timeout, "not checked yet"
    while time.monotonic() < deadline:
        last = check()
        if last is None:
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s ({last})")
