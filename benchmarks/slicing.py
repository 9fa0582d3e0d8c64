"""What sliced inference costs (docs/large-images.md): the default detection model (``tsvision export
--task detection``: SSDlite320, random seeded weights, ONNX) through its handler in-process
(``LocalWorker``, TorchServe's own ``Context`` and ``handle``), one 4000×3000 JPEG photo per request,
the whole-image pass against slicing (``slice_size`` 640 and 320, the default overlap 0.2, merge
``greedy_nmm``, the whole image added).

    /work/notes/quiet .venv/bin/python -m benchmarks.slicing [--seconds 20] [--out results/slicing]

Each configuration runs in a process of its own, so that its peak memory (``ru_maxrss``) is its own;
printed as a markdown table (images/s, seconds per image, slices per image, peak RSS and its rise over
the loaded worker's RSS) and written to ``OUT/slicing.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

CONFIGS: Dict[str, Dict[str, str]] = {"whole image": {}, "slice_size 640": {"slice_size": "640"},
                                      "slice_size 320": {"slice_size": "320"}}
WIDTH, HEIGHT = 4000, 3000


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def along(side: int, size: int, overlap: float = 0.2) -> int:
    """Slices along one side (docs/large-images.md: sahi's grid, each step ``size - int(overlap * size)``)."""
    return 1 if side <= size else 1 + -(-(side - size) // (size - int(overlap * size)))


def measure_one(folder: Path, name: str, seconds: float) -> dict:
    """One configuration in this process: requests of the photo with its options, one at a time."""
    from benchmarks.inprocess import close, load_task
    from benchmarks.photo import make_photo
    photo = make_photo(WIDTH, HEIGHT)
    worker = load_task(folder, "model.onnx", batch_size=1)
    options = {key: value.encode() for key, value in CONFIGS[name].items()}
    row, headers = {"body": photo, **options}, [{"body": {"content-type": "image/jpeg"}}]

    def one() -> int:
        response = worker.predict([row], headers)[0]
        if response.status != 200:
            raise RuntimeError(f"{name}: {response.status} {str(response.body)[:300]}")
        body = response.body
        return len(json.loads(body) if isinstance(body, (str, bytes)) else body)

    loaded = rss_mb()
    found = one()  # warm-up (and the first answer's size)
    durations: List[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(durations) < 3:
        tick = time.perf_counter()
        one()
        durations.append(time.perf_counter() - tick)
    close(worker)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = CONFIGS[name].get("slice_size")
    slices = 1 if size is None else along(WIDTH, int(size)) * along(HEIGHT, int(size)) + 1  # and the whole image
    return {"config": name, "slices": slices, "requests": len(durations),
            "images_per_s": round(len(durations) / sum(durations), 3),
            "seconds_per_image": round(sum(durations) / len(durations), 3), "detections": found,
            "rss_loaded_mb": round(loaded), "peak_rss_mb": round(peak), "peak_rise_mb": round(peak - loaded)}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per configuration")
    parser.add_argument("--out", type=Path, default=Path("results/slicing"))
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(args.folder, args.child, args.seconds)))
        return 0
    from benchmarks.models import prepare_exports

    args.out.mkdir(parents=True, exist_ok=True)
    folder = prepare_exports("detection", args.out / "exports")
    rows = []
    for name in CONFIGS:
        done = subprocess.run([sys.executable, "-m", "benchmarks.slicing", "--child", name, "--folder", str(folder),
                               "--seconds", str(args.seconds)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (args.out / "slicing.json").write_text(json.dumps(rows, indent=2))
    whole = rows[0]["images_per_s"]
    print(f"| {WIDTH}×{HEIGHT} JPEG, one per request | slices | images/s | s/image | vs whole image "
          "| peak RSS MB | rise over loaded MB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['slices']} | {row['images_per_s']} | {row['seconds_per_image']} | "
              f"{row['images_per_s'] / whole:.3f}× | {row['peak_rss_mb']} | {row['peak_rise_mb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
