"""YOLOv8n's references (tests/slow/test_yolo_export.py, tests/e2e/test_served_detectors.py):
ultralytics' predictor at its defaults on the same decoded pixels, the test images, and the
issue's tolerances (see tests/slow/test_yolo_export.py's docstring)."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import yaml
from PIL import Image
from ultralytics.utils import ROOT

from tests.helpers import photo
from tests.scenes import OBJECT_PHOTOS, sized_photos

# ultralytics' predictor defaults (cfg/default.yaml; Model.predict sets conf 0.25): conf, iou, max_det.
# Its non_max_suppression also keeps at most max_nms=30000 candidates before NMS.
CONF, IOU, MAX_DET, MAX_NMS = 0.25, 0.7, 300, 30000
SAME_AS_ULTRALYTICS = {"max_detections": MAX_DET, "pre_nms_top_k": MAX_NMS}  # tsvision's defaults: 100, 1000
BOX_TOL, SCORE_TOL = 0.01, 1e-4  # issue 24's parity (tsvision rounds boxes to 0.01 px)



def yolo_images() -> Dict[str, Image.Image]:
    """Test images built once from scikit-image photos: the two photos the conditioned model answers
    scaled to 640, a wide and a tall crop (no resize on either side), and the photos at 1280×720,
    333×777 and 900×420 that must be resampled (tests/scenes.py ``OBJECT_PHOTOS``)."""
    immuno = photo("immunohistochemistry", 640)
    wide, tall = immuno.crop((0, 280, 640, 640)), immuno.crop((0, 0, 274, 640))
    return {"astronaut": photo("astronaut", 640), "camera": photo("camera", 640),
            "wide 640x360": wide, "tall 274x640": tall, **sized_photos(OBJECT_PHOTOS)}


# COCO's names from ultralytics' own dataset file (what its pretrained YOLOv8n says), read here independently
COCO_NAMES = [yaml.safe_load((ROOT / "cfg" / "datasets" / "coco.yaml").read_text())["names"][i] for i in range(80)]
UNRESAMPLED = ("astronaut", "camera", "wide 640x360", "tall 274x640")
RESAMPLED = ("1280x720", "333x777", "900x420")


def as_answer(classes, scores, boxes) -> List[dict]:
    return [{"index": int(c), "score": float(s), "box": [float(v) for v in b]}
            for c, s, b in zip(np.asarray(classes), np.asarray(scores), np.asarray(boxes))]


def ultralytics_direct(yolo, image: Image.Image, **options) -> List[dict]:
    """ultralytics' predictor on a PIL image (it converts PIL RGB to its BGR order itself)."""
    result = yolo.predict(image, conf=CONF, iou=IOU, max_det=MAX_DET, imgsz=640, rect=False, verbose=False,
                          **options)[0]
    return as_answer(result.boxes.cls, result.boxes.conf, result.boxes.xyxy)


def assert_equal_answers(ours: List[dict], theirs: List[dict], what: str) -> tuple:
    """The same detections: each of ours has its own twin in theirs of the same class, boxes within
    BOX_TOL px, scores within SCORE_TOL, and the two lists are in the same order except between scores
    closer than SCORE_TOL (measured in CI: a person and a car both at 0.25293 swapped places under
    other ONNX Runtime thread timing). Returns the largest box and score differences and whether the
    classes come in the same order."""
    assert ours, f"{what}: no box, so the comparison would be empty"
    assert len(ours) == len(theirs), (what, ours, theirs)
    assert all(abs(a["score"] - b["score"]) <= SCORE_TOL for a, b in zip(ours, theirs)), (what, ours, theirs)
    box, score, remaining = 0.0, 0.0, list(theirs)
    for det in ours:
        twins = [t for t in remaining if t["index"] == det["index"]
                 and np.abs(np.subtract(t["box"], det["box"])).max() <= BOX_TOL
                 and abs(t["score"] - det["score"]) <= SCORE_TOL]
        assert twins, (what, det, theirs)
        twin = min(twins, key=lambda t: abs(t["score"] - det["score"]))
        remaining.remove(twin)
        box = max(box, float(np.abs(np.subtract(twin["box"], det["box"])).max()))
        score = max(score, abs(twin["score"] - det["score"]))
    return box, score, [d["index"] for d in ours] == [d["index"] for d in theirs]
