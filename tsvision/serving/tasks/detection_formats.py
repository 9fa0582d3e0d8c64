"""Detector output layouts (handler setting ``detection_format``) -> candidate boxes.

Each decoder takes the raw outputs of ONE image (the batch axis already removed), the settings
and the image's ``Placement``, and returns ``Candidates``: boxes x1, y1, x2, y2 in model-input
pixels, their scores and class ids, already above ``score_threshold``. ``DetectionTask.finish``
then runs NMS, keeps ``max_detections`` and maps the boxes to the original image.
Layouts (docs/models.md, "Detection output formats"):

- ``ssd``: ``boxes`` A×4 xyxy input pixels, ``scores`` A×C probabilities; every (box, class)
  pair above the threshold is a candidate; ``background_index`` is never one.
- ``yolov8`` (YOLOv8, YOLO11): one (4+C)×A: cx, cy, w, h input pixels, sigmoid class scores.
- ``yolov5``: A×(5+C): cx, cy, w, h, objectness, class scores; score = objectness × class.
- ``yolo_nms`` (ultralytics ``nms=True``, YOLOv10, YOLO26): K×6: x1, y1, x2, y2, score, class,
  zero-padded; already suppressed, so no NMS runs.
- ``detr``: ``pred_logits`` Q×(C+1) (softmax, last column "no object") and ``pred_boxes`` Q×4
  cx, cy, w, h normalised to the image content.
- ``rtdetr`` (ultralytics RT-DETR): Q×(4+C): cx, cy, w, h normalised to the model input,
  sigmoid scores.

The yolo and detr formats keep the best class of each box (as ultralytics and DETR do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tsvision.serving.geometry import Placement
from tsvision.serving.tasks.base import shape_text


@dataclass
class Candidates:
    boxes: np.ndarray    # K×4 float32 x1, y1, x2, y2 in model-input pixels
    scores: np.ndarray   # K float32
    classes: np.ndarray  # K int64
    extra: Optional[np.ndarray] = None  # K×… per-candidate data a task carries along (keypoints)

    def take(self, rows: np.ndarray) -> "Candidates":
        """These rows of every field."""
        return Candidates(self.boxes[rows], self.scores[rows], self.classes[rows],
                          None if self.extra is None else self.extra[rows])


def _shape_error(fmt: str, expected: str, outputs: Sequence[np.ndarray]) -> ValueError:
    shapes = ", ".join("N×" + "×".join(str(d) for d in o.shape) for o in outputs)
    return ValueError(f"detection_format {fmt!r} expects {expected}; the model's outputs are {shapes} "
                      "(docs/models.md lists the formats; choose one with --set detection_format=...)")


def _one_output(fmt: str, outputs: Sequence[np.ndarray], expected: str, check: Callable[[np.ndarray], bool]) -> np.ndarray:
    if len(outputs) != 1 or outputs[0].ndim != 2 or not check(outputs[0]):
        raise _shape_error(fmt, expected, outputs)
    return outputs[0]


def _xyxy(cxcywh: np.ndarray) -> np.ndarray:
    cx, cy, w, h = cxcywh[:, 0], cxcywh[:, 1], cxcywh[:, 2], cxcywh[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def _best_class(scores: np.ndarray, threshold: float):
    """Per box: its best class and score; the boxes whose best score passes ``threshold``."""
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), classes]
    keep = np.nonzero(best > threshold)[0]
    return keep, best[keep].astype(np.float32), classes[keep].astype(np.int64)


def decode_ssd(outputs, settings, placement: Placement) -> Candidates:
    if len(outputs) < 2 or outputs[0].ndim != 2 or outputs[0].shape[-1] != 4 or outputs[1].ndim != 2 \
            or outputs[1].shape[0] != outputs[0].shape[0]:
        raise _shape_error("ssd", "boxes N×A×4 and scores N×A×C (further outputs are ignored)", outputs)
    boxes, scores = outputs[0], outputs[1]
    if settings.background_index is not None:  # "no object" is never a detection
        scores = scores.copy()
        scores[:, settings.background_index] = 0.0
    anchors, classes = np.nonzero(scores > settings.score_threshold)
    return Candidates(np.asarray(boxes[anchors], dtype=np.float32), scores[anchors, classes].astype(np.float32),
                      classes.astype(np.int64))


def decode_yolov8(outputs, settings, placement: Placement) -> Candidates:
    raw = _one_output("yolov8", outputs, "one output N×(4+C)×A with 4+C < A", lambda o: 5 <= o.shape[0] < o.shape[1])
    keep, scores, classes = _best_class(raw[4:].T, settings.score_threshold)
    return Candidates(_xyxy(raw[:4, keep].T), scores, classes)


def decode_yolov5(outputs, settings, placement: Placement) -> Candidates:
    raw = _one_output("yolov5", outputs, "one output N×A×(5+C)", lambda o: o.shape[1] >= 6)
    keep, scores, classes = _best_class(raw[:, 5:] * raw[:, 4:5], settings.score_threshold)
    return Candidates(_xyxy(raw[keep, :4]), scores, classes)


def decode_yolo_nms(outputs, settings, placement: Placement) -> Candidates:
    raw = _one_output("yolo_nms", outputs, "one output N×K×6 (x1, y1, x2, y2, score, class)", lambda o: o.shape[1] == 6)
    keep = np.nonzero(raw[:, 4] > settings.score_threshold)[0]
    return Candidates(raw[keep, :4].astype(np.float32), raw[keep, 4].astype(np.float32),
                      np.rint(raw[keep, 5]).astype(np.int64))


def decode_detr(outputs, settings, placement: Placement) -> Candidates:
    if len(outputs) == 2 and outputs[0].ndim == 2 and outputs[0].shape[-1] == 4 and outputs[1].ndim == 2 \
            and outputs[1].shape[-1] != 4:
        outputs = outputs[::-1]  # pred_boxes came first
    if len(outputs) != 2 or outputs[0].ndim != 2 or outputs[1].ndim != 2 or outputs[1].shape[-1] != 4 \
            or outputs[0].shape[0] != outputs[1].shape[0] or outputs[0].shape[-1] < 2:
        raise _shape_error("detr", "two outputs, pred_logits N×Q×(C+1) and pred_boxes N×Q×4", outputs)
    logits, boxes = outputs
    logits = logits.astype(np.float32)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    keep, scores, classes = _best_class(probabilities[:, :-1], settings.score_threshold)
    # Normalised to the image content (DETR resizes without padding): to model-input pixels.
    scale = np.array([placement.content_width, placement.content_height] * 2, dtype=np.float32)
    offset = np.array([placement.offset_x, placement.offset_y] * 2, dtype=np.float32)
    return Candidates(_xyxy(boxes[keep]) * scale + offset, scores, classes)


def decode_rtdetr(outputs, settings, placement: Placement) -> Candidates:
    raw = _one_output("rtdetr", outputs, "one output N×Q×(4+C)", lambda o: o.shape[1] >= 5)
    keep, scores, classes = _best_class(raw[:, 4:], settings.score_threshold)
    return Candidates(_xyxy(raw[keep, :4]) * np.float32(placement.input_size), scores, classes)


DECODERS: Dict[str, Callable[..., Candidates]] = {
    "ssd": decode_ssd, "yolov8": decode_yolov8, "yolov5": decode_yolov5,
    "yolo_nms": decode_yolo_nms, "detr": decode_detr, "rtdetr": decode_rtdetr,
}
NMS_FREE = ("yolo_nms",)  # formats whose model already suppressed overlapping boxes


def class_count(fmt: str, outputs: Sequence[np.ndarray], background: bool = True) -> Optional[Tuple[int, str]]:
    """How many classes one image's outputs in format ``fmt`` score, and where that shows (``background``:
    ``ssd``'s scores have a background column); None where the layout does not tell (``yolo_nms``
    carries class indices) or the shapes do not fit (the decoder then says what is wrong)."""
    shapes = [np.shape(o) for o in outputs]
    one = len(shapes) == 1 and len(shapes[0]) == 2
    if fmt == "ssd" and len(shapes) >= 2 and len(shapes[1]) == 2:
        return shapes[1][1], f"scores {shape_text(outputs[1])}" + (", the background column included" if background else "")
    if fmt == "yolov8" and one and shapes[0][0] > 4:
        return shapes[0][0] - 4, f"output {shape_text(outputs[0])}: 4 box rows, then one per class"
    if fmt == "yolov5" and one and shapes[0][1] > 5:
        return shapes[0][1] - 5, f"output {shape_text(outputs[0])}: 4 box columns and objectness, then one per class"
    if fmt == "rtdetr" and one and shapes[0][1] > 4:
        return shapes[0][1] - 4, f"output {shape_text(outputs[0])}: 4 box columns, then one per class"
    if fmt == "detr" and len(shapes) == 2 and all(len(shape) == 2 for shape in shapes):
        logits = 1 if shapes[0][-1] == 4 and shapes[1][-1] != 4 else 0  # pred_boxes may come first
        return shapes[logits][1] - 1, f"pred_logits {shape_text(outputs[logits])}, the last column 'no object'"
    return None


def guess_format(shapes: List[Sequence[int]]) -> Optional[str]:
    """The format the output ``shapes`` (with their batch axis) unambiguously imply, else None."""
    if len(shapes) == 1 and len(shapes[0]) == 3:
        _, first, second = shapes[0]
        if second == 6:
            return "yolo_nms"
        if 5 <= first < second:
            return "yolov8"
        return None  # N×A×(5+C) (yolov5) and N×Q×(4+C) (rtdetr) look alike
    if len(shapes) == 2 and all(len(s) == 3 for s in shapes) and shapes[0][1] == shapes[1][1]:
        if shapes[0][2] == 4 and shapes[1][2] != 4:
            return "ssd"   # boxes, scores
        if shapes[0][2] != 4 and shapes[1][2] == 4:
            return "detr"  # pred_logits, pred_boxes
    return None
