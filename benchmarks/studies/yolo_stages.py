"""YOLOv8n stage by stage, ours against ultralytics' predictor on the same ONNX file, in-process.

``python -m benchmarks.studies.yolo_stages [--folder build/families/yolov8n] [--rounds 20]``: on the
families benchmark's photos (``benchmarks.families``), one image per call, serially:

- ours: ``benchmarks.budget``'s stages (decode, letterbox, collate = normalise + stack, model, post =
  head decode + NMS + mapping to the original pixels, encode = JSON) and the whole handler call;
- ultralytics: ``YOLO.predict`` on the decoded image, its own ``speed`` (preprocess = letterbox +
  tensor, inference, postprocess = NMS + scaling) and the whole call; decoding is the same PIL call.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import List, Optional

from benchmarks.budget import stages, timed
from benchmarks.families import PHOTOS, UltralyticsReference, decode, prepare, square_photo
from benchmarks.inprocess import answer_all, close, load_task

ROOT = Path(__file__).resolve().parents[2]


def ultralytics_stages(reference: UltralyticsReference, photo: bytes, rounds: int) -> dict:
    image = decode(photo)
    speeds = []

    def call() -> None:
        result = reference.yolo.predict(image, conf=0.25, iou=0.7, max_det=300, imgsz=640, rect=False, verbose=False)
        speeds.append(result[0].speed)

    whole = timed(call, rounds)
    found = {key: round(statistics.median(s[key] for s in speeds), 2) for key in speeds[0]}
    return {"decode": round(timed(lambda: decode(photo), rounds), 2), **found, "predict_call": round(whole, 2)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.yolo_stages",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "build" / "families",
                        help="the families benchmark's exports (yolov8n/ is exported there if missing)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    folder = prepare("yolov8n", args.root)
    reference = UltralyticsReference(folder)
    worker = load_task(folder, "model.onnx", {"preprocess_threads": 1}, 1)
    rows = []
    try:
        for name in PHOTOS:
            photo = square_photo(name)
            ours = stages(worker.handler.task, photo, 1, args.rounds)
            ours["handler_call"] = round(timed(lambda p=photo: answer_all(worker, p, 1), args.rounds), 2)
            theirs = ultralytics_stages(reference, photo, args.rounds)
            theirs["with_decode"] = round(theirs["decode"] + theirs["predict_call"], 2)
            rows.append({"photo": name, "ours": ours, "ultralytics": theirs,
                         "ratio": round(theirs["with_decode"] / ours["handler_call"], 3)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        close(worker)
    print("| photo | ours: decode / letterbox / collate / model / post / encode / whole call (ms) "
          "| ultralytics: decode / preprocess / inference / postprocess / decode + predict (ms) "
          "| ultralytics ÷ ours time |\n|---|---|---|---:|")
    for row in rows:
        o, t = row["ours"], row["ultralytics"]
        print(f"| {row['photo']} | {o['decode']} / {o['resize']} / {o['collate']} / {o['model']} / {o['post']} / "
              f"{o['encode']} / **{o['handler_call']}** | {t['decode']} / {t['preprocess']} / {t['inference']} / "
              f"{t['postprocess']} / **{t['with_decode']}** | {row['ratio']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
