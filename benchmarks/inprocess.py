"""In-process throughput of the whole pipeline: bytes -> decode -> preprocess -> infer ->
postprocess -> JSON text, through the handler's ``handle`` with TorchServe's own ``Context``
(``LocalWorker``), as a TorchServe worker calls it, without the frontend and the socket."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Iterable, List, Optional

from tsvision.serving import VisionHandler
from tsvision.tools.archive.local_worker import LocalWorker


def load_task(folder: Path, model_file: str, overrides: Optional[dict] = None, batch_size: int = 16) -> LocalWorker:
    """A handler over an export folder (``settings.json``, labels, ``model_file``), with ``overrides``
    of its settings; the handler warms its model up as it starts, as in a worker."""
    settings = {**json.loads((Path(folder) / "settings.json").read_text()), **(overrides or {})}
    return LocalWorker(VisionHandler, Path(folder), model_file, {"batchSize": batch_size, "handler": settings})


def close(worker: LocalWorker) -> None:
    """End the handler's preparation threads (a worker's end at exit does the same)."""
    task = getattr(worker.handler, "task", None)
    if task is not None and hasattr(task, "close"):
        task.close()


def measure_batches(worker: LocalWorker, photo: bytes, batch_sizes: Iterable[int], seconds: float) -> List[dict]:
    """Images per second and per-batch latency (median) for each batch size, after warm-up batches."""
    results = []
    for batch_size in batch_sizes:
        for _ in range(3):  # warm-up: a runtime may specialise on a new batch size over its first calls
            answer_all(worker, photo, batch_size)
        durations = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(durations) < 3:
            tick = time.perf_counter()
            answer_all(worker, photo, batch_size)
            durations.append(time.perf_counter() - tick)
        total = sum(durations)
        results.append({"batch_size": batch_size, "batches": len(durations),
                        "images_per_s": round(batch_size * len(durations) / total, 2),
                        "latency_ms_p50": round(statistics.median(durations) * 1000, 2)})
    return results


def answer_all(worker: LocalWorker, photo: bytes, batch_size: int) -> None:
    """One batch of ``batch_size`` requests of ``photo`` (JPEG); every answer must be a 200."""
    rows = [{"body": photo} for _ in range(batch_size)]
    headers = [{"body": {"content-type": "image/jpeg"}} for _ in range(batch_size)]
    for response in worker.predict(rows, headers):
        if response.status != 200:
            raise RuntimeError(f"in-process answer {response.status}: {str(response.body)[:300]}")
