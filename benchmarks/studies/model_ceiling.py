"""How fast can an ONNX model alone run on this host: the ceiling a served pipeline cannot pass.

``python -m benchmarks.studies.model_ceiling [--model build/families/yolov8n/model.onnx] [--size 640]``:
random N×3×size×size inputs, ONNX Runtime on the CPU, no decoding, no serving:

- ``alone``: one session, one process, ``--threads`` intra-op threads each (1 and 2 by default), per
  image at each of ``--batches`` (medians of ``--rounds`` timed calls);
- ``together``: ``--processes`` one-thread sessions in their own processes at once (what the same
  number of one-thread TorchServe workers can do at most), images per second summed, per batch size.

Issue 28's goal 1 (docs/performance.md, "Workers and batch size") used it for YOLOv8n.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batch_of(count: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).random((count, 3, size, size), dtype=np.float32)


def ms_per_image(path: Path, threads: int, batch: int, size: int, rounds: int) -> float:
    """Median milliseconds per image of one session alone."""
    model = session(path, threads)
    feed = {model.get_inputs()[0].name: batch_of(batch, size)}
    model.run(None, feed)  # the first call allocates
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.run(None, feed)
        times.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(times)


def _loop(path: str, batch: int, size: int, seconds: float, rates) -> None:
    model = session(Path(path), 1)
    feed = {model.get_inputs()[0].name: batch_of(batch, size)}
    model.run(None, feed)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.run(None, feed)
        done += batch
    rates.put(done / (time.perf_counter() - start))


def together(path: Path, processes: int, batch: int, size: int, seconds: float) -> List[float]:
    """Images per second of each of ``processes`` one-thread sessions running at once."""
    rates = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_loop, args=(str(path), batch, size, seconds, rates))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [rates.get() for _ in workers]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.model_ceiling", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "build" / "families" / "yolov8n" / "model.onnx")
    p.add_argument("--size", type=int, default=640, help="side of the square input")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--threads", default="1,2", help="intra-op threads of the session alone")
    p.add_argument("--processes", type=int, default=2, help="one-thread sessions at once")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=12, help="per batch size, the sessions at once")
    args = p.parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(f"{args.model}: no such model (python -m benchmarks.families --families yolov8n exports it)")
    batches = [int(b) for b in args.batches.split(",")]
    found = {"model": str(args.model), "alone": {}, "together": {}}
    for threads in (int(t) for t in args.threads.split(",")):
        for batch in batches:
            ms = ms_per_image(args.model, threads, batch, args.size, args.rounds)
            found["alone"][f"{threads} thread(s), batch {batch}"] = {"ms_per_image": round(ms, 3),
                                                                      "images_per_s": round(1000 / ms, 1)}
    for batch in batches:
        rates = together(args.model, args.processes, batch, args.size, args.seconds)
        found["together"][f"{args.processes} one-thread processes, batch {batch}"] = {
            "images_per_s": round(sum(rates), 1), "each": [round(r, 1) for r in rates]}
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
