"""The new model families against their own tools: ``python -m benchmarks.families``.

For each family, our archive served by one TorchServe (batch size 8, max batch delay 20 ms, as
``archive.sh`` builds it) against the tool a user of that family would otherwise use, on the same
model file or the same weights and the same photo:

- YOLOv8n (``yolov8n_onnx``: ultralytics' own ONNX export, ``export_yolo``) against ultralytics'
  predictor, ``YOLO(model.onnx, task="detect").predict(image, rect=False)``, in-process;
- Faster R-CNN (``fasterrcnn_onnx``: torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn``, the
  whole detector as ONNX) against the eager torchvision model in-process, and against TorchServe's
  stock ``object_detector`` handler served (the same weights scripted, the form it calls);
- Mask R-CNN (``maskrcnn_onnx``) and Keypoint R-CNN (``keypointrcnn_onnx``) against the eager
  torchvision model in-process.

Throughput: the reference in a closed loop in this process, one image per call (bytes decoded by
PIL, then the tool's call: how its users call it), and at its best batch (a list of 8 images per
call; both tools take lists); served: wrk at 8 connections posting the same JPEG. The goal (issue 18):
served req/s ≥ the reference's one-image-per-call images/s. Reference and served are measured in
turn, ``--rounds`` times in alternating order, and the medians reported.

Same answers: the served JSON for each photo against the reference's own output on the same decoded
pixels, through the same thresholds (classes, boxes within 1 px, scores within 1e-3, near-tied
scores may swap places; masks: pixel agreement; keypoints: largest x/y gap). The photos are square
640×640 (scikit-image's astronaut and camera, scaled once with PIL): ultralytics' letterbox
then resamples nothing, and the scripted, traced and eager torchvision transforms resize them alike.

The weights are RANDOM (seeded, conditioned so that a few answers stand out): nothing can be
downloaded here. Speed does not depend on them; the answers mean nothing, but must be equal.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from tsvision.tools.export.model_files import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY, DEFAULT_WORKERS

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("yolov8n", "fasterrcnn", "maskrcnn", "keypointrcnn")
# family -> (tsvision task, architecture, archive name as archive.sh names it)
SPECS = {
    "yolov8n": ("detection", "yolov8n", "yolov8n_onnx"),
    "fasterrcnn": ("detection", "fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_onnx"),
    "maskrcnn": ("instance_segmentation", "maskrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_onnx"),
    "keypointrcnn": ("keypoints", "keypointrcnn_mobilenet_v3_large_320_fpn", "keypointrcnn_onnx"),
}
REFERENCE_NAMES = {"yolov8n": "ultralytics YOLO.predict (ONNX Runtime), in-process",
                   "fasterrcnn": "torchvision eager, in-process",
                   "maskrcnn": "torchvision eager, in-process",
                   "keypointrcnn": "torchvision eager, in-process"}
STOCK = "fasterrcnn_stock"  # TorchServe's object_detector on the Faster R-CNN weights
MAX_POINT_SECONDS = 30.0
STOCK_THRESHOLD = 0.5  # ObjectDetector.threshold in ts/torch_handler/object_detector.py
BOX_TOL, SCORE_TOL, POINT_TOL = 1.0, 1e-3, 2.0
MASK_AGREEMENT = 0.995
PHOTOS = ("astronaut", "camera")
# ultralytics' predictor defaults (conf 0.25 from Model.predict, iou 0.7, max_det 300)
YOLO_CONF, YOLO_IOU, YOLO_MAX_DET = 0.25, 0.7, 300


# -- pure functions (tests/test_benchmark.py) ------------------------------------------------------
def compare_answers(ours: Sequence[dict], theirs: Sequence[dict], box_tol: float = BOX_TOL,
                    score_tol: float = SCORE_TOL) -> dict:
    """Our answer against the reference's, both lists of ``{"index", "score", "box"[, "mask"][, "keypoints"]}``
    best first (``mask`` a boolean array, ``keypoints`` [[x, y, score], ...]).

    Each of ours needs its own twin in theirs (same class, box within ``box_tol`` px, score within
    ``score_tol``; the closest score wins), and the lists must be in the same order except between
    scores closer than ``score_tol`` (near ties may swap). Returns the counts, the largest box and
    score gaps over the twins, the worst mask agreement and the largest keypoint gap (x/y), and
    ``same``: every detection twinned, both ways, in order."""
    remaining = list(theirs)
    figures = {"ours": len(ours), "theirs": len(theirs), "matched": 0, "box_px": 0.0, "score": 0.0,
               # position by position the scores agree: classes may differ only where scores nearly tie
               "in_order": len(ours) == len(theirs)
               and all(abs(a["score"] - b["score"]) <= score_tol for a, b in zip(ours, theirs))}
    masks, points = [], []
    for det in ours:
        twins = [t for t in remaining if t["index"] == det["index"] and _box_gap(t, det) <= box_tol
                 and abs(t["score"] - det["score"]) <= score_tol]
        if not twins:
            continue
        twin = min(twins, key=lambda t: abs(t["score"] - det["score"]))
        remaining.remove(twin)
        figures["matched"] += 1
        figures["box_px"] = max(figures["box_px"], _box_gap(twin, det))
        figures["score"] = max(figures["score"], abs(twin["score"] - det["score"]))
        if "mask" in det and "mask" in twin:
            masks.append(float((np.asarray(det["mask"], bool) == np.asarray(twin["mask"], bool)).mean()))
        if "keypoints" in det and "keypoints" in twin:
            gap = np.abs(np.asarray(det["keypoints"], float)[:, :2] - np.asarray(twin["keypoints"], float)[:, :2])
            points.append(float(gap.max()) if gap.size else 0.0)
    if masks:
        figures["mask_agreement"] = min(masks)
    if points:
        figures["keypoint_px"] = max(points)
    figures["box_px"], figures["score"] = round(figures["box_px"], 3), float(f"{figures['score']:.2e}")
    figures["same"] = figures["matched"] == len(ours) == len(theirs) and figures["in_order"]
    return figures


def _box_gap(a: dict, b: dict) -> float:
    return float(np.abs(np.subtract(a["box"], b["box"])).max())


def answers_agree(figures: dict, mask_agreement: float = MASK_AGREEMENT, point_tol: float = POINT_TOL) -> bool:
    """``compare_answers`` figures within the tolerances (masks and keypoints where present); an
    empty comparison (no detection on either side) does not count as agreement."""
    return (figures["same"] and figures["ours"] > 0 and figures.get("mask_agreement", 1.0) >= mask_agreement
            and figures.get("keypoint_px", 0.0) <= point_tol)


def from_stock(answer: Sequence[dict], labels: Sequence[str]) -> List[dict]:
    """The stock ``object_detector``'s answer, ``[{"<label>": [x1, y1, x2, y2], "score": s}, ...]``,
    in our form (``index`` from the label's position; the stock answer keeps the model's order)."""
    found = []
    for item in answer:
        (name, box), = ((k, v) for k, v in item.items() if k != "score")
        found.append({"index": list(labels).index(name), "label": name, "score": float(item["score"]),
                      "box": [float(v) for v in box]})
    return found


def above(answer: Sequence[dict], threshold: float) -> List[dict]:
    """The detections scoring at least ``threshold`` (the stock handler keeps ``score >= 0.5``)."""
    return [d for d in answer if d["score"] >= threshold]


def closed_loop(call: Callable[[], object], images_per_call: int, seconds: float, min_calls: int = 3,
                warmup: int = 2) -> dict:
    """``call`` again and again for ``seconds`` (at least ``min_calls`` times) after ``warmup`` calls:
    images per second and the median call latency."""
    for _ in range(warmup):
        call()
    durations: List[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(durations) < min_calls:
        tick = time.perf_counter()
        call()
        durations.append(time.perf_counter() - tick)
    return {"batch_size": images_per_call, "calls": len(durations),
            "images_per_s": round(images_per_call * len(durations) / sum(durations), 2),
            "latency_ms_p50": round(statistics.median(durations) * 1000, 1)}


def goal_rows(results: Sequence[dict]) -> List[dict]:
    """One row per compared pair: served req/s of ours against the reference's throughput, ``met``
    when ours is at least the reference's one-image-per-call rate (and, shown beside it, at least its
    best batch's)."""
    rows = []
    for result in results:
        ours = result.get("served", {}).get("req_s")
        for reference in result["references"]:
            single, best = reference.get("single_img_s"), reference.get("best_img_s")
            rows.append({
                "family": result["family"], "reference": reference["name"], "ours_req_s": ours,
                "ours_p50_ms": result.get("served", {}).get("p50_ms"),
                "ours_inprocess_img_s": result.get("served", {}).get("inprocess_img_s"),
                "reference_img_s": single, "reference_p50_ms": reference.get("single_p50_ms"),
                "reference_best_img_s": best, "reference_best_batch": reference.get("best_batch"),
                "ratio": round(ours / single, 2) if ours and single else None,
                "ratio_best": round(ours / best, 2) if ours and best else None,
                "met": None if not (ours and single) else ours >= single,
                "met_best": None if not (ours and best) else ours >= best,
                "answers": reference.get("answers_summary", "not compared"),
            })
    return rows


