"""``yolov8_obb`` against ultralytics itself (slow: one ultralytics export): a random seeded
``yolov8n-obb`` conditioned to give confident boxes (``tsvision export --arch yolov8n-obb``), archived
as a user would (``tsvision archive --task detection``: the format from the ONNX metadata), and the
task in-process compared with ``YOLO(model.onnx).predict`` on the same photos: the same classes,
corners within 1 px, angles within 1e-3 rad, scores within 1e-3."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import skimage.data
import yaml
from PIL import Image

os.environ.setdefault("YOLO_OFFLINE", "1")
pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402

from tests.helpers import png  # noqa: E402
from tsvision.serving.tasks import load_export  # noqa: E402
from tsvision.tools.archive.cli import main as archive_main  # noqa: E402
from tsvision.tools.export.cli import main as export_main  # noqa: E402

# ultralytics' predictor defaults: conf, iou, max_det (and max_nms candidates before NMS)
CONF, IOU, MAX_DET, MAX_NMS = 0.25, 0.7, 300, 30000
CORNER_TOL, SCORE_TOL, ANGLE_TOL = 1.0, 1e-3, 1e-3
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket")
SIZES = ((640, 640), (1280, 720), (333, 777))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("yolov8n_obb")
    with contextlib.redirect_stdout(io.StringIO()):
        assert export_main(["--task", "detection", "--arch", "yolov8n-obb", "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def images() -> Dict[str, Image.Image]:
    photos = {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}
    chosen = {f"{name} own size": image for name, image in photos.items()}
    chosen.update({f"{name} {w}x{h}": photos[name].resize((w, h), Image.BILINEAR)
                   for name in ("astronaut", "camera") for w, h in SIZES})
    # letterboxed with padding, and answered by the conditioned model: wide crops of the camera photo
    chosen.update({f"camera crop {box}": photos["camera"].crop(box) for box in ((0, 0, 512, 360), (0, 0, 512, 256))})
    return chosen


def theirs(yolo, image: Image.Image) -> List[dict]:
    obb = yolo.predict(image, conf=CONF, iou=IOU, max_det=MAX_DET, imgsz=640, rect=False, verbose=False)[0].obb
    return [{"index": int(c), "score": float(s), "corners": np.asarray(q, dtype=float).tolist(), "angle": float(r[4])}
            for c, s, q, r in zip(obb.cls, obb.conf, obb.xyxyxyxy, obb.xywhr)]


def test_export_and_archive_name_the_format(exported, tmp_path):
    report = json.loads((exported / "report.json").read_text())
    assert report["ok"] and report["detection_format"] == "yolov8_obb" and report["task"] == "detection", report
    settings = json.loads((exported / "settings.json").read_text())
    assert (settings["detection_format"], settings["resize_mode"], settings["score_threshold"]) == \
        ("yolov8_obb", "letterbox_center", CONF)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = archive_main(["--model", str(exported / "model.onnx"), "--task", "detection", "--name", "obb",
                             "--store", str(tmp_path)])
    assert code == 0, out.getvalue()
    assert "detection_format=yolov8_obb" in out.getvalue()
    with zipfile.ZipFile(tmp_path / "obb.mar") as mar:
        handler = yaml.safe_load(mar.read("model-config.yaml"))["handler"]
    assert handler["detection_format"] == "yolov8_obb" and handler["input_size"] == 640


def test_in_process_equals_ultralytics_predictor(exported, images):
    yolo = YOLO(str(exported / "model.onnx"), task="obb")
    task = load_export(exported, "model.onnx", max_detections=MAX_DET, pre_nms_top_k=MAX_NMS)
    compared = 0
    try:
        for name, image in images.items():
            ours, reference = task.run([png(image)])[0], theirs(yolo, image)
            assert len(ours) == len(reference), (name, ours, reference)
            remaining = list(reference)
            for det in ours:
                twins = [t for t in remaining if t["index"] == det["index"]
                         and abs(t["score"] - det["score"]) <= SCORE_TOL
                         and np.abs(np.subtract(t["corners"], det["corners"])).max() <= CORNER_TOL]
                assert twins, (name, det, reference)
                twin = twins[0]
                remaining.remove(twin)
                assert math.isclose(det["angle"], twin["angle"], abs_tol=ANGLE_TOL), (name, det, twin)
                corners = np.asarray(det["corners"])
                assert det["box"] == pytest.approx([*corners.min(axis=0), *corners.max(axis=0)], abs=0.01)
            compared += len(ours)
            print(f"{name} {image.size}: {len(ours)} oriented boxes, classes {[d['index'] for d in ours]}")
    finally:
        task.close()
    assert compared >= 3, "the conditioned model gave (almost) no boxes: the comparison would be empty"
