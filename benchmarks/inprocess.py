"""In-process throughput of the whole pipeline: bytes -> decode -> preprocess -> infer ->
postprocess -> JSON text, through ``answer_requests`` exactly as a TorchServe worker calls it."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Iterable, List

from tsvision.serving.service import answer_requests
from tsvision.serving.tasks import load_export


def load_task(folder: Path, model_file: str, overrides: dict | None = None):
    return load_export(folder, model_file, **(overrides or {}))


def measure_batches(task, photo: bytes, batch_sizes: Iterable[int], seconds: float) -> List[dict]:
    """Images per second and per-batch latency (median) for each batch size, after one warm-up batch."""
    results = []
    for batch_size in batch_sizes:
        rows = [{"body": photo} for _ in range(batch_size)]
        types = [{"body": "image/jpeg"}] * batch_size
        for _ in range(3):  # warm-up: a runtime may specialise on a new batch size over its first calls
            answer_all(task, rows, types)
        durations = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(durations) < 3:
            tick = time.perf_counter()
            answer_all(task, rows, types)
            durations.append(time.perf_counter() - tick)
        total = sum(durations)
        results.append({"batch_size": batch_size, "batches": len(durations),
                        "images_per_s": round(batch_size * len(durations) / total, 2),
                        "latency_ms_p50": round(statistics.median(durations) * 1000, 2)})
    return results


def answer_all(task, rows, types) -> None:
    for response in answer_requests(task, rows, types):
        if response.status != 200:
            raise RuntimeError(f"in-process answer {response.status}: {response.body}")
        json.dumps(response.body)
