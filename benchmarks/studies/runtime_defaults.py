"""Which ``micro_batch`` and ``threads`` each runtime should default to: side by side, one server.

``python -m benchmarks.studies.runtime_defaults [--task classification] [--rounds 3]``: the same
exported weights archived as several variants (backend × ``micro_batch`` × ``threads``) beside
TorchServe's stock handler, all in one TorchServe (batch 8, delay 20 ms, one worker each; ``--workers`` and
``--batch-size`` change that for our variants), loaded
by wrk at ``--clients`` in alternating rounds (``benchmarks.load.alternating_rounds``: the order
reversed every other round, so the shared machine's noise falls on every side alike). Prints each
side's median req/s and its ratio to the stock handler.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.families import square_photo
from benchmarks.load import side_by_side, wrk_path
from benchmarks.lock import heavy_run
from benchmarks.models import STOCK_HANDLERS, build_ours, build_stock, prepare_exports
from benchmarks.photo import make_photo
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parents[2]
# name -> (backend, handler settings); "default" leaves the archive's defaults
VARIANTS = {
    "ts_default": ("torchscript", {}),
    "ts_mb0": ("torchscript", {"micro_batch": 0}),
    "ts_mb4": ("torchscript", {"micro_batch": 4}),
    "ts_t1_mb4": ("torchscript", {"threads": 1, "micro_batch": 4}),
    "onnx_default": ("onnx", {}),
    "onnx_mb0": ("onnx", {"micro_batch": 0}),
    "onnx_mb4": ("onnx", {"micro_batch": 4}),
    "onnx_mb1": ("onnx", {"micro_batch": 1}),  # one image per forward pass (on a worker without threads: in turn)
    "onnx_mb2": ("onnx", {"micro_batch": 2}),
    "onnx_spin_never": ("onnx", {"spinning": "never"}),  # the only choice before 2026-12-03
    "onnx_spin_always": ("onnx", {"spinning": "always"}),  # ONNX Runtime's own
    "onnx_draft": ("onnx", {"decode_draft": True}),  # opt-in, lossy (docs/performance.md): what it would give
    "onnx_s1": ("onnx", {"streams": 1}),  # one run of the model at a time (the only way before 2026-12-04)
    "onnx_s2": ("onnx", {"streams": 2}),  # two runs at once, one intra-op thread each on two cores
    "onnx_mb0_s2": ("onnx", {"micro_batch": 0, "streams": 2}),
    "onnx_mb8_s2": ("onnx", {"micro_batch": 8, "streams": 2}),
    "ts_s1": ("torchscript", {"streams": 1}),
    "ts_s2": ("torchscript", {"streams": 2}),
    "ts_mb4_s2": ("torchscript", {"micro_batch": 4, "streams": 2}),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.runtime_defaults",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="classification")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of: " + ",".join(VARIANTS))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="workers of each of our variants")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of each of our variants")
    parser.add_argument("--exports", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--folder", type=Path, help="an export folder to archive instead of the task's default "
                        "export (e.g. build/families/yolov8n; no stock handler then)")
    parser.add_argument("--square", action="store_true", help="post the families benchmark's 640×640 astronaut "
                        "instead of the 1280×720 photo")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = (args.out or ROOT / "results" / time.strftime("runtime-defaults-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTORCH_TENSOREXPR"] = "0"  # as benchmarks.run serves (the stock handler's stall otherwise)
    wrk_path()
    chosen = [v for v in args.variants.split(",") if v]
    with heavy_run(timeout_s=1800):
        folder = args.folder.resolve() if args.folder else prepare_exports(args.task, args.exports)
        store = out / "store"
        models = {}
        for name in chosen:
            backend, overrides = VARIANTS[name]
            build_ours(folder, backend, f"{args.task}_{name}", store, args.batch_size, 20, args.workers, overrides)
            models[name] = f"{args.task}_{name}"
        if args.task in STOCK_HANDLERS and not args.folder:
            build_stock(folder, args.task, f"{args.task}_stock", store, 8, 20, 1)
            models["stock"] = f"{args.task}_stock"
        photo = square_photo("astronaut") if args.square else make_photo()
        photo_path = out / "photo.jpg"
        photo_path.write_bytes(photo)
        server = TorchServe(store, out / "torchserve", models=[f"{m}.mar" for m in models.values()])
        try:
            server.start(timeout=600)
            rates = side_by_side(server, models, photo, photo_path, max(8, args.batch_size), args.clients, args.seconds,
                                 args.warmup, args.rounds, args.task)
        finally:
            server.stop()
    medians: Dict[str, float] = {name: statistics.median(r) for name, r in rates.items()}
    stock = medians.get("stock")
    lines = [f"| {args.task}, {args.clients} clients | req/s (median of {args.rounds}) | rounds | ÷ stock |",
             "|---|---:|---|---:|"]
    for name, rate in medians.items():
        ratio = f"{rate / stock:.2f}×" if stock else "–"
        lines.append(f"| {name} | {rate:.1f} | {', '.join(f'{r:.1f}' for r in rates[name])} | {ratio} |")
    table = "\n".join(lines) + "\n"
    (out / "results.json").write_text(json.dumps({"rates": rates, "medians": medians, "args": vars(args)},
                                                 indent=1, default=str) + "\n")
    (out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
