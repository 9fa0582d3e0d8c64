"""The progress line (images/s and an ETA) and the summary at the end of a job."""

from __future__ import annotations

import collections
import time
from typing import Any, Dict, Iterable, Optional, TextIO


def duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Counts rows as they come; ``line()`` says done/total, images/s, ETA and errors so far."""

    def __init__(self, total: int, stream: Optional[TextIO] = None, every: float = 2.0) -> None:
        self.total, self.stream, self.every = total, stream, every
        self.started = time.monotonic()
        self.first: float = 0.0  # when the first row came (Ray's start and the model actors' load before it)
        self.first_count = 0
        self.shown = -1  # how many rows the last progress line counted
        self.last_shown = 0.0
        self.done = 0
        self.statuses: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()

    def add(self, rows: Iterable[Dict[str, Any]]) -> None:
        rows = list(rows)
        if not self.first:
            self.first, self.first_count = time.monotonic(), len(rows)
        for row in rows:
            self.done += 1
            self.statuses[int(row["status"])] += 1
            if row.get("error_type"):
                self.errors[f"{int(row['status'])} {row['error_type']}"] += 1
        if self.stream is not None and time.monotonic() - self.last_shown >= self.every:
            self.show()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        """Images/s after the first rows came (the first block's images not counted)."""
        elapsed = time.monotonic() - self.first if self.first else 0.0
        return max(0, self.done - self.first_count) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        share = f" ({100.0 * self.done / self.total:.1f}%)" if self.total else ""
        eta = duration((self.total - self.done) / self.rate) if self.rate > 0 else "?"
        return (f"{self.done}/{self.total} images{share}, {self.rate:.1f} images/s, ETA {eta}, "
                f"{sum(self.errors.values())} errors")

    def show(self) -> None:
        self.last_shown, self.shown = time.monotonic(), self.done
        tty = getattr(self.stream, "isatty", lambda: False)()
        print(("\r" if tty else "") + "tsvision batch: " + self.line(), end="" if tty else "\n", file=self.stream,
              flush=True)

    def summary(self, skipped: int = 0, repeats: int = 0, where: str = "") -> str:
        elapsed = time.monotonic() - self.started
        lines = [f"images: {self.done} in {duration(elapsed)} ({self.rate:.1f} images/s){where}",
                 f"start: {self.first - self.started if self.first else elapsed:.1f} s to the first answers "
                 f"(Ray and the model actors), then {self.steady_rate:.1f} images/s",
                 "status: " + (", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())) or "none")]
        errors = sum(self.errors.values())
        lines.append(f"errors: {errors}" + (" (" + ", ".join(f"{k}: {n}" for k, n in self.errors.most_common()) + ")"
                                            if errors else ""))
        if skipped:
            lines.append(f"skipped: {skipped} already answered in the output (--resume)")
        if repeats:
            lines.append(f"repeated paths dropped: {repeats}")
        return "\n".join(lines)


