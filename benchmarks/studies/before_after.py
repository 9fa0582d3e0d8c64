"""Served JSON throughput of this checkout against an earlier commit's, side by side in one TorchServe.

    python -m benchmarks.studies.before_after [--ref 13e7cc7] [--tasks classification,segmentation,detection]
                                      [--backend onnx] [--connections 8] [--rounds 4] [--seconds 6]

The same exported model file is archived twice with the same batch settings: by this checkout's
archive tool ("after") and by the archive tool of ``--ref`` ("before"), run from a temporary git
worktree of that commit, so its archive ships that commit's ``tsvision/serving``. One TorchServe
serves both; wrk loads each in turn with plain JSON requests of the 1280×720 photo, the order
alternating round by round (a shared, noisy machine slows both alike), and the median req/s of
each side and their ratio are printed. The default ``--ref`` is the last commit before per-request
options and pictures (issue 16) were merged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

from benchmarks.load import add_served_arguments, side_by_side, wrk_path
from benchmarks.lock import heavy_run
from benchmarks.models import MODEL_FILES, build_ours, prepare_exports
from benchmarks.photo import make_photo
from tsvision.tools.serve.server import TorchServe

ROOT = Path(__file__).resolve().parents[2]
BEFORE_OPTIONS = "13e7cc7"  # main just before the merge of issue 16 (per-request options, pictures)


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """A detached git worktree of ``ref``, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="tsvision-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), ref], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)


def build_before(source: Path, folder: Path, backend: str, name: str, store: Path, batch_size: int, delay: int) -> None:
    """Archive ``folder``'s model with the archive tool of the checkout at ``source``; settings that
    commit does not know (added since, all at their defaults) are left out."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    known = json.loads(subprocess.run(
        [sys.executable, "-c", "import dataclasses, json; from tsvision.serving.settings import Settings; "
                               "print(json.dumps([f.name for f in dataclasses.fields(Settings)]))"],
        env=env, cwd=source, check=True, capture_output=True, text=True).stdout)
    # unknown to that commit, or None (that commit's own default then applies: mask_format was "rle")
    values = {k: v for k, v in json.loads((folder / "settings.json").read_text()).items()
              if k in known and k != "labels" and v is not None}
    with tempfile.TemporaryDirectory(prefix="tsvision-before-settings-") as tmp:
        settings = Path(tmp) / "settings.json"
        settings.write_text(json.dumps(values))
        done = subprocess.run([sys.executable, "-m", "tsvision.tools.archive", "--model",
                               str(folder / MODEL_FILES[backend]),
                               "--settings", str(settings), "--labels", str(folder / "labels.json"), "--name", name,
                               "--store", str(store.resolve()), "--batch-size", str(batch_size), "--max-batch-delay",
                               str(delay)],
                              env=env, cwd=source, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the archive tool of {source} failed: {done.stderr.strip()[-2000:]}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.before_after", description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default=BEFORE_OPTIONS, help="the earlier commit (default: before issue 16)")
    add_served_arguments(p, ROOT / "build" / "bench")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    wrk_path()
    with heavy_run(timeout_s=1800):
        return run(args)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    tasks = [t for t in args.tasks.split(",") if t]
    out = (args.out or ROOT / "results" / time.strftime("before-after-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    photo = make_photo()
    photo_path = out / "photo.jpg"
    photo_path.write_bytes(photo)
    store = out / "store"
    models = {}
    with checkout(args.ref) as source:
        for task in tasks:
            folder = prepare_exports(task, args.exports)
            models[task] = {"before": f"{task}_before", "after": f"{task}_after"}
            build_before(source, folder, args.backend, models[task]["before"], store, args.batch_size,
                         args.max_batch_delay)
            build_ours(folder, args.backend, models[task]["after"], store, args.batch_size, args.max_batch_delay, 1)
    server = TorchServe(store, out / "torchserve")
    results = {}
    try:
        server.start(timeout=600)
        for task in tasks:
            rates = side_by_side(server, models[task], photo, photo_path, args.batch_size, args.connections,
                                 args.seconds, args.warmup, args.rounds, task)
            before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
            results[task] = {"before_req_s": rates["before"], "after_req_s": rates["after"], "before_median": before,
                             "after_median": after, "after_vs_before": round(after / before, 3)}
            print(f"{task:<15} before {before:7.1f} req/s  after {after:7.1f} req/s  "
                  f"after/before {after / before:.3f}  "
                  f"(rounds: {rates['before']} / {rates['after']})", flush=True)
    finally:
        server.stop()
    data = {"ref": args.ref, "head": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip(),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": results, "elapsed_s": round(time.time() - started)}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"before_after: done in {data['elapsed_s'] / 60:.1f} min -> {out}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