def _fmt(value, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(rows: Sequence[dict]) -> str:
    """The families table (throughput, latency, met, answers)."""
    met = {True: "**met**", False: "**not met**", None: "not measured"}
    lines = ["| family | reference | reference img/s, 1 per call (p50 ms) | reference best batch img/s | "
             "ours served req/s, c=8 (p50 ms) | ours in-process img/s, 1 per call | "
             "ours / reference | goal: served ≥ reference | vs best batch | same answers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        best = (f"{_fmt(row['reference_best_img_s'])} (b{row['reference_best_batch']})"
                if row["reference_best_img_s"] is not None else "–")
        lines.append(" | ".join([
            f"| {row['family']}", row["reference"],
            (f"{_fmt(row['reference_img_s'])} ({_fmt(row['reference_p50_ms'], 0)})"
             if row["reference_img_s"] is not None else "–"),
            best, f"{_fmt(row['ours_req_s'])} ({_fmt(row['ours_p50_ms'], 0)})", _fmt(row.get("ours_inprocess_img_s")),
            _fmt(row["ratio"], 2, " ×"), met[row["met"]],
            ("–" if row["met_best"] is None
             else f"{_fmt(row['ratio_best'], 2, ' ×')} {'met' if row['met_best'] else 'not met'}"),
            row["answers"]]) + " |")
    return "\n".join(lines) + "\n"


def summarise_answers(per_photo: Dict[str, dict]) -> str:
    """One cell: per photo, detections ours/theirs and the largest gaps, or what differed."""
    parts = []
    for name, figures in per_photo.items():
        if "error" in figures:
            parts.append(f"{name}: {figures['error']}")
            continue
        text = f"{name}: {figures['ours']}/{figures['theirs']}"
        if not figures["ours"] and not figures["theirs"]:
            text += " (nothing found: no evidence)"
        if figures["matched"]:
            text += f", box {figures['box_px']:.2f} px, score {figures['score']:.0e}"
        if "mask_agreement" in figures:
            text += f", masks {figures['mask_agreement']:.4f}"
        if "keypoint_px" in figures:
            text += f", points {figures['keypoint_px']:.2f} px"
        if not figures["same"]:
            text += f" (DIFFERENT: {figures['matched']} matched{', order' if not figures['in_order'] else ''})"
        parts.append(text)
    return "; ".join(parts)


# -- photos, exports, references -----------------------------------------------------------------
def square_photo(name: str, side: int = 640, quality: int = 92) -> bytes:
    """scikit-image's ``name`` scaled to side × side (PIL bilinear), RGB, as JPEG."""
    import skimage.data
    from PIL import Image

    image = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
    image = image.resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode(body: bytes):
    """JPEG bytes as the server decodes them (PIL, EXIF orientation, RGB)."""
    from PIL import Image, ImageOps

    return ImageOps.exif_transpose(Image.open(io.BytesIO(body))).convert("RGB")


def prepare(family: str, root: Path, fresh: bool = False) -> Path:
    """Export ``family`` as archive.sh does (random seeded weights) into ``root/family`` once; also
    the eager module (``eager.pt``, pickled) and, for Faster R-CNN, the stock handler's TorchScript."""
    import torch

    task, architecture, _ = SPECS[family]
    folder = root / family
    names = ["model.onnx", "settings.json", "labels.json"] + ([] if family == "yolov8n" else ["eager.pt"])
    names += ["stock.pt"] if family == "fasterrcnn" else []
    if not fresh and all((folder / name).exists() for name in names):
        return folder
    from benchmarks.models import StockDetector, export
    from tsvision.tools.export.architectures import build_exportable

    # tsvision export fails (and export() raises) when the exported files disagree with the model
    export(task, folder, *(["--arch", architecture] if family in ("yolov8n", "fasterrcnn") else []))
    if family != "yolov8n":  # the same seed (tsvision export's default, 0) gives the same weights
        exportable = build_exportable(task, None if family != "fasterrcnn" else architecture)
        torch.save(exportable.module.eval(), folder / "eager.pt")
        if family == "fasterrcnn":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.script(StockDetector(exportable.module.eval())).save(str(folder / "stock.pt"))
    return folder


class UltralyticsReference:
    """ultralytics' ONNX predictor on the same model file, as a YOLO user calls it (``rect=False``:
    the square letterbox our handler also uses; its default would pad 16:9 photos to 640×384)."""

    def __init__(self, folder: Path) -> None:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        self.yolo = YOLO(str(folder / "model.onnx"), task="detect")
        self.labels = json.loads((folder / "labels.json").read_text())

    def __call__(self, bodies: Sequence[bytes]) -> List[list]:
        images = [decode(body) for body in bodies]
        results = self.yolo.predict(images, conf=YOLO_CONF, iou=YOLO_IOU, max_det=YOLO_MAX_DET, imgsz=640, rect=False,
                                    verbose=False)
        return [[{"index": int(c), "score": float(s), "box": [float(v) for v in b]}
                 for c, s, b in zip(r.boxes.cls.numpy(), r.boxes.conf.numpy(), r.boxes.xyxy.numpy())] for r in results]


class TorchvisionReference:
    """The eager torchvision detector (the weights of the export), as its users call it: a list of
    3×H×W float tensors in [0, 1] under ``torch.no_grad()``; answers read with the archive's
    thresholds (score, background, cap, mask threshold) and clipped to the image."""

    def __init__(self, folder: Path) -> None:
        import torch

        self.torch = torch
        self.model = torch.load(folder / "eager.pt", weights_only=False).eval()
        self.settings = json.loads((folder / "settings.json").read_text())

    def raw(self, bodies: Sequence[bytes]) -> List[dict]:
        from torchvision.transforms.functional import to_tensor

        tensors = [to_tensor(decode(body)) for body in bodies]
        with self.torch.no_grad():
            return self.model(tensors)

    def __call__(self, bodies: Sequence[bytes]) -> List[list]:
        return [self.answer(found, decode(body).size) for found, body in zip(self.raw(bodies), bodies)]

    def answer(self, found: dict, size) -> list:
        s, (width, height) = self.settings, size
        found = {k: v.numpy() for k, v in found.items()}
        order = [i for i in np.argsort(-found["scores"], kind="stable")
                 if found["scores"][i] > s["score_threshold"] and found["labels"][i] != s["background_index"]]
        answer = []
        for i in order[: s["max_detections"]]:
            item = {"index": int(found["labels"][i]), "score": float(found["scores"][i]),
                    "box": [float(v) for v in np.clip(found["boxes"][i], 0, [width, height, width, height])]}
            if "masks" in found:
                item["mask"] = found["masks"][i, 0] > s["mask_threshold"]
            if "keypoints" in found:
                item["keypoints"] = [[float(np.clip(x, 0, width)), float(np.clip(y, 0, height)), float(p)]
                                     for (x, y, _), p in zip(found["keypoints"][i], found["keypoints_scores"][i])]
            answer.append(item)
        return answer


def reference_for(family: str, folder: Path):
    return UltralyticsReference(folder) if family == "yolov8n" else TorchvisionReference(folder)


def served_answer(answer: list, size) -> List[dict]:
    """Our served JSON with masks decoded (pycocotools-compatible RLE -> boolean arrays)."""
    from tsvision.serving.masks import decode_mask

    width, height = size
    return [{**d, "mask": decode_mask(d["mask"], height, width)} if "mask" in d else d for d in answer]


# -- the run ----------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.families", description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="of: " + ",".join(FAMILIES))
    parser.add_argument("--no-stock", action="store_true",
                        help="skip TorchServe's stock object_detector on Faster R-CNN")
    parser.add_argument("--rounds", type=int, default=2,
                        help="reference and served measured in turn, alternating order")
    parser.add_argument("--seconds", type=float, default=6.0, help="per wrk measurement (after --warmup)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded wrk load before each measurement")
    parser.add_argument("--inprocess-seconds", type=float, default=5.0, help="per in-process reference measurement")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--best-batch", type=int, default=8,
                        help="the reference's batch (a list of images per call); 0: skip")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="served batch size (ours; default: tsvision archive's; the stock's: benchmarks.models)")
    parser.add_argument("--max-batch-delay", type=int, default=DEFAULT_MAX_BATCH_DELAY, help="ms (ours and stock)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="workers per model (ours; default: tsvision archive's)")
    parser.add_argument("--exports", type=Path, default=ROOT / "build" / "families",
                        help="exported models, reused between runs")
    parser.add_argument("--fresh", action="store_true", help="export the models again")
    parser.add_argument("--out", type=Path, help="default results/families-<time>")
    parser.add_argument("--table", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: recompute the goals and the table from an earlier run's raw rounds")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    from benchmarks.load import wrk_path
    from benchmarks.lock import HEAVY_LOCK, heavy_run

    args = parse_args(argv)
    if args.table:
        print(retable(args.table))
        return 0
    wrk_path()  # fail early
    print(f"families: waiting for {HEAVY_LOCK} if another heavy run holds it", flush=True)
    with heavy_run(timeout_s=1800):
        return run(args, argv if argv is not None else sys.argv[1:])


def run(args: argparse.Namespace, argv: List[str]) -> int:
    import shlex

    import torch

    from benchmarks.load import run_wrk
    from benchmarks.models import STOCK_BATCH_SIZE, STOCK_WORKERS, archive_handler, build_ours
    from benchmarks.run import machine
    from benchmarks.warmup import warm_batch_sizes
    from tsvision.tools.serve.server import TorchServe

    started = time.time()
    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"unknown families: {sorted(unknown)} (of {', '.join(FAMILIES)})")
    out = args.out or ROOT / "results" / time.strftime("families-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTORCH_TENSOREXPR"] = "0"  # as benchmarks.run: the stock TorchScript otherwise stalls on new shapes
    print("families: RANDOM seeded weights (nothing can be downloaded here): the answers mean nothing, "
          "but ours and the reference's must be equal", flush=True)
    photos = {name: square_photo(name) for name in PHOTOS}
    photo_path = out / "photo.jpg"
    photo_path.write_bytes(photos[PHOTOS[0]])
    body = photos[PHOTOS[0]]

    folders, store, models = {}, out / "store", {}
    for family in families:
        tick = time.time()
        folders[family] = prepare(family, args.exports, args.fresh)
        values = json.loads((folders[family] / "settings.json").read_text())
        models[family] = SPECS[family][2]
        build_ours(folders[family], "onnx", models[family], store, args.batch_size, args.max_batch_delay, args.workers)
        print(f"  export+archive {family:<13} {time.time() - tick:5.1f} s  ({values.get('description')})", flush=True)
    stock = "fasterrcnn" in families and not args.no_stock
    if stock:
        labels = json.loads((folders["fasterrcnn"] / "labels.json").read_text())
        mapping = out / "index_to_name.json"
        mapping.write_text(json.dumps({str(i): name for i, name in enumerate(labels)}))
        files = ["--serialized-file", str(folders["fasterrcnn"] / "stock.pt"), "--extra-files", str(mapping)]
        archive_handler(STOCK, "object_detector", files, store, STOCK_BATCH_SIZE, args.max_batch_delay, STOCK_WORKERS)

    references = {family: reference_for(family, folders[family]) for family in families}
    server = TorchServe(store, out / "torchserve",
                        models=[f"{m}.mar" for m in models.values()] + ([f"{STOCK}.mar"] if stock else []))
    results = []
    try:
        tick = time.time()
        server.start(timeout=600)
        print(f"  TorchServe up in {time.time() - tick:.0f} s", flush=True)
        headers = server.headers("inference")
        for family in families:
            result = {"family": family, "model": models[family], "references": []}
            reference = references[family]
            # -- same answers ----------------------------------------------------------------------
            answers: Dict[str, dict] = {}
            stock_answers: Dict[str, dict] = {}
            for name, photo in photos.items():
                size = decode(photo).size
                response = server.predict(models[family], photo, content_type="image/jpeg", timeout=120)
                if response.status_code != 200:
                    answers[name] = {"error": f"served {response.status_code}: {response.text[:200]}"}
                    continue
                ours = served_answer(response.json(), size)
                theirs = reference([photo])[0]
                answers[name] = compare_answers(ours, theirs)
                if family == "fasterrcnn" and stock:
                    response = server.predict(STOCK, photo, content_type="image/jpeg", timeout=120)
                    if response.status_code != 200:
                        stock_answers[name] = {"error": f"served {response.status_code}: {response.text[:200]}"}
                    else:
                        stock_answers[name] = compare_answers(above(ours, STOCK_THRESHOLD),
                                                              from_stock(response.json(), labels))
                        stock_answers[name]["stock_vs_eager"] = compare_answers(from_stock(response.json(), labels),
                                                                                above(theirs, STOCK_THRESHOLD))
            for name, figures in {**answers, **{f"stock {k}": v for k, v in stock_answers.items()}}.items():
                print(f"  answers    {family:<13} {name:<16} {json.dumps(figures)}", flush=True)
            # -- throughput: reference in-process and served, in turn -----------------------------
            urls = {"ours": f"{server.inference_url}/predictions/{models[family]}"}
            if family == "fasterrcnn" and stock:
                urls["stock"] = f"{server.inference_url}/predictions/{STOCK}"
            probe_s = {}
            for side, url in urls.items():
                warm_batch_sizes(url, body, headers, args.batch_size if side == "ours" else STOCK_BATCH_SIZE,
                                 budget_s=20)
                probe_s[side] = _drain(server, models[family] if side == "ours" else STOCK, body)
            result["single_request_s"] = probe_s
            measured = {"single": [], "best": [], **{side: [] for side in urls}}
            torch_threads = torch.get_num_threads()
            for round_ in range(args.rounds):
                steps = ["reference", "served"] if round_ % 2 == 0 else ["served", "reference"]
                for step in steps:
                    if step == "reference":
                        point = closed_loop(partial(reference, [body]), 1, args.inprocess_seconds)
                        measured["single"].append(point)
                        if args.best_batch > 1:
                            batch = [body] * args.best_batch
                            measured["best"].append(closed_loop(partial(reference, batch), args.best_batch,
                                                                args.inprocess_seconds, warmup=1))
                        if round_ == 0:  # our own pipeline in-process, one image per call: what serving adds
                            result["ours_inprocess"] = ours_inprocess(folders[family], body, args.inprocess_seconds)
                            ours = result["ours_inprocess"]
                            print(f"  ours       {family:<13} in-process: {ours['images_per_s']:6.1f} img/s "
                                  f"(1 per call, p50 {ours['latency_ms_p50']:.0f} ms)", flush=True)
                        best = (f", {measured['best'][-1]['images_per_s']:6.1f} img/s (b{args.best_batch})"
                                if measured["best"] else "")
                        print(f"  reference  {family:<13} round {round_ + 1}: {point['images_per_s']:6.1f} img/s "
                              f"(1 per call, p50 {point['latency_ms_p50']:.0f} ms){best}", flush=True)
                    else:
                        for side, url in urls.items():
                            # a slow model needs a run several times its queueing time (clients × one
                            # request's time) for wrk to count anything; leftover requests are drained
                            # before the next measurement, so neither side measures the other's load
                            seconds = min(MAX_POINT_SECONDS, max(args.seconds, 2 * args.connections * probe_s[side]))
                            name = models[family] if side == "ours" else STOCK
                            run_wrk(url, photo_path, headers, args.connections, args.warmup)
                            _drain(server, name, body)
                            point = run_wrk(url, photo_path, headers, args.connections, seconds)
                            _drain(server, name, body)
                            measured[side].append(point)
                            print(f"  served     {family:<13} round {round_ + 1}: {side:<5} "
                                  f"{point['throughput']:6.1f} req/s "
                                  f"p50 {(point['latency_ms'] or {}).get('p50', 0):.0f} ms"
                                  + (f"  {point['failed']} failed" if point["failed"] else ""), flush=True)
            result["raw"] = measured
            result["torch_threads"] = torch_threads
            result["answers"] = answers
            result["served"] = _served_summary(measured["ours"])
            result["served"]["inprocess_img_s"] = result.get("ours_inprocess", {}).get("images_per_s")
            ref = {"name": REFERENCE_NAMES[family], **_reference_summary(measured["single"], measured["best"]),
                   "answers": answers, "answers_summary": summarise_answers(answers)}
            result["references"].append(ref)
            if "stock" in urls:
                stock_served = _served_summary(measured["stock"])
                result["references"].append({
                    "name": "TorchServe stock object_detector (TorchScript), served, c=8",
                    "single_img_s": stock_served["req_s"], "single_p50_ms": stock_served["p50_ms"],
                    "answers": stock_answers,
                    "answers_summary": f"scores ≥ {STOCK_THRESHOLD} only (the stock threshold): " + summarise_answers(
                        {k: v for k, v in stock_answers.items()})})
                result["stock_served"] = stock_served
            results.append(result)
    finally:
        server.stop()

    rows = goal_rows(results)
    data = {"command": "python -m benchmarks.families " + shlex.join(argv),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "machine": machine(),
            "weights": "RANDOM (seeded, conditioned); nothing can be downloaded here",
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "photos": {name: f"scikit-image {name}, 640x640 JPEG, {len(b):,} bytes" for name, b in photos.items()},
            "results": results, "goals": rows}
    data["elapsed_s"] = round(time.time() - started)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    table = markdown(rows)
    (out / "results.md").write_text(table)
    print()
    print(f"Weights: RANDOM (seeded); machine: {data['machine']['cores']} cores (shared); "
          f"photo {data['photos'][PHOTOS[0]]}; "
          f"served: 1 TorchServe, {args.workers} worker(s) of batch {args.batch_size} (stock: {STOCK_WORKERS} of "
          f"{STOCK_BATCH_SIZE}), delay {args.max_batch_delay} ms, wrk c={args.connections}, "
          f"{args.seconds:g} s after {args.warmup:g} s; medians of {args.rounds} round(s)")
    print(table)
    print(f"families: done in {data['elapsed_s'] / 60:.1f} min -> {out}/results.json, results.md")
    return 0


def _drain(server, name: str, body: bytes) -> float:
    """One request, answered after whatever the server still has queued: seconds it took."""
    tick = time.perf_counter()
    server.predict(name, body, content_type="image/jpeg", timeout=300)
    return time.perf_counter() - tick


def ours_inprocess(folder: Path, body: bytes, seconds: float) -> dict:
    """Our archive's pipeline in this process (the handler's ``handle``, as a worker calls it), one image per call."""
    from benchmarks.inprocess import close, load_task, measure_batches

    worker = load_task(folder, "model.onnx")
    try:
        return measure_batches(worker, body, [1], seconds)[0]
    finally:
        close(worker)


def retable(path: Path) -> str:
    """An earlier run's table from its raw rounds (results.json), with this code's summaries and goals;
    the file's ``goals`` are rewritten and ``results.md`` beside it too."""
    data = json.loads(Path(path).read_text())
    for result in data["results"]:
        raw = result["raw"]
        inprocess = result["served"].get("inprocess_img_s")
        result["served"] = {**_served_summary(raw["ours"]), "inprocess_img_s": inprocess}
        result["references"][0].update(_reference_summary(raw["single"], raw["best"]))
        if raw.get("stock"):
            stock = _served_summary(raw["stock"])
            result["references"][1].update(single_img_s=stock["req_s"], single_p50_ms=stock["p50_ms"])
    data["goals"] = goal_rows(data["results"])
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    table = markdown(data["goals"])
    Path(path).with_name("results.md").write_text(table)
    return table


def _served_summary(points: List[dict]) -> dict:
    rates = [p["throughput"] for p in points]
    p50s = [p["latency_ms"]["p50"] for p in points if p["latency_ms"]]
    return {"req_s": round(statistics.median(rates), 2) if rates else None,  # 2 decimals: goals compare these
            "p50_ms": round(statistics.median(p50s), 1) if p50s else None,
            "rounds_req_s": rates, "failed": sum(p["failed"] for p in points)}


def _reference_summary(single: List[dict], best: List[dict]) -> dict:
    summary = {"single_img_s": round(statistics.median(p["images_per_s"] for p in single), 2),
               "single_p50_ms": round(statistics.median(p["latency_ms_p50"] for p in single), 1),
               "rounds_single_img_s": [p["images_per_s"] for p in single]}
    if best:
        best_rate = round(statistics.median(p["images_per_s"] for p in best), 2)
        if best_rate > summary["single_img_s"]:
            summary.update(best_img_s=best_rate, best_batch=best[0]["batch_size"])
        else:  # one image per call is the tool's best
            summary.update(best_img_s=summary["single_img_s"], best_batch=1)
        summary["batch_img_s"] = {best[0]["batch_size"]: best_rate}
    return summary


def _jsonable(value):
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
