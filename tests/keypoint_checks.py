"""Keypoints' references and checks (tests/unit/test_keypoints.py, tests/slow/test_keypoint_models.py,
tests/e2e/test_served_keypoints.py): the toys' settings and truth, the Keypoint R-CNN answer derived
from the model file's raw outputs, ultralytics' predictor on the same ONNX file, and the comparison
loops both the in-process and the served tests run against them.

References never come from tsvision's own answers: the truth of the scene, the archived model
file called directly (``torch.jit.load`` / ONNX Runtime) with the answer derived from its raw
outputs here, and ultralytics' own predictor and post-processing."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import photo, png
from tests.keypoint_toys import TOY_KEYPOINT_NAMES, TOY_KEYPOINT_SCORES, TOY_SKELETON, TOY_VISIBILITY, true_keypoints
from tests.scenes import PERSON_PHOTOS, sized_photos
from tsvision.serving.tasks.torchvision_detection import to_chw_float

SIZE = 640  # the toys' input size
# pose: one class, index 0
TOY_LABELS = {"toy_rcnn": ["background", "bright rectangle"], "toy_pose": ["bright rectangle"]}
TOY_NAMES = {"keypoint_names": TOY_KEYPOINT_NAMES, "skeleton": TOY_SKELETON}
TOY_SETTINGS = {
    "toy_rcnn": {"task": "keypoints", "detection_format": "torchvision", "background_index": 0, "score_threshold": 0.5,
                 **TOY_NAMES},
    "toy_pose": {"task": "keypoints", "detection_format": "yolov8_pose", "input_size": SIZE, "score_threshold": 0.5,
                 **TOY_NAMES},
}
FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
RCNN_PHOTOS = ("astronaut", "coffee")  # 512×512 and 400×600
KEYS = ("boxes", "labels", "scores", "keypoints", "keypoints_scores")



def pose_photos() -> Dict[str, Image.Image]:
    """Photos with their longer side at 640, the model's input (no resampling), and real photos at
    1280×720, 333×777 and 900×420 that both sides resample (OpenCV, as ultralytics' LetterBox). The
    random seed-0 YOLOv8n-pose finds persons on each above 0.25 (how many: docs/models.md)."""
    return {"immunohistochemistry": photo("immunohistochemistry").resize((640, 640)),
            "page": photo("page").resize((640, 318)), **sized_photos(PERSON_PHOTOS)}


@functools.lru_cache(maxsize=2)
def pose_predictor(folder: Path):
    from ultralytics import YOLO

    return YOLO(str(folder / "model.onnx"), task="pose")


def ultralytics_persons(folder: Path, image: Image.Image) -> list:
    """ultralytics' predictor on the same ONNX file at its defaults (conf 0.25, iou 0.7) with
    ``rect=False``, on the PNG-decoded pixels as a BGR array (its order for numpy input)."""
    decoded = np.asarray(Image.open(io.BytesIO(png(image))).convert("RGB"))
    result = pose_predictor(folder).predict(decoded[:, :, ::-1].copy(), imgsz=640, conf=0.25, iou=0.7, rect=False,
                                            verbose=False)[0]
    return [{"label": result.names[int(c)], "index": int(c), "score": float(s), "box": [float(v) for v in box],
             "keypoints": points.tolist()}
            for c, s, box, points in zip(result.boxes.cls, result.boxes.conf, result.boxes.xyxy.numpy(),
                                         result.keypoints.data.numpy())]


def assert_yolo_parity(figures: dict) -> None:
    """Issue 24's parity with ultralytics' predictor (same classes in order: ``differences``)."""
    assert figures["persons"] >= 1, "no person: the comparison would be empty"
    assert figures["box"] <= 0.01 and figures["point"] <= 0.01, figures
    assert figures["score"] <= 1e-4 and figures["keypoint_score"] <= 1e-4, figures


def persons_from_raw(raw: Dict[str, np.ndarray], settings: dict, labels: List[str], size) -> list:
    """What a Keypoint R-CNN answer must be, from the model file's raw outputs (not the task's code)."""
    width, height = size
    rows = [i for i in range(len(raw["scores"]))
            if raw["scores"][i] > settings["score_threshold"] and raw["labels"][i] != 0]
    rows.sort(key=lambda i: -raw["scores"][i])
    answer = []
    for i in rows[: settings["max_detections"]]:
        x1, y1, x2, y2 = np.clip(raw["boxes"][i], 0, [width, height, width, height])
        points = [[float(np.clip(x, 0, width)), float(np.clip(y, 0, height)), float(s)]
                  for (x, y, _), s in zip(raw["keypoints"][i], raw["keypoints_scores"][i])]
        answer.append({"label": labels[int(raw["labels"][i])], "index": int(raw["labels"][i]),
                       "score": float(raw["scores"][i]),
                       "box": [float(x1), float(y1), float(x2), float(y2)], "keypoints": points})
    return answer


def direct(folder: Path, backend: str, image: Image.Image) -> Dict[str, np.ndarray]:
    """The archived model file called directly on the decoded image."""
    array = to_chw_float(np.asarray(image))
    if backend == "torchscript":
        module = torch.jit.load(str(folder / "model.pt")).eval()
        with torch.no_grad():
            _, found = module([torch.from_numpy(array)])
        return {k: found[0][k].numpy() for k in KEYS}
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(KEYS, session.run(list(KEYS), {"images": array})))


def differences(a: list, b: list) -> dict:
    """Persons matched in order (both best first): counts, largest box, score, point, keypoint-score gaps."""
    assert [d["index"] for d in a] == [d["index"] for d in b], (a, b)
    if not a:
        return {"persons": 0, "box": 0.0, "score": 0.0, "point": 0.0, "keypoint_score": 0.0}
    pa, pb = np.array([d["keypoints"] for d in a]), np.array([d["keypoints"] for d in b])
    return {"persons": len(a), "box": float(np.abs(np.array([d["box"] for d in a]) - [d["box"] for d in b]).max()),
            "score": float(max(abs(x["score"] - y["score"]) for x, y in zip(a, b))),
            "point": float(np.abs(pa[..., :2] - pb[..., :2]).max()),
            "keypoint_score": float(np.abs(pa[..., 2] - pb[..., 2]).max())}


def compare_with_rcnn_file(answer_of: Callable[[Image.Image], list], folder: Path, backend: str, settings: dict,
                           labels: List[str], what: str) -> List[Tuple[Image.Image, list, dict]]:
    """``answer_of(image)`` on each of ``RCNN_PHOTOS`` against the answer derived from the archived
    Keypoint R-CNN file called directly (``direct``, ``persons_from_raw``): the same persons, at least
    one; returns (image, answer, figures) per photo for the caller's tolerances."""
    compared = []
    for name in RCNN_PHOTOS:
        image = photo(name)
        answer = answer_of(image)
        expected = persons_from_raw(direct(folder, backend, image), settings, labels, image.size)
        figures = differences(answer, expected)
        print(f"\n{what} {name} {image.size}: {figures}")
        assert answer and figures["persons"] == len(expected)
        compared.append((image, answer, figures))
    return compared


