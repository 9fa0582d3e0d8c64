"""``tsvision batch`` against the served archive, on the same photos, with 1 and 2 CPUs, side by side.

    python -m benchmarks.batch [--archive model_store/classification_onnx.mar] [--images 300]
                               [--clients 1,2,4,8] [--seconds 6] [--cpus 1,2] [--out DIR]

For each CPU count (the benchmark pins itself to the first N CPUs, so TorchServe, its worker, the local
Ray and its actors all inherit the same cores; wrk runs on all of them, as a client elsewhere would):
TorchServe serving the archive (its own model-config: workers, batch size) loaded by ``benchmarks.load``
(wrk) at each client count, the best req/s kept; then ``tsvision batch`` over ``--images`` copies of the
same photo (the benchmark's 1280×720 astronaut JPEG) on a local Ray with 1 model actor, and with 2
actors when 2 CPUs are given. The batch job's figures: images/s over the whole job (Ray's start and the
model load included) and after its first answers. Writes ``batch.json`` and ``batch.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from benchmarks.load import drain, run_wrk
from benchmarks.lock import heavy_run
from benchmarks.photo import make_photo
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"images: (\d+) in \S+ \(([\d.]+) images/s\).*?start: ([\d.]+) s .*?then ([\d.]+) images/s",
                     re.S)


def pinned(cpus: int) -> set:
    """The first ``cpus`` CPUs this process may run on."""
    return set(sorted(os.sched_getaffinity(0))[:cpus])


def served_best(archive: Path, photo: Path, cpus: set, clients: List[int], seconds: float, workdir: Path) -> dict:
    """TorchServe pinned to ``cpus``, loaded by wrk at each client count; every point and the best."""
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)  # TorchServe and its worker inherit these CPUs
    try:
        server = TorchServe(archive.parent, workdir, models=[archive.name])
        server.start(timeout=600)
    finally:
        os.sched_setaffinity(0, everything)
    try:
        name = archive.stem
        url = f"{server.inference_url}/predictions/{name}"
        headers = server.headers("inference")
        points = []
        for count in clients:
            run_wrk(url, photo, headers, count, 2)  # warm-up
            drain(url, photo, headers)
            point = run_wrk(url, photo, headers, count, seconds)
            drain(url, photo, headers)
            if point["failed"]:
                raise RuntimeError(f"served, {count} clients: {point['failed']} requests failed: {point['errors']}")
            points.append({"clients": count, "req_s": point["throughput"]})
    finally:
        server.stop()
    return {"points": points, "best": max(points, key=lambda p: p["req_s"])}


def batch_job(archive: Path, folder: Path, cpus: set, actors: int, out: Path) -> dict:
    """``tsvision batch`` with a local Ray, pinned to ``cpus``; its summary's figures."""
    command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), sys.executable, "-m", "tsvision", "batch",
               "--archive", str(archive), "--images", str(folder), "--output", str(out), "--quiet",
               "--concurrency", str(actors), "--num-cpus", "1", "--batch-size", "8"]
    tick = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - tick
    found = SUMMARY.search(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"tsvision batch failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"actors": actors, "images": int(found.group(1)), "job_images_s": float(found.group(2)),
            "start_s": float(found.group(3)), "steady_images_s": float(found.group(4)), "wall_s": round(wall, 1)}


def markdown(data: dict) -> str:
    lines = [f"Measured {data['date']} (load before: {data['load']}), {data['images']} copies of the "
             f"1280×720 photo, archive `{data['archive']}`.", "",
             "| CPUs | served (best of clients) req/s | batch actors | batch images/s after start | "
             "batch images/s whole job | start s | batch / served |", "|---|---|---|---|---|---|---|"]
    for cpus, result in data["results"].items():
        best = result["served"]["best"]
        for job in result["batch"]:
            ratio = job["steady_images_s"] / best["req_s"] if best["req_s"] else 0
            lines.append(f"| {cpus} | {best['req_s']:.1f} (c={best['clients']}) | {job['actors']} | "
                         f"{job['steady_images_s']:.1f} | {job['job_images_s']:.1f} | {job['start_s']:.1f} | "
                         f"{ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ROOT / "model_store" / "classification_onnx.mar")
    parser.add_argument("--images", type=int, default=300, help="copies of the photo the batch job answers")
    parser.add_argument("--clients", default="1,2,4,8", help="wrk client counts; the best is compared")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per wrk point")
    parser.add_argument("--cpus", default="1,2", help="CPU counts to pin to")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "benchmarks" / "batch")
    args = parser.parse_args(argv)
    archive = args.archive.resolve()
    if not archive.is_file():
        parser.error(f"--archive {archive}: no such file (./archive.sh builds model_store/)")
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()[0],
            "archive": archive.name, "images": args.images, "results": {}}
    with heavy_run(), tempfile.TemporaryDirectory(prefix="tsvision-bench-batch-") as scratch:
        scratch = Path(scratch)
        photo = scratch / "photo.jpg"
        photo.write_bytes(make_photo())
        folder = scratch / "images"
        folder.mkdir()
        for index in range(args.images):
            os.link(photo, folder / f"{index:05d}.jpg")
        for count in (int(c) for c in args.cpus.split(",")):
            cpus = pinned(count)
            served = served_best(archive, photo, cpus, [int(c) for c in args.clients.split(",")], args.seconds,
                                 scratch / f"ts{count}")
            print(f"{count} CPU: served best {served['best']}", flush=True)
            jobs = []
            for actors in range(1, min(count, 2) + 1):
                jobs.append(batch_job(archive, folder, cpus, actors, scratch / f"out{count}-{actors}"))
                print(f"{count} CPU: batch {jobs[-1]}", flush=True)
            data["results"][str(count)] = {"served": served, "batch": jobs}
    (args.out / "batch.json").write_text(json.dumps(data, indent=1))
    table: Dict[str, str] = {"md": markdown(data)}
    (args.out / "batch.md").write_text(table["md"])
    print(table["md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
