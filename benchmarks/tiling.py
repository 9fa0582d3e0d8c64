"""What tiled segmentation costs against the whole-image pass (issue 29), in-process, side by side:

    python -m benchmarks.tiling [--backend onnx] [--rounds 2] [--no-large]

The default segmentation model (``tsvision export --task segmentation``: LRASPP MobileNetV3, 21
classes, random seeded weights; ``build/tiling/segmentation``), answering through the handler's
``handle`` (``LocalWorker``, as a TorchServe worker calls it) with the archive's settings, ``tile``
``never`` (the whole-image pass: shorter side to 520 px) or ``always`` (520 px tiles, overlap 0.25,
4 per forward pass), ``max_pixels`` raised to 60 M:

- the 4000×3000 photo (``benchmarks.photo``: the astronaut scaled up, JPEG): images/s over
  ``--rounds`` answers after one warm answer, and the process's peak RSS;
- the 8000×6000 photo: one answer each way, the process's peak RSS (unless ``--no-large``).

Each figure comes from a fresh subprocess (``--child``), so every peak RSS (``getrusage``'s
``ru_maxrss``) is that configuration's alone; ``rss_loaded_mb`` is the peak once the model is
loaded and warmed up, before the photo. Run it with ``/work/notes/quiet`` (it holds
``benchmarks.lock`` too). Prints one JSON object and writes it to ``results/tiling-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from benchmarks.inprocess import close, load_task
from benchmarks.lock import heavy_run
from benchmarks.models import MODEL_FILES, export
from benchmarks.photo import make_photo

ROOT = Path("build/tiling")
TILED = {"tile": "always", "tile_overlap": 0.25, "tile_batch": 4}


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child(folder: Path, backend: str, mode: str, image: Path, rounds: int) -> dict:
    """In this process: load the handler, answer ``image`` once warm and ``rounds`` times timed."""
    overrides = {**(TILED if mode == "tiled" else {"tile": "never"}), "max_pixels": 60_000_000}
    worker = load_task(folder, MODEL_FILES[backend], overrides, batch_size=1)
    loaded = rss_mb()
    data = image.read_bytes()
    durations: List[float] = []
    try:
        for round_ in range(rounds + 1):
            started = time.perf_counter()
            response = worker.predict([{"body": data}], [{"body": {"content-type": "image/jpeg"}}])[0]
            if response.status != 200:
                raise RuntimeError(f"answer {response.status}: {str(response.body)[:300]}")
            if round_ or rounds == 0:
                durations.append(time.perf_counter() - started)
    finally:
        close(worker)
    seconds = sum(durations) / len(durations)
    return {"mode": mode, "rss_loaded_mb": loaded, "rss_peak_mb": rss_mb(), "s_per_image": round(seconds, 3),
            "images_per_s": round(1 / seconds, 3), "answers_timed": len(durations)}


def measure(folder: Path, backend: str, mode: str, image: Path, rounds: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.tiling", "--child", mode, "--image", str(image),
                           "--backend", backend, "--rounds", str(rounds)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} run on {image.name} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--rounds", type=int, default=2, help="timed answers of the 4000×3000 photo per mode")
    parser.add_argument("--no-large", action="store_true", help="skip the 8000×6000 photo")
    parser.add_argument("--child", choices=["whole", "tiled"], help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = ROOT / "segmentation"
    if args.child:
        print(json.dumps(child(folder, args.backend, args.child, args.image, args.rounds)))
        return 0
    if not all((folder / name).exists() for name in (MODEL_FILES[args.backend], "settings.json")):
        export("segmentation", folder)
    photos = {"4000x3000": (4000, 3000, args.rounds)} | ({} if args.no_large else {"8000x6000": (8000, 6000, 0)})
    report: dict = {"backend": args.backend, "model": "lraspp_mobilenet_v3_large (21 classes)",
                    "tiling": {**TILED, "tile_size": "input_size (520)"}, "photos": {}}
    with heavy_run():
        for name, (width, height, rounds) in photos.items():
            path = ROOT / f"photo-{name}.jpg"
            if not path.exists():
                path.write_bytes(make_photo(width, height))
            runs = {mode: measure(folder, args.backend, mode, path, rounds) for mode in ("whole", "tiled")}
            runs["tiled_over_whole"] = {
                "time": round(runs["tiled"]["s_per_image"] / runs["whole"]["s_per_image"], 1),
                "rss_peak": round(runs["tiled"]["rss_peak_mb"] / runs["whole"]["rss_peak_mb"], 2)}
            report["photos"][name] = runs
    out = Path("results") / f"tiling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
