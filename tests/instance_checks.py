"""Instance segmentation's references and checks (tests/unit/test_instance_segmentation.py,
tests/slow/test_instance_models.py, tests/e2e/test_served_instances.py).

References, never our own output: the toys' truth is the bright rectangle of ``tests/scenes.py``;
Mask R-CNN's is the archived ``model.pt``/``model.onnx`` called directly on the same decoded
image; YOLOv8n-seg's is ``YOLO(model.onnx, task="segment").predict(..., rect=False,
retina_masks=True)``; every mask is decoded by pycocotools. The comparison loops against them
(``compare_with_mask_rcnn_file``, ``compare_with_ultralytics``) serve the in-process and the served tests."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from tests.helpers import BACKENDS
from tests.instance_toys import YOLO_BOX_PAD
from tests.scenes import OBJECT_PHOTOS, bright_box_scene, sized_photos
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task
from tsvision.serving.tasks.torchvision_detection import to_chw_float
from tsvision.tools.export.mask_rcnn import OUTPUT_NAMES

coco = pytest.importorskip("pycocotools.mask")

TOY_SETTINGS = {"torchvision": {"background_index": 0, "score_threshold": 0.5}, "yolov8_seg": {"score_threshold": 0.5}}
PHOTOS = ("astronaut", "coffee", "camera")  # Mask R-CNN's photos (mask_rcnn_photos)


def rle_mask(rle: dict) -> np.ndarray:
    """pycocotools' decoding of an answer's mask (the reference decoder)."""
    return coco.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def polygon_mask(rings: list, height: int, width: int) -> np.ndarray:
    if not rings:
        return np.zeros((height, width), bool)
    return coco.decode(coco.merge(coco.frPyObjects(rings, height, width))).astype(bool)


def toy_task(root: Path, fmt: str, backend: str, **overrides):
    values = {"task": "instance_segmentation", "detection_format": fmt, "labels": "labels.json", **TOY_SETTINGS[fmt],
              **overrides}
    return build_task(root / fmt / BACKENDS[backend], Settings.from_mapping(values), root / fmt)


def toy_truth(fmt: str, width: int, height: int):
    """The true mask (the bright rectangle) and the box the toy must answer: the rectangle, or for
    the yolov8_seg toy the rectangle grown by YOLO_BOX_PAD model-input pixels (clipped)."""
    image, (x1, y1, x2, y2) = bright_box_scene(width, height)
    mask = np.zeros((height, width), bool)
    mask[int(y1):int(y2), int(x1):int(x2)] = True
    box = [x1, y1, x2, y2]
    if fmt == "yolov8_seg":
        pad = YOLO_BOX_PAD * max(width, height) / 640
        box = [max(0.0, x1 - pad), max(0.0, y1 - pad), min(width, x2 + pad), min(height, y2 + pad)]
    return image, mask, box


def check_toy_answer(answer: list, fmt: str, width: int, height: int, mask_format: str = "rle") -> float:
    """One instance, label 1, its box within 1 px; returns the mask's agreement with the truth."""
    _, truth, box = toy_truth(fmt, width, height)
    assert len(answer) == 1, answer
    found = answer[0]
    assert set(found) == {"label", "index", "score", "box", "mask"}
    assert found["label"] == "bright rectangle" and found["index"] == 1 and found["score"] > 0.9
    assert np.abs(np.subtract(found["box"], box)).max() <= 1.0, (found["box"], box)
    if mask_format == "rle":
        assert found["mask"]["size"] == [height, width]
        mask = rle_mask(found["mask"])
    elif mask_format == "png":
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(found["mask"]))).convert("L")) > 127
    else:
        mask = polygon_mask(found["mask"], height, width)
    return float((mask == truth).mean())


def direct_mask_rcnn(folder: Path, backend: str, image: Image.Image) -> dict:
    """The archived model file called directly on the decoded image: boxes, labels, scores, masks."""
    array = to_chw_float(np.asarray(image))
    if backend == "torchscript":
        module = torch.jit.load(str(folder / "model.pt")).eval()
        with torch.no_grad():
            _, found = module([torch.from_numpy(array)])
        return {k: v.numpy() for k, v in found[0].items()}
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUT_NAMES, session.run(OUTPUT_NAMES, {"images": array})))


def expected_instances(found: dict, settings: dict, size) -> list:
    """What the answer must be, from the raw outputs: threshold, background, best first, the cap,
    boxes clipped; masks above mask_threshold."""
    width, height = size
    order = [i for i in np.argsort(-found["scores"], kind="stable")
             if found["scores"][i] > settings["score_threshold"] and found["labels"][i] != settings["background_index"]]
    return [{"index": int(found["labels"][i]), "score": float(found["scores"][i]),
             "box": np.clip(found["boxes"][i], 0, [width, height, width, height]),
             "mask": found["masks"][i, 0] > settings["mask_threshold"]} for i in order[: settings["max_detections"]]]


