"""The cost of per-request options and of picture answers, measured side by side in one run.

    python -m benchmarks.options [--tasks classification,detection,keypoints] [--backend onnx] [--rounds 30]

Per task, one request of one photo through each path, interleaved round by round (so a busy,
shared machine slows every path alike), median milliseconds per request:

- ``skip``: the pipeline without the options code (``task.run`` + ``format_response``: what a
  request path that never looks at options costs);
- ``json``: ``answer_requests`` on a plain request (the options machinery runs and finds none);
- ``json_options``: the same with every option of the task set to the archive's value (read,
  checked, applied per request);
- ``png`` / ``jpeg``: the picture answer (decode again, draw, encode).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from benchmarks.inprocess import load_task
from benchmarks.models import MODEL_FILES, prepare_exports
from benchmarks.photo import make_photo
from tsvision.serving.payloads import ParsedRequest, format_response
from tsvision.serving.service import answer_requests

ROOT = Path(__file__).resolve().parent.parent
DETECTING = ("score_threshold", "iou_threshold", "max_detections")
DEFAULT_OPTIONS = {"classification": ("top_k",), "segmentation": ("mask_format",), "detection": DETECTING,
                   "instance_segmentation": DETECTING + ("mask_format", "mask_threshold"), "keypoints": DETECTING}


def paths(task, photo: bytes) -> Dict[str, Callable[[], object]]:
    """Each measured path as a call answering one request of ``photo``."""
    s = task.settings
    defaults = {"mask_format": "png" if task.name == "segmentation" else "rle"}  # what None means
    same = {name: defaults[name] if getattr(s, name) is None else getattr(s, name) for name in DEFAULT_OPTIONS.get(task.name, ())}

    def skip():
        return json.dumps(format_response(ParsedRequest([photo]), task.run([photo])))

    def answer(row, headers=None):
        response = answer_requests(task, [row], [headers or {}])[0]
        assert response.status == 200, response.body
        return response.body if isinstance(response.body, bytes) else json.dumps(response.body)

    return {"skip": skip, "json": lambda: answer({"body": photo}),
            "json_options": lambda: answer({"body": photo, **{k: str(v) for k, v in same.items()}}),
            "png": lambda: answer({"body": photo}, {"Accept": "image/png"}),
            "jpeg": lambda: answer({"body": photo}, {"Accept": "image/jpeg"})}


def measure(task, photo: bytes, rounds: int = 30) -> dict:
    """Median ms per request for each path, interleaved; ``*_vs_skip`` ratios of the medians."""
    calls = paths(task, photo)
    for call in calls.values():  # warm-up
        call()
    times: Dict[str, List[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # rotate the order: no path always first
            call = calls[name]
            tick = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - tick) * 1000)
    result = {name: round(statistics.median(values), 2) for name, values in times.items()}
    for name in ("json", "json_options", "png", "jpeg"):
        result[f"{name}_vs_skip"] = round(result[name] / result["skip"], 3)
    result["rounds"] = rounds
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.options", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="classification,segmentation,detection,instance_segmentation,keypoints")
    p.add_argument("--backend", default="onnx", choices=sorted(MODEL_FILES))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--exports", type=Path, default=ROOT / "build" / "bench")
    args = p.parse_args(argv)
    photo = make_photo(args.width, args.height)
    results = {}
    for name in args.tasks.split(","):
        folder = args.exports / name
        if not ((folder / MODEL_FILES[args.backend]).exists() and (folder / "settings.json").exists()):
            folder = prepare_exports(name, args.exports)
        results[name] = measure(load_task(folder, MODEL_FILES[args.backend]), photo, args.rounds)
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps({"photo": f"{args.width}x{args.height}", "backend": args.backend, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
