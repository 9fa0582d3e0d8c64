"""Served load with ``wrk`` (Debian's package): closed loop, C connections, one wrk thread.

wrk is a small C program: on a 2-core machine it leaves the CPU to the server far better than a
Python client would. ``wrk_post.lua`` posts the photo and writes wrk's own summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from benchmarks.warmup import warm_batch_sizes

SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed: run scripts/setup.sh (apt-get install wrk)")
    return path


def run_wrk(url: str, body: Path, headers: Dict[str, str], connections: int, seconds: float,
            timeout: float = 60.0, content_type: str = "image/jpeg") -> dict:
    """Load ``url`` with ``connections`` concurrent clients for ``seconds``; return wrk's summary plus
    ``throughput`` (answered requests per second, non-2xx excluded) and latencies in ms."""
    with tempfile.TemporaryDirectory(prefix="tsvision-wrk-") as tmp:
        out = Path(tmp) / "summary.json"
        command = [wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout:g}s",
                   "-s", str(SCRIPT)]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        command.append(url)
        env = dict(os.environ, BENCH_BODY=str(body), BENCH_OUT=str(out), BENCH_CONTENT_TYPE=content_type)
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + timeout + 30)
        if completed.returncode != 0 or not out.exists():
            said = completed.stderr.strip() or completed.stdout.strip()
            raise RuntimeError(f"wrk failed ({completed.returncode}): {said}")
        summary = json.loads(out.read_text())
    errors = summary["errors"]
    failed = errors["status"] + errors["timeout"] + errors["connect"] + errors["read"] + errors["write"]
    ok = max(0, summary["requests"] - errors["status"])
    seconds_run = summary["duration_us"] / 1e6
    return {
        "connections": connections,
        "seconds": round(seconds_run, 2),
        "requests": summary["requests"],
        "failed": failed,
        "errors": errors,
        "throughput": round(ok / seconds_run, 2) if seconds_run else 0.0,
        # wrk counts only requests completed within the run: with none, there is no latency to report
        "latency_ms": ({k: round(v / 1000.0, 2) for k, v in summary["latency_us"].items()}
                       if summary["requests"] else None),
        "bytes_per_response": round(summary["bytes"] / summary["requests"]) if summary["requests"] else None,
    }


def drain(url: str, body: Path, headers: Dict[str, str], content_type: str = "image/jpeg",
          timeout: float = 300) -> float:
    """One request, answered after whatever the server still has queued; seconds it took.

    wrk stops at the end of its run and closes its connections, but TorchServe still answers the
    requests it had queued: without this, the next point's first seconds go to answering the
    previous run's leftovers, which wrk never counts (C clients of a model answering R req/s leave
    about C / R seconds of them; docs/performance.md, "Scaling")."""
    import requests

    tick = time.perf_counter()
    requests.post(url, data=Path(body).read_bytes(), headers={**headers, "Content-Type": content_type}, timeout=timeout)
    return time.perf_counter() - tick


def alternating_rounds(urls: Dict[str, str], body: Path, headers: Dict[str, str], connections: int, seconds: float,
                       warmup: float, rounds: int, label: str = "") -> Dict[str, List[float]]:
    """Load each of ``urls`` (name -> URL) in turn for ``rounds`` rounds, the order reversed every
    other round, so a shared, noisy machine slows every side alike; returns each side's req/s per
    round. Any failed request is an error (a comparison of failing sides means nothing)."""
    names = list(urls)
    rates: Dict[str, List[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            run_wrk(urls[name], body, headers, connections, warmup)
            drain(urls[name], body, headers)
            measured = run_wrk(urls[name], body, headers, connections, seconds)
            drain(urls[name], body, headers)
            if measured["failed"]:
                raise RuntimeError(f"{label} {name}: {measured['failed']} requests failed: {measured['errors']}")
            rates[name].append(measured["throughput"])
    return rates


def add_served_arguments(parser: argparse.ArgumentParser, exports: Path) -> None:
    """The options the served comparisons share (``benchmarks.scaling``, ``benchmarks.studies.before_after``):
    tasks, backend, wrk's measured and unrecorded seconds per point, the batch delay (ms), the exports'
    folder (default ``exports``) and the results' folder."""
    parser.add_argument("--tasks", default="classification,segmentation,detection")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--max-batch-delay", type=int, default=20)
    parser.add_argument("--exports", type=Path, default=exports)
    parser.add_argument("--out", type=Path, default=None)


def side_by_side(server, models: Dict[str, str], photo: bytes, body: Path, batch_size: int, connections: int,
                 seconds: float, warmup: float, rounds: int, label: str = "") -> Dict[str, List[float]]:
    """Served JSON throughput of ``models`` (side -> model name) on one started ``server`` (a
    ``TorchServe``): each side warmed at every batch size up to ``batch_size``, then loaded in
    ``alternating_rounds``; each side's req/s per round."""
    headers = server.headers("inference")
    urls = {side: f"{server.inference_url}/predictions/{name}" for side, name in models.items()}
    for url in urls.values():
        warm_batch_sizes(url, photo, headers, batch_size, budget_s=20)
    return alternating_rounds(urls, body, headers, connections, seconds, warmup, rounds, label)
