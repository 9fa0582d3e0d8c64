"""The same archive under TorchServe and under KServe's model server (``tsvision kserve``), one after the other.

    python -m benchmarks.kserve [--model-store model_store] [--model classification_onnx]
                                [--connections 8,32] [--seconds 10] [--warmup 3] [--rounds 1]

For each round, three servers in turn, never two at once, each on free loopback ports with only
``MODEL.mar`` (the order reversed every other round, so a busy machine slows every side alike):

- ``torchserve``: TorchServe with the archive's batching (batchSize/maxBatchDelay of its model-config);
- ``kserve``: ``tsvision kserve``, which batches concurrent requests with the same two settings;
- ``kserve-unbatched``: ``tsvision kserve --batch-size 1``: one handler call per request, what
  KServe's Python server does on its own (it has no batching; docs/kserve.md).

Each is loaded by ``wrk`` (``benchmarks.load.run_wrk``) at every client count with two bodies: the
benchmark photo as raw JPEG (``/predictions/MODEL`` and ``/v1/models/MODEL:predict``, both accept
it) and KServe v1 JSON ``{"instances": [base64]}`` (accepted by both too). Prints req/s, p50 and
p99 per point, the ratios to TorchServe, and the load average before and after; writes
``results/kserve-<time>.json``. Holds the machine lock (``benchmarks.lock``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from benchmarks.load import drain, run_wrk
from benchmarks.lock import heavy_run
from benchmarks.photo import make_photo
from tsvision.tools.serve.kserve_server import KServeServer
from tsvision.tools.serve.server import TorchServe, free_port

ROOT = Path(__file__).resolve().parent.parent
BODIES = {"jpeg": "image/jpeg", "v1-json": "application/json"}


def write_bodies(folder: Path) -> Dict[str, Path]:
    photo = make_photo()
    paths = {"jpeg": folder / "photo.jpg", "v1-json": folder / "instances.json"}
    paths["jpeg"].write_bytes(photo)
    paths["v1-json"].write_text(json.dumps({"instances": [base64.b64encode(photo).decode("ascii")]}))
    return paths


def measure(url: str, headers: Dict[str, str], bodies: Dict[str, Path], connections: List[int], seconds: float,
            warmup: float) -> Dict[str, Dict[int, dict]]:
    """wrk at every client count with every body; any failed request is an error."""
    points: Dict[str, Dict[int, dict]] = {}
    for body, path in bodies.items():
        points[body] = {}
        for clients in connections:
            run_wrk(url, path, headers, clients, warmup, content_type=BODIES[body])
            drain(url, path, headers, BODIES[body])
            point = run_wrk(url, path, headers, clients, seconds, content_type=BODIES[body])
            drain(url, path, headers, BODIES[body])
            if point["failed"]:
                raise RuntimeError(f"{url} {body} c={clients}: {point['failed']} requests failed: {point['errors']}")
            points[body][clients] = point
            latency = point["latency_ms"]
            print(f"  {body:8} c={clients:<3} {point['throughput']:7.1f} req/s  p50 {latency['p50']:7.1f} ms"
                  f"  p99 {latency['p99']:7.1f} ms", flush=True)
    return points


def sides(model_store: Path, model: str, workdir: Path) -> Dict[str, Callable[[], tuple]]:
    """Each side: a function that starts its server and returns (server, URL, headers)."""
    def torchserve() -> tuple:
        server = TorchServe(model_store, workdir / "torchserve", models=[f"{model}.mar"]).start()
        return server, f"{server.inference_url}/predictions/{model}", server.headers()

    def kserve(extra: List[str]) -> Callable[[], tuple]:
        def start() -> tuple:
            server = KServeServer(model_store, workdir / "kserve", free_port(), free_port(), models=[model],
                                  extra_args=extra).start()
            return server, f"{server.url}/v1/models/{model}:predict", {}
        return start

    return {"torchserve": torchserve, "kserve": kserve([]), "kserve-unbatched": kserve(["--batch-size", "1"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="classification_onnx")
    parser.add_argument("--connections", default="8,32")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    results: Dict[str, list] = {}
    load_before = os.getloadavg()
    with heavy_run(), tempfile.TemporaryDirectory(prefix="tsvision-kserve-bench-") as tmp:
        bodies = write_bodies(Path(tmp))
        starters = sides(args.model_store.resolve(), args.model, Path(tmp))
        for round_ in range(args.rounds):
            for name in (list(starters) if round_ % 2 == 0 else list(starters)[::-1]):
                print(f"round {round_ + 1}: {name}", flush=True)
                server, url, headers = starters[name]()
                try:
                    results.setdefault(name, []).append(measure(url, headers, bodies, connections, args.seconds,
                                                                args.warmup))
                finally:
                    server.stop()
    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): before {load_before}, after {load_after}")
    print("| body | clients | " + " | ".join(f"{name} req/s (p50 / p99 ms)" for name in results)
          + " | kserve / torchserve |")
    print("|---|---|" + "---|" * len(results) + "---|")
    for body in BODIES:
        for clients in connections:
            cells, rates = [], {}
            for name, rounds in results.items():
                points = [r[body][clients] for r in rounds]
                rate = sum(p["throughput"] for p in points) / len(points)
                p50 = sum(p["latency_ms"]["p50"] for p in points) / len(points)
                p99 = sum(p["latency_ms"]["p99"] for p in points) / len(points)
                rates[name] = rate
                cells.append(f"{rate:.1f} ({p50:.0f} / {p99:.0f})")
            ratio = rates["kserve"] / rates["torchserve"] if rates.get("torchserve") else float("nan")
            print(f"| {body} | {clients} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    out = ROOT / "results" / f"kserve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "connections": connections, "seconds": args.seconds,
                               "rounds": args.rounds, "load_before": load_before, "load_after": load_after,
                               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results},
                              indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
