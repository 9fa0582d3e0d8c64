"""Served throughput against clients and against worker/batch configurations, per task, in one run.

    python -m benchmarks.scaling [--tasks classification,segmentation,detection] [--backend onnx]
                                 [--configs w1b8p0,w1b8p4,w1b16p4,w2b4,w2b8] [--clients 1,8,32,64]
                                 [--seconds 6] [--warmup 2] [--out DIR]

A configuration ``wWbB`` is W workers per model and batch size B (max batch delay 20 ms); each
worker's runtime gets ``cores // W`` threads and one preparation thread per core it has, so W
workers never oversubscribe the machine. ``wWbBpN`` also sets ``micro_batch`` N (one batch
pipelined: the model runs on N images at a time while the threads prepare and finish the others;
p0: serial; without it, the task's default). Per task, one TorchServe serves every configuration as
its own model, and the task's best in-process throughput (the same pipeline, batch sizes 1/4/8/16)
is measured just before, in the same run. For each configuration and client count, wrk gives the
req/s and p50/p99; ``served / in-process`` at 32 clients is the issue-18 goal (≥ 0.90).

Writes ``results.json``, ``scaling.md`` (the tables) and ``scaling.png`` (throughput against
clients, one line per configuration, and p99 beside it) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks.inprocess import close, load_task, measure_batches
from benchmarks.load import add_served_arguments, drain, run_wrk, wrk_path
from benchmarks.lock import heavy_run
from benchmarks.models import MODEL_FILES, build_ours, prepare_exports
from benchmarks.photo import make_photo
from benchmarks.warmup import warm_batch_sizes
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
CONFIG = re.compile(r"^w(\d+)b(\d+)(?:p(\d+))?$")


def parse_config(text: str) -> Tuple[int, int, Optional[int]]:
    """``w2b8`` -> (2 workers, batch size 8, None: the task's default micro_batch); ``w1b8p4`` ->
    (1, 8, 4); ``w1b8p0`` -> (1, 8, 0: one batch serial)."""
    match = CONFIG.match(text.strip())
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(f"configuration {text!r}: expected wWbB or wWbBpN, e.g. w2b8 (2 workers, batch size 8) "
                         "or w1b8p4 (1 worker, batch size 8, micro_batch 4; p0: serial)")
    return int(match.group(1)), int(match.group(2)), None if match.group(3) is None else int(match.group(3))


def threads_for(workers: int, cores: int) -> int:
    """Runtime threads per worker: the cores shared out, at least one."""
    return max(1, cores // workers)


def ratio_at(points: List[dict], clients: int, reference: float) -> Optional[float]:
    """Served req/s at ``clients`` over ``reference`` (None when that point is missing or empty)."""
    point = next((p for p in points if p["connections"] == clients), None)
    if not point or not point["throughput"] or not reference:
        return None
    return round(point["throughput"] / reference, 3)


def markdown(data: dict) -> str:
    """One table per task: a row per configuration, req/s and p99 per client count, the goal's ratio."""
    clients = data["config"]["clients"]
    lines = []
    for task, result in data["results"].items():
        best = result["inprocess_best"]
        lines += [f"**{task}** (in-process best {best['images_per_s']} img/s at batch {best['batch_size']})", "",
                  "| configuration | " + " | ".join(f"req/s c={c}" for c in clients) + " | "
                  + " | ".join(f"p99 ms c={c}" for c in clients) + " | served/in-process c=32 |",
                  "|---" * (2 * len(clients) + 2) + "|"]
        for name, points in result["served"].items():
            rates = [next((f"{p['throughput']:.1f}" for p in points if p["connections"] == c), "–") for c in clients]
            p99 = [next((f"{p['latency_ms']['p99']:.0f}" for p in points if p["connections"] == c and p["latency_ms"]),
                        "–")
                   for c in clients]
            ratio = ratio_at(points, 32, best["images_per_s"])
            shown = "–" if ratio is None else ratio
            lines.append(f"| {name} | " + " | ".join(rates) + " | " + " | ".join(p99) + f" | {shown} |")
        lines.append("")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    """Per task: throughput against clients (left) and p99 against clients (right), a line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(data["results"])
    clients = data["config"]["clients"]
    figure, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        result = data["results"][task]
        for name, points in result["served"].items():
            by = {p["connections"]: p for p in points}
            row[0].plot(clients, [by[c]["throughput"] if c in by else 0 for c in clients], marker="o", label=name)
            row[1].plot(clients,
                        [by[c]["latency_ms"]["p99"] if c in by and by[c]["latency_ms"] else 0 for c in clients],
                        marker="o", label=name)
        row[0].axhline(result["inprocess_best"]["images_per_s"], color="grey", linestyle=":", label="in-process best")
        for axis, label in ((row[0], "requests/s"), (row[1], "p99 latency ms")):
            axis.set_title(f"{task}: {label}")
            axis.set_xscale("log", base=2)
            axis.set_xticks(clients, [str(c) for c in clients])
            axis.set_xlabel("concurrent clients")
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    figure.suptitle(f"{data['machine_cores']} cores, {data['config']['backend']}, random weights; "
                    "wWbB(pN) = W workers, batch B (micro_batch N)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    add_served_arguments(p, ROOT / "build" / "bench")
    p.add_argument("--configs", default="w1b8p0,w1b8p4,w1b16p4,w2b4,w2b8")
    p.add_argument("--clients", default="1,8,32,64")
    p.add_argument("--inprocess-seconds", type=float, default=3)
    args = p.parse_args(argv)
    configs = {name: parse_config(name) for name in args.configs.split(",") if name}
    wrk_path()
    with heavy_run(timeout_s=1800):
        return run(args, configs)


def run(args: argparse.Namespace, configs: Dict[str, Tuple[int, int, int]]) -> int:
    started = time.time()
    cores = os.cpu_count() or 1
    clients = [int(c) for c in args.clients.split(",")]
    out = args.out or ROOT / "results" / time.strftime("scaling-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    photo = make_photo()
    photo_path = out / "photo.jpg"
    photo_path.write_bytes(photo)
    results = {}
    for task in [t for t in args.tasks.split(",") if t]:
        folder = prepare_exports(task, args.exports)
        inprocess = load_task(folder, MODEL_FILES[args.backend])
        measured = measure_batches(inprocess, photo, (1, 4, 8, 16), args.inprocess_seconds)
        close(inprocess)
        best = max(measured, key=lambda r: r["images_per_s"])
        print(f"{task}: in-process best {best['images_per_s']} img/s at batch {best['batch_size']}", flush=True)
        store = out / f"store-{task}"
        for name, (workers, batch_size, micro_batch) in configs.items():
            threads = threads_for(workers, cores)
            overrides = {"threads": threads, "preprocess_threads": threads}
            if micro_batch is not None:
                overrides["micro_batch"] = micro_batch
            build_ours(folder, args.backend, f"{task}_{name}", store, batch_size, args.max_batch_delay, workers,
                       overrides)
        server = TorchServe(store, out / f"torchserve-{task}")
        served: Dict[str, List[dict]] = {}
        try:
            server.start(timeout=600)
            headers = server.headers("inference")
            for name, (_, batch_size, _) in configs.items():
                url = f"{server.inference_url}/predictions/{task}_{name}"
                warm_batch_sizes(url, photo, headers, batch_size, budget_s=30)
                served[name] = []
                for connections in clients:
                    run_wrk(url, photo_path, headers, connections, args.warmup)
                    drain(url, photo_path, headers)
                    point = run_wrk(url, photo_path, headers, connections, args.seconds)
                    drain(url, photo_path, headers)
                    served[name].append(point)
                    print(f"  {task:<15} {name:<6} c={connections:<3} {point['throughput']:7.1f} req/s  "
                          f"p99 {(point['latency_ms'] or {}).get('p99', 0):7.0f} ms"
                          + (f"  {point['failed']} failed" if point["failed"] else ""), flush=True)
        finally:
            server.stop()
        results[task] = {"inprocess": measured, "inprocess_best": best, "served": served,
                         "served_vs_inprocess_c32": {n: ratio_at(p, 32, best["images_per_s"])
                                                     for n, p in served.items()}}
    data = {"started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)), "machine_cores": cores,
            "config": {"backend": args.backend, "configs": list(configs), "clients": clients, "seconds": args.seconds,
                       "warmup": args.warmup, "max_batch_delay": args.max_batch_delay},
            "results": results, "elapsed_s": round(time.time() - started)}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "scaling.md").write_text(markdown(data))
    plot(data, out / "scaling.png")
    print(markdown(data))
    print(f"scaling: done in {data['elapsed_s'] / 60:.1f} min -> {out}/results.json, scaling.md, scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
