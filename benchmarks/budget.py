"""Where one request's time goes: ``python -m benchmarks.budget`` (the ``budget`` step of ``bash run.sh bench``).

Per default archive (classification, segmentation, detection; ONNX Runtime, the archive defaults) and
for 1 and 16 clients:

- **in-process stages**, serially on one thread (so each figure is CPU time): decoding the JPEG as
  ``decode_image`` does (PIL ``open`` + ``load`` + EXIF), the task's ``prepare`` (resize, crop or
  letterbox), collating (normalise + stack), the model (``runtime.run``), finishing (the task's
  post-processing) and encoding (``answers`` + ``json.dumps``): at batch 1 (what one client gets)
  and per image at batch 8 (what 16 clients fill);
- **served**: one TorchServe with the archives and the empty handler (``floor_handler.py``, the
  frontend and IPC with no model), wrk at 1 and 16 clients: p50 at 1 client; CPU per request at 16
  clients (cores × 1000 / req/s, the machine being saturated).

"Frontend + IPC" is the empty handler's figure; "not accounted" is what the served figure leaves
after the floor and the stages (thread hand-offs, contention with wrk and the frontend, batching).
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

from PIL import Image, ImageOps

from benchmarks.inprocess import close, load_task
from benchmarks.load import drain, run_wrk, wrk_path
from benchmarks.lock import heavy_run
from benchmarks.models import build_floor, build_ours, prepare_exports
from benchmarks.photo import make_photo
from benchmarks.warmup import warm_batch_sizes
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("classification", "segmentation", "detection")
STAGES = ("decode", "resize", "collate", "model", "post", "encode")
FLOOR = "bench_floor"


def decode(photo: bytes) -> Image.Image:
    """The photo decoded as ``tsvision.serving.images.decode_image`` decodes a JPEG."""
    image = Image.open(io.BytesIO(photo))
    image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


def timed(function: Callable[[], object], rounds: int) -> float:
    """Median ms of ``rounds`` calls after one unrecorded call."""
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
    inferred = [task.infer(task.prepare_batch(images)) for _ in range(rounds + 1)]
    found["post"] = timed(lambda: task.finish_batch(inferred.pop()), rounds) / batch
    results = task.finish_batch(task.infer(task.prepare_batch(images)))
    found["encode"] = timed(lambda: json.dumps(task.answers(results)), rounds) / batch
    return {key: round(value, 2) for key, value in found.items()}


def inprocess(folders: Dict[str, Path], photo: bytes, rounds: int) -> Dict[str, dict]:
    found = {}
    for task_name, folder in folders.items():
        worker = load_task(folder, "model.onnx", {"preprocess_threads": 1}, 8)
        try:
            found[task_name] = {f"batch_{b}": stages(worker.handler.task, photo, b, rounds) for b in (1, 8)}
        finally:
            close(worker)
        print(f"  stages     {task_name:<14} {json.dumps(found[task_name])}", flush=True)
    return found


def served(folders: Dict[str, Path], photo_path: Path, out: Path, seconds: float) -> Dict[str, dict]:
    store = out / "store"
    build_floor(FLOOR, store, 8, 20, 1)
    for task_name, folder in folders.items():
        build_ours(folder, "onnx", f"budget_{task_name}", store, 8, 20, 1)
    names = {FLOOR: "floor", **{f"budget_{t}": t for t in folders}}
    server = TorchServe(store, out / "torchserve", models=[f"{name}.mar" for name in names])
    found: Dict[str, dict] = {}
    try:
        server.start(timeout=600)
        headers = server.headers("inference")
        for model, label in names.items():
            url = f"{server.inference_url}/predictions/{model}"
            warm_batch_sizes(url, photo_path.read_bytes(), headers, 8, budget_s=30)
            found[label] = {}
            for clients in (1, 16):
                run_wrk(url, photo_path, headers, clients, 2)
                drain(url, photo_path, headers)
                measured = run_wrk(url, photo_path, headers, clients, seconds)
                drain(url, photo_path, headers)
                found[label][f"c{clients}"] = {"req_s": measured["throughput"],
                                               "p50_ms": (measured["latency_ms"] or {}).get("p50")}
                print(f"  served     {label:<14} c={clients:<3} {measured['throughput']:7.1f} req/s", flush=True)
    finally:
        server.stop()
    return found


def markdown(data: dict) -> str:
    """The budget table: one block of rows per task, ms per request."""
    cores = data["cores"]
    floor = data["served"]["floor"]
    lines = [f"Measured {data['started']} (`python -m benchmarks.budget`; {cores} cores; ONNX Runtime; 1280×720 JPEG; "
             "archive defaults: batch 8, delay 20 ms, one worker). In-process stages serially on one thread at "
             "batch 1 (1 client) and per image at batch 8 (16 clients); served: p50 at 1 client, CPU per request "
             f"({cores} × 1000 / req/s) at 16 clients. Floor = the empty handler; decode = the photo's decode.", "",
             "| task | clients | served | frontend + IPC (floor) | decode | resize | collate | model | post | encode "
             "| not accounted |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task_name, budget in data["inprocess"].items():
        for clients, batch in ((1, "batch_1"), (16, "batch_8")):
            point, floor_point = data["served"][task_name][f"c{clients}"], floor[f"c{clients}"]
            if clients == 1:
                total, base = point["p50_ms"], floor_point["p50_ms"]
                what = "p50"
            else:
                total, base = cores * 1000 / point["req_s"], cores * 1000 / floor_point["req_s"]
                what = "CPU"
            spent = [budget[batch][stage] for stage in STAGES]
            rest = total - base - sum(spent)
            lines.append(f"| {task_name} | {clients} | {total:.1f} ms {what} | {base:.1f} | "
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