def compare_instances(answer: list, expected: list) -> dict:
    """Same labels in the same order; the largest box/score difference and the worst mask agreement."""
    assert [d["index"] for d in answer] == [e["index"] for e in expected], (answer, expected)
    figures = {"instances": len(answer), "box_px": 0.0, "score": 0.0, "mask_agreement": 1.0}
    for found, wanted in zip(answer, expected):
        figures["box_px"] = max(figures["box_px"], float(np.abs(np.subtract(found["box"], wanted["box"])).max()))
        figures["score"] = max(figures["score"], abs(found["score"] - wanted["score"]))
        agreement = float((rle_mask(found["mask"]) == wanted["mask"]).mean())
        figures["mask_agreement"] = min(figures["mask_agreement"], agreement)
    return figures


def assert_close(figures: dict) -> None:
    assert figures["box_px"] <= 1.0 and figures["score"] <= 1e-3 and figures["mask_agreement"] >= 0.995, figures


def assert_yolo_parity(figures: dict) -> None:
    """Issue 24's parity with ultralytics' predictor (same classes in order: ``compare_instances``)."""
    assert figures["box_px"] <= 0.01 and figures["score"] <= 1e-4 and figures["mask_agreement"] >= 0.999, figures


def mask_rcnn_photos() -> Dict[str, Image.Image]:
    """scikit-image's ``PHOTOS`` at their own sizes, RGB."""
    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}


def compare_with_mask_rcnn_file(answer_of: Callable[[Image.Image], list], folder: Path, backend: str,
                                settings: dict, what: str) -> List[list]:
    """``answer_of(image)`` on each of ``mask_rcnn_photos`` against the answer derived from the archived
    Mask R-CNN file called directly (``direct_mask_rcnn``, ``expected_instances``): ``assert_close``;
    returns the answers."""
    answers = []
    for name, image in mask_rcnn_photos().items():
        answer = answer_of(image)
        expected = expected_instances(direct_mask_rcnn(folder, backend, image), settings, image.size)
        figures = compare_instances(answer, expected)
        print(f"\n{what} {name} {image.size}: {figures}")
        assert_close(figures)
        answers.append(answer)
    return answers


def compare_with_ultralytics(answer_of: Callable[[Image.Image], list], folder: Path, settings: Settings,
                             what: str) -> List[Tuple[str, Image.Image, list]]:
    """``answer_of(image)`` on ``yolo_photos`` and, resampled by both sides (OpenCV's resize, as
    ultralytics' LetterBox), real photos at 1280×720, 333×777 and 900×420, against ultralytics'
    predictor on the same ONNX file (``assert_yolo_parity``); returns (name, image, answer) per photo."""
    compared = []
    for name, image in {**yolo_photos(), **sized_photos(OBJECT_PHOTOS)}.items():
        answer = answer_of(image)
        figures = compare_instances(answer, ultralytics_answer(folder, image, settings))
        print(f"\n{what} {name} {image.size}: {figures}")
        assert_yolo_parity(figures)
        compared.append((name, image, answer))
    return compared


def yolo_photos() -> dict:
    """Photos whose longer side is 640 (the model's input): no resize on either side."""
    chosen = {}
    for name in ("astronaut", "camera", "coffee", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        scale = 640 / max(image.size)
        chosen[name] = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    chosen["astronaut_wide"] = chosen["astronaut"].crop((0, 100, 640, 500))
    return chosen


def ultralytics_answer(folder: Path, image: Image.Image, settings: Settings) -> list:
    """ultralytics' predictor on the same ONNX file: square 640 letterbox (rect=False: otherwise a
    dynamic ONNX model gets the smallest stride-32 rectangle), masks at the original size
    (retina_masks=True), the same thresholds and cap."""
    from ultralytics import YOLO

    model = YOLO(str(folder / "model.onnx"), task="segment")
    result = model.predict(image, imgsz=settings.input_size, conf=settings.score_threshold, iou=settings.iou_threshold,
                           max_det=settings.max_detections, rect=False, retina_masks=True, verbose=False)[0]
    if result.masks is None:
        return []
    return [{"index": int(c), "score": float(s), "box": b, "mask": m.astype(bool)}
            for c, s, b, m in zip(result.boxes.cls.numpy(), result.boxes.conf.numpy(), result.boxes.xyxy.numpy(),
                                  result.masks.data.numpy())]
