"""Where one request's time goes: ``python -m benchmarks.budget`` (the ``budget`` step of ``bash run.sh bench``).

Per default archive (classification, segmentation, detection; ONNX Runtime, the archive defaults) and
for 1 and 16 clients:

- **in-process stages**, serially on one thread (so each figure is CPU time): decoding the JPEG as
  ``decode_image`` does (PIL ``open`` + ``load`` + EXIF), the task's ``prepare`` (resize, crop or
  letterbox), collating (normalise + stack), the model (``runtime.run``), finishing (the task's
  post-processing) and encoding (``answers`` + ``json.dumps``): at batch 1 (what one client gets)
  and per image at the archives' default batch size (what 16 clients fill);
- **served**: one TorchServe with the archives and the empty handler (``floor_handler.py``, the
  frontend and IPC with no model), wrk at 1 and 16 clients: p50 at 1 client; at 16 clients the CPU
  time the server's processes spent per answered request (``psutil``, before and after the run): the
  Java frontend's and the Python workers' apart. Other processes on the machine do not count in it.

At 1 client, "rest" is the p50 less the empty handler's p50 (frontend, IPC and the batch delay) and
the stages; at 16 clients, the worker's CPU per request less the stages (the handler's own
bookkeeping, threads, message decoding and encoding in the worker).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import psutil
from PIL import Image, ImageOps

from benchmarks.inprocess import close, load_task
from benchmarks.load import drain, run_wrk, wrk_path
from benchmarks.lock import heavy_run
from benchmarks.models import build_floor, build_ours, prepare_exports
from benchmarks.photo import make_photo
from benchmarks.warmup import warm_batch_sizes
from tsvision.tools.export.model_files import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY, DEFAULT_WORKERS
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("classification", "segmentation", "detection")
STAGES = ("decode", "resize", "collate", "model", "post", "encode")
FLOOR = "bench_floor"


def decode(photo: bytes) -> Image.Image:
    """The photo decoded as ``tsvision.serving.images.decode_image`` decodes a JPEG."""
    image = Image.open(io.BytesIO(photo))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # as decode_image since 2026-12-03: no copy of upright photos
    return image if image.mode == "RGB" else image.convert("RGB")


def timed(function: Callable[[], object], rounds: int, warm: int = 1) -> float:
    """Median ms of ``rounds`` calls after ``warm`` unrecorded ones (the benchmarks' one timing loop)."""
    for _ in range(warm):
        function()
    times = []
    for _ in range(rounds):
        tick = time.perf_counter()
        function()
        times.append(time.perf_counter() - tick)
    return statistics.median(times) * 1000


def stages(task, photo: bytes, batch: int, rounds: int) -> Dict[str, float]:
    """ms per image of each stage at ``batch`` images, serially."""
    image = decode(photo)
    images = [image] * batch
    found = {"decode": timed(lambda: decode(photo), rounds),
             "resize": timed(lambda: task.prepare(image), rounds)}
    found["collate"] = max(0.0, timed(lambda: task.prepare_batch(images), rounds) / batch - found["resize"])

    def model() -> None:
        task.infer(task.prepare_batch(images))

    found["model"] = max(0.0, timed(model, rounds) / batch - found["resize"] - found["collate"])
    finishing = []
    for _ in range(rounds):  # one inferred batch at a time: a segmentation batch's logits are large
        inferred = task.infer(task.prepare_batch(images))
        tick = time.perf_counter()
        task.finish_batch(inferred)
        finishing.append(time.perf_counter() - tick)
    found["post"] = statistics.median(finishing) * 1000 / batch
    results = task.finish_batch(task.infer(task.prepare_batch(images)))
    found["encode"] = timed(lambda: json.dumps(task.answers(results)), rounds) / batch
    return {key: round(value, 2) for key, value in found.items()}


def inprocess(folders: Dict[str, Path], photo: bytes, rounds: int) -> Dict[str, dict]:
    found = {}
    for task_name, folder in folders.items():
        worker = load_task(folder, "model.onnx", {"preprocess_threads": 1}, DEFAULT_BATCH_SIZE)
        try:
            found[task_name] = {f"batch_{b}": stages(worker.handler.task, photo, b, rounds)
                                for b in (1, DEFAULT_BATCH_SIZE)}
        finally:
            close(worker)
        print(f"  stages     {task_name:<14} {json.dumps(found[task_name])}", flush=True)
    return found


def cpu_seconds(pid: int) -> Dict[str, float]:
    """CPU seconds (user + system) so far of TorchServe's frontend (``pid``) and of its workers (its children)."""
    frontend = psutil.Process(pid)
    workers = 0.0
    for child in frontend.children(recursive=True):
        try:
            times = child.cpu_times()
            workers += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    times = frontend.cpu_times()
    return {"frontend": times.user + times.system, "workers": workers}


def served(folders: Dict[str, Path], photo_path: Path, out: Path, seconds: float) -> Dict[str, dict]:
    store = out / "store"
    build_floor(FLOOR, store, DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY, DEFAULT_WORKERS)
    for task_name, folder in folders.items():
        build_ours(folder, "onnx", f"budget_{task_name}", store, DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY,
                   DEFAULT_WORKERS)
    names = {FLOOR: "floor", **{f"budget_{t}": t for t in folders}}
    server = TorchServe(store, out / "torchserve", models=[f"{name}.mar" for name in names])
    found: Dict[str, dict] = {}
    try:
        server.start(timeout=600)
        headers = server.headers("inference")
        for model, label in names.items():
            url = f"{server.inference_url}/predictions/{model}"
            warm_batch_sizes(url, photo_path.read_bytes(), headers, DEFAULT_BATCH_SIZE, budget_s=30)
            found[label] = {}
            for clients in (1, 16):
                run_wrk(url, photo_path, headers, clients, 2)
                drain(url, photo_path, headers)
                before = cpu_seconds(server.pid)
                measured = run_wrk(url, photo_path, headers, clients, seconds)
                drain(url, photo_path, headers)
                after = cpu_seconds(server.pid)
                answered = max(1, measured["requests"] + 1)  # wrk's and the drain's
                found[label][f"c{clients}"] = {
                    "req_s": measured["throughput"], "p50_ms": (measured["latency_ms"] or {}).get("p50"),
                    **{f"{key}_cpu_ms": round((after[key] - before[key]) * 1000 / answered, 2) for key in after}}
                print(f"  served     {label:<14} c={clients:<3} {measured['throughput']:7.1f} req/s", flush=True)
    finally:
        server.stop()
    return found


def markdown(data: dict) -> str:
    """The budget table: per task, one row at 1 client (latency) and one at 16 (CPU per request), ms."""
    floor = data["served"]["floor"]
    batch, workers = data.get("batch_size", 8), data.get("workers", 1)  # runs before 2026-12-04: one worker of 8
    lines = [f"Measured {data['started']} (`python -m benchmarks.budget`; {data['cores']} cores; ONNX Runtime; "
             f"the 1280×720 JPEG; archive defaults: {workers} worker(s) of batch {batch}, delay 20 ms). Stages: "
             f"in-process, serially on one thread, at batch 1 (1 client) and per image at batch {batch} (what 16 "
             "clients fill). 1 client: the "
             "p50, the empty handler's p50 (frontend, IPC, batch delay), the stages, the rest. 16 clients: CPU ms "
             "per answered request of TorchServe's Java frontend and of the worker (the empty handler's beside "
             "them: the floor), the stages, and the worker's CPU left after them.", "",
             "| task | clients | served | floor | frontend CPU | worker CPU | decode | resize | collate | model "
             "| post | encode | rest |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task_name, budget in data["inprocess"].items():
        point, spent = data["served"][task_name]["c1"], [budget["batch_1"][stage] for stage in STAGES]
        rest = point["p50_ms"] - floor["c1"]["p50_ms"] - sum(spent)
        lines.append(f"| {task_name} | 1 | {point['p50_ms']:.1f} ms p50 | {floor['c1']['p50_ms']:.1f} ms p50 | | | "
                     + " | ".join(f"{value:.1f}" for value in spent) + f" | {rest:.1f} |")
        point, spent = data["served"][task_name]["c16"], [budget[f"batch_{batch}"][stage] for stage in STAGES]
        base = floor["c16"]
        rest = point["workers_cpu_ms"] - sum(spent)
        lines.append(f"| {task_name} | 16 | {point['req_s']:.1f} req/s | {base['req_s']:.0f} req/s: "
                     f"{base['frontend_cpu_ms']:.1f} + {base['workers_cpu_ms']:.1f} ms CPU | "
                     f"{point['frontend_cpu_ms']:.1f} | {point['workers_cpu_ms']:.1f} | "
                     + " | ".join(f"{value:.1f}" for value in spent) + f" | {rest:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--exports", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per stage")
    parser.add_argument("--seconds", type=float, default=8, help="per served point")
    parser.add_argument("--no-served", action="store_true", help="in-process stages only")
    parser.add_argument("--out", type=Path, default=None, help="default results/budget-<time>")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "results" / time.strftime("budget-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTORCH_TENSOREXPR"] = "0"  # as benchmarks.run serves
    with heavy_run(timeout_s=1800):
        photo = make_photo()
        photo_path = out / "photo.jpg"
        photo_path.write_bytes(photo)
        folders = {task: prepare_exports(task, args.exports) for task in args.tasks.split(",") if task}
        data = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count() or 1,
                "batch_size": DEFAULT_BATCH_SIZE, "workers": DEFAULT_WORKERS,
                "inprocess": inprocess(folders, photo, args.rounds)}
        if not args.no_served:
            wrk_path()
            data["served"] = served(folders, photo_path, out, args.seconds)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    if "served" in data:
        (out / "results.md").write_text(markdown(data))
        print(markdown(data))
    print(f"budget: done -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