def compare_with_ultralytics(answer_of: Callable[[Image.Image], list], folder: Path,
                             what: str) -> List[Tuple[str, Image.Image, list]]:
    """``answer_of(image)`` on each of ``pose_photos`` against ultralytics' predictor on the same ONNX
    file (``assert_yolo_parity``); returns (name, image, answer) per photo."""
    compared = []
    for name, image in pose_photos().items():
        answer = answer_of(image)
        figures = differences(answer, ultralytics_persons(folder, image))
        print(f"\n{what} vs ultralytics on {name} {image.size}: {figures}")
        assert_yolo_parity(figures)
        compared.append((name, image, answer))
    return compared


def check_person_schema(answer: list, width: int, height: int, keypoints: int) -> None:
    assert [d["score"] for d in answer] == sorted((d["score"] for d in answer), reverse=True)
    for person in answer:
        assert set(person) == {"label", "index", "score", "box", "keypoints"}
        x1, y1, x2, y2 = person["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert len(person["keypoints"]) == keypoints
        assert all(0 <= x <= width and 0 <= y <= height for x, y, _ in person["keypoints"])


def assert_toy_truth(answer: list, truth: List[float], toy: str) -> float:
    """The one person on the rectangle: box and points within 1 px of the truth, the toy's scores."""
    keypoint_scores = TOY_KEYPOINT_SCORES if toy == "toy_rcnn" else TOY_VISIBILITY
    assert len(answer) == 1, answer
    person = answer[0]
    assert person["index"] == TOY_LABELS[toy].index("bright rectangle") and person["label"] == "bright rectangle"
    assert abs(person["score"] - 0.9) < 1e-6
    box_error = float(np.abs(np.subtract(person["box"], truth)).max())
    point_error = float(np.abs(np.array(person["keypoints"])[:, :2] - true_keypoints(truth)).max())
    assert box_error <= 1.0 and point_error <= 1.0, (person, truth)
    assert [p[2] for p in person["keypoints"]] == pytest.approx(keypoint_scores, abs=1e-4)
    return max(box_error, point_error)
