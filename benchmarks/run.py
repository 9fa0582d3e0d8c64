"""The core performance run: ``python -m benchmarks.run`` (the first part of ``bash run.sh bench``,
whose whole is ``benchmarks.suite``).

For each task and backend, side by side in one run: in-process throughput of the whole pipeline
by batch size; served throughput and latency at several concurrencies through wrk; picture
answers (PNG, JPEG) served beside JSON; the same weights behind TorchServe's stock handler with
the same server settings; TorchServe's floor (an empty handler); response sizes and worker
memory. Writes ``results/bench-<time>/`` (results.json, results.md, throughput.png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

import psutil

from benchmarks import report
from benchmarks.inprocess import close, load_task, measure_batches
from benchmarks.load import drain, run_wrk, wrk_path
from benchmarks.lock import HEAVY_LOCK, heavy_run
from benchmarks.models import (
    MODEL_FILES,
    STOCK_BATCH_SIZE,
    STOCK_WORKERS,
    build_floor,
    build_ours,
    build_stock,
    prepare_exports,
)
from benchmarks.photo import make_photo
from benchmarks.warmup import warm_batch_sizes
from tsvision.serving.settings import parse_overrides
from tsvision.tools.export.model_files import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY, DEFAULT_WORKERS
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
FULL = {"concurrency": "1,8,32", "seconds": 6.0, "warmup": 2.0, "inprocess_seconds": 3.0, "shape_warmup": 120.0}
MAX_POINT_SECONDS = 30.0
QUICK = {"concurrency": "1,8", "seconds": 2.0, "warmup": 1.0, "inprocess_seconds": 1.0, "shape_warmup": 20.0}


def machine() -> dict:
    import onnxruntime
    import torch
    import ts

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return {"cpu": cpu, "cores": psutil.cpu_count(), "ram_gib": psutil.virtual_memory().total / 2**30,
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "torchserve": getattr(ts, "__version__", "0.12")}


FLOOR = {"task": "torchserve", "variant": "empty-handler", "backend": "none", "model": "bench_empty"}


def variants(tasks: List[str], backends: List[str], stock: bool, floor: bool = True) -> List[dict]:
    """Ours per task and backend, the stock peer per task, and last the empty handler (TorchServe's floor)."""
    chosen = []
    for task in tasks:
        for backend in backends:
            chosen.append({"task": task, "variant": f"tsvision-{backend}", "backend": backend,
                           "model": f"bench_{task}_{backend}"})
        if stock:
            chosen.append({"task": task, "variant": "stock-torchscript", "backend": "torchscript",
                           "model": f"bench_{task}_stock"})
    return chosen + ([dict(FLOOR)] if floor else [])


def probe(server: TorchServe, model: str, photo: bytes) -> dict:
    """One request: did the model answer, how large is the answer, what batch did it run in."""
    response = server.predict(model, photo, content_type="image/jpeg", timeout=120)
    try:
        items = len(json.loads(response.content))  # top-k entries, boxes, or the mask answer's keys
    except ValueError:
        items = None
    return {"status": response.status_code, "body_bytes": len(response.content), "json_items": items,
            "content_type": response.headers.get("Content-Type", ""), "excerpt": response.text[:160]}


def worker_rss_mb(server: TorchServe, model: str) -> float:
    total = 0
    for pid in server.worker_pids(model):
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / 2**20, 1)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="classification,segmentation,detection")
    parser.add_argument("--backends", default="torchscript,onnx,pt2",
                        help="of: " + ",".join(MODEL_FILES) + " (pt2 compiles once, minutes per model, "
                        "then reuses --exports)")
    parser.add_argument("--no-stock", action="store_true", help="skip TorchServe's stock handlers")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the empty handler that measures TorchServe's own cost")
    parser.add_argument("--concurrency", help="default 1,8,32 (--quick: 1,8)")
    parser.add_argument("--seconds", type=float, help="per served measurement, default 6 (--quick: 2)")
    parser.add_argument("--warmup", type=float,
                        help="unrecorded load before each served measurement, default 2 (--quick: 1)")
    parser.add_argument("--shape-warmup", type=float, help="seconds at most per model for bursts of every batch size "
                        "before it is measured (benchmarks/warmup.py), default 120 (--quick: 20)")
    parser.add_argument("--batch-sizes", default="1,8", help="in-process batch sizes")
    parser.add_argument("--pictures", default="png,jpeg",
                        help="picture answers (Accept: image/...) measured served for "
                        "our ONNX models; '' skips them")
    parser.add_argument("--picture-clients", type=int, default=8,
                        help="clients for the picture points (JSON at the same "
                        "count, from --concurrency, is the baseline)")
    parser.add_argument("--inprocess-seconds", type=float, help="per batch size, default 3 (--quick: 1)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="served batch size (ours and the floor; default: tsvision archive's)")
    parser.add_argument("--max-batch-delay", type=int, default=DEFAULT_MAX_BATCH_DELAY, help="ms (ours and stock)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="workers per model (ours and the floor; default: tsvision archive's)")
    parser.add_argument("--stock-workers", type=int, default=STOCK_WORKERS,
                        help=f"workers per stock-handler model (default {STOCK_WORKERS}: its best; see STOCK_WORKERS)")
    parser.add_argument("--stock-batch-size", type=int, default=STOCK_BATCH_SIZE,
                        help=f"stock-handler batch size (default {STOCK_BATCH_SIZE})")
    parser.add_argument("--torchscript-fuser", action="store_true",
                        help="leave TorchScript's NNC fuser on in the server (off by default: PYTORCH_TENSOREXPR=0, "
                             "without which the stock handlers stall for seconds on every new batch size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="handler setting for our archives and in-process runs, e.g. --set threads=1")
    parser.add_argument("--exports", type=Path, default=ROOT / "build" / "bench",
                        help="exported models, reused between runs")
    parser.add_argument("--fresh", action="store_true", help="export the models again")
    parser.add_argument("--out", type=Path, help="default results/bench-<time>")
    parser.add_argument("--quick", action="store_true", help="smoke test: shorter points, concurrency 1,8")
    parser.add_argument("--update-docs", action="store_true", help=f"write the table into {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    print(f"bench: waiting for {HEAVY_LOCK} if another heavy run (a benchmark, the soak test) holds it", flush=True)
    with heavy_run(timeout_s=1800):
        return benchmark(args, argv if argv is not None else sys.argv[1:])


def benchmark(args: argparse.Namespace, argv: List[str]) -> int:
    """Run every measurement ``args`` asks for and write the results; ``argv`` is recorded with them."""
    started = time.time()
    tasks = [t for t in args.tasks.split(",") if t]
    backends = [b for b in args.backends.split(",") if b]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    pictures = [p for p in args.pictures.split(",") if p]
    overrides = parse_overrides(args.overrides)
    out = args.out or ROOT / "results" / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    wrk_path()  # fail early, before minutes of work
    chosen = variants(tasks, backends, not args.no_stock, not args.no_floor)
    points = len(chosen) * len(concurrency)
    print(f"bench: {len(chosen)} models x {len(concurrency)} concurrencies, about "
          f"{points * (args.seconds + args.warmup) / 60:.1f} min of load plus exports, in-process and start-up "
          f"-> {out}", flush=True)

    if not args.torchscript_fuser:
        os.environ["PYTORCH_TENSOREXPR"] = "0"  # inherited by the TorchServe frontend and its workers
    photo = make_photo()
    photo_path = out / "photo.jpg"
    photo_path.write_bytes(photo)
    folders = {task: prepare_exports(task, args.exports, args.fresh, pt2="pt2" in backends) for task in tasks}

    results = []
    for variant in chosen:
        result = {k: variant[k] for k in ("task", "variant", "backend", "model")}
        if variant["variant"].startswith("tsvision-"):
            worker = load_task(folders[variant["task"]], MODEL_FILES[variant["backend"]], overrides)
            result["inprocess"] = measure_batches(worker, photo, batch_sizes, args.inprocess_seconds)
            close(worker)
            best = max(r["images_per_s"] for r in result["inprocess"])
            print(f"  in-process {variant['task']:<14} {variant['variant']:<22} {best:8.1f} img/s (best batch)",
                  flush=True)
        results.append(result)

    store = out / "store"
    for variant in chosen:
        if variant == FLOOR:
            build_floor(variant["model"], store, args.batch_size, args.max_batch_delay, args.workers)
            continue
        folder = folders[variant["task"]]
        if variant["variant"].startswith("stock"):
            build_stock(folder, variant["task"], variant["model"], store, args.stock_batch_size, args.max_batch_delay,
                        args.stock_workers)
        else:
            build_ours(folder, variant["backend"], variant["model"], store, args.batch_size, args.max_batch_delay,
                       args.workers, overrides)

    server = TorchServe(store, out / "torchserve", models=[f"{v['model']}.mar" for v in chosen])
    try:
        server.start(timeout=600)
        headers = server.headers("inference")
        for variant, result in zip(chosen, results):
            url = f"{server.inference_url}/predictions/{variant['model']}"
            result["probe"] = probe(server, variant["model"], photo)
            batch_size = args.stock_batch_size if variant["variant"].startswith("stock") else args.batch_size
            result["warmup"] = warm_batch_sizes(url, photo, headers, batch_size, budget_s=args.shape_warmup)
            print(f"  warm-up    {variant['task']:<14} {variant['variant']:<22} {result['warmup']['rounds']} bursts "
                  f"in {result['warmup']['seconds']} s", flush=True)
            result["served"] = []
            rate = None
            for connections in concurrency:
                # wrk counts only the requests that complete within the run: a slow model at many
                # clients needs a run several times its queueing time (clients / rate) to count any.
                seconds = (args.seconds if not rate
                           else min(MAX_POINT_SECONDS, max(args.seconds, 3 * connections / rate)))
                run_wrk(url, photo_path, headers, connections, args.warmup)
                drain(url, photo_path, headers)  # the warm-up's leftover requests are not the measurement's
                measured = run_wrk(url, photo_path, headers, connections, seconds)
                drain(url, photo_path, headers)
                rate = measured["throughput"] or rate
                result["served"].append(measured)
                print(f"  served     {variant['task']:<14} {variant['variant']:<22} c={connections:<3} "
                      f"{measured['throughput']:7.1f} req/s  p50 {(measured['latency_ms'] or {}).get('p50', 0):7.1f} ms"
                      + (f"  {measured['failed']} failed" if measured["failed"] else ""), flush=True)
            if variant["backend"] == "onnx" and pictures:
                result["pictures"] = {}
                for kind in pictures:
                    accept = {**headers, "Accept": f"image/{kind}"}
                    run_wrk(url, photo_path, accept, args.picture_clients, args.warmup)
                    drain(url, photo_path, headers)
                    measured = run_wrk(url, photo_path, accept, args.picture_clients, args.seconds)
                    drain(url, photo_path, headers)
                    result["pictures"][kind] = measured
                    print(f"  picture    {variant['task']:<14} {kind:<22} c={args.picture_clients:<3} "
                          f"{measured['throughput']:7.1f} req/s  {measured['bytes_per_response'] or 0:,} B per answer"
                          + (f"  {measured['failed']} failed" if measured["failed"] else ""), flush=True)
            result["rss_mb"] = worker_rss_mb(server, variant["model"])
    finally:
        server.stop()

    data = {
        "command": "python -m benchmarks.run " + shlex.join(argv),
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "machine": machine(),
        "config": {"tasks": tasks, "variants": list(dict.fromkeys(v["variant"] for v in chosen)),
                   "concurrency": concurrency,
                   "seconds": args.seconds, "warmup": args.warmup, "batch_sizes": batch_sizes,
                   "batch_size": args.batch_size, "max_batch_delay": args.max_batch_delay, "workers": args.workers,
                   "stock_workers": args.stock_workers, "stock_batch_size": args.stock_batch_size,
                   "pictures": pictures, "picture_clients": args.picture_clients,
                   "torchscript_fuser": args.torchscript_fuser,
                   "overrides": overrides, "photo": f"scikit-image astronaut, 1280x720 JPEG, {len(photo):,} bytes"},
        "results": results,
    }
    data["goals"] = report.goals(data)
    data["elapsed_s"] = time.time() - started
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    table = report.markdown(data)
    (out / "results.md").write_text(table)
    report.plot(data, out / "throughput.png")
    if args.update_docs and not report.update_docs(DOC, table):
        print(f"bench: {DOC} has no bench markers; table left in {out / 'results.md'}", file=sys.stderr)
    print("\n".join(report.summary_lines(data)))
    print(f"bench: done in {data['elapsed_s'] / 60:.1f} min -> {out}/results.json, results.md, throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
