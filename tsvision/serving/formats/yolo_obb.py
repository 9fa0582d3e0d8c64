"""``yolov8_obb``: ultralytics' oriented boxes (YOLOv8/YOLO11-obb ONNX exports), task ``detection``.

One output N×(4+C+1)×A: cx, cy, w, h in model-input pixels, C sigmoid class scores, then the
angle in radians (the OBB head's ``(sigmoid - 1/4) π``). Each box keeps its best class; the
boxes are suppressed as ultralytics' ``non_max_suppression(rotated=True)`` does (fast NMS on the
probabilistic IoU of the boxes as Gaussians, ``batch_probiou``; per class unless ``agnostic_nms``)
and mapped back through the letterbox as its ``OBBPredictor`` does (``scale_boxes(xywh=True)``).

Each answer entry is a detection (``label``, ``index``, ``score``, ``box``: the axis-aligned box
enclosing the corners) plus ``corners`` [[x, y] × 4] (ultralytics' ``xywhr2xyxyxyxy`` order) and
``angle`` (radians, as ultralytics reports it), all in original pixels, unclipped as ultralytics
reports them. The layout is yolov8's with one more row, so it is never guessed from output shapes:
ultralytics writes ``task: obb`` in the ONNX metadata, which names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.drawing import box_canvas, box_colour
from tsvision.serving.formats.registry import Candidates, ClassCount, Format
from tsvision.serving.formats.yolo import PREDICT, RESIZE
from tsvision.serving.geometry import Placement
from tsvision.serving.ops import best_class, one_output, shape_text
from tsvision.serving.results import Detections
from tsvision.serving.slicing import SLICE_OPTIONS
from tsvision.serving.tasks.detection import DetectionTask

CLASS_OFFSET = 7680  # ultralytics' max_wh: boxes of different classes are moved this far apart per class index


def corners(xywhr: np.ndarray) -> np.ndarray:
    """K×5 cx, cy, w, h, angle -> K×4×2 corner points (ultralytics' ``xywhr2xyxyxyxy``)."""
    centre = xywhr[:, None, :2]
    cos, sin = np.cos(xywhr[:, 4:5]), np.sin(xywhr[:, 4:5])
    half_w = np.concatenate([xywhr[:, 2:3] / 2 * cos, xywhr[:, 2:3] / 2 * sin], axis=1)[:, None]
    half_h = np.concatenate([-xywhr[:, 3:4] / 2 * sin, xywhr[:, 3:4] / 2 * cos], axis=1)[:, None]
    return np.concatenate([centre + half_w + half_h, centre + half_w - half_h,
                           centre - half_w - half_h, centre - half_w + half_h], axis=1)


def corner_rows(quad: np.ndarray) -> List[List[float]]:
    """4×2 corners -> JSON rows, to 0.01 px."""
    return [[round(float(x), 2), round(float(y), 2)] for x, y in quad]


def enclosing(points: np.ndarray) -> np.ndarray:
    """K×4×2 corners -> K×4 float32 x1, y1, x2, y2 of the axis-aligned box around them."""
    return np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1).astype(np.float32)


def decode_yolov8_obb(outputs: Sequence[np.ndarray], settings: Any, placement: Placement) -> Candidates:
    """(4+C+1)×A -> candidates above the threshold; ``extra`` their K×5 cx, cy, w, h, angle in input pixels."""
    raw = one_output("yolov8_obb", outputs, "one output N×(4+C+1)×A (cx, cy, w, h, C class scores, angle), 4+C+1 < A",
                     lambda o: 6 <= o.shape[0] < o.shape[1])
    keep, scores, classes = best_class(raw[4:-1].T, settings.score_threshold)
    xywhr = np.concatenate([raw[:4, keep].T, raw[-1:, keep].T], axis=1).astype(np.float32)
    return Candidates(enclosing(corners(xywhr)), scores, classes, xywhr)


def probiou(boxes: Any, others: Any, eps: float = 1e-7) -> Any:
    """N×M probabilistic IoU of N×5 and M×5 cx, cy, w, h, angle torch tensors (ultralytics' ``batch_probiou``:
    each box a 2-d Gaussian; one minus the Hellinger distance of the Bhattacharyya coefficient)."""
    import torch

    def covariance(xywhr: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        a, b, c = torch.cat((xywhr[:, 2:4].pow(2) / 12, xywhr[:, 4:]), dim=-1).split(1, dim=-1)
        cos, sin = c.cos(), c.sin()
        return a * cos.pow(2) + b * sin.pow(2), a * sin.pow(2) + b * cos.pow(2), (a - b) * cos * sin

    x1, y1 = boxes[..., :2].split(1, dim=-1)
    x2, y2 = (x.squeeze(-1)[None] for x in others[..., :2].split(1, dim=-1))
    a1, b1, c1 = covariance(boxes)
    a2, b2, c2 = (x.squeeze(-1)[None] for x in covariance(others))
    denominator = (a1 + a2) * (b1 + b2) - (c1 + c2).pow(2)
    t1 = (((a1 + a2) * (y1 - y2).pow(2) + (b1 + b2) * (x1 - x2).pow(2)) / (denominator + eps)) * 0.25
    t2 = (((c1 + c2) * (x2 - x1) * (y1 - y2)) / (denominator + eps)) * 0.5
    t3 = (denominator / (4 * ((a1 * b1 - c1.pow(2)).clamp_(0) * (a2 * b2 - c2.pow(2)).clamp_(0)).sqrt() + eps)
          + eps).log() * 0.5
    distance = (t1 + t2 + t3).clamp(eps, 100.0)
    return 1 - (1.0 - (-distance).exp() + eps).sqrt()


def nms_rotated(xywhr: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                agnostic: bool = False) -> np.ndarray:
    """The rows ultralytics' rotated NMS keeps, best first: fast NMS (a box goes when any better box,
    kept or not, overlaps it by more than ``iou_threshold`` in ``probiou``), per class unless ``agnostic``."""
    import torch

    with torch.inference_mode():
        boxes = torch.from_numpy(np.array(xywhr, dtype=np.float32))
        if not agnostic:
            boxes[:, :2] += torch.from_numpy(np.asarray(classes, dtype=np.float32))[:, None] * CLASS_OFFSET
        order = torch.argsort(torch.from_numpy(np.asarray(scores, dtype=np.float32)), descending=True)
        boxes = boxes[order]
        overlaps = probiou(boxes, boxes).triu_(diagonal=1)
        kept = torch.nonzero((overlaps > iou_threshold).sum(0) <= 0).squeeze(-1)
        return order[kept].numpy()


def suppress_rotated(found: Candidates, settings: Any) -> np.ndarray:
    return nms_rotated(found.extra, found.scores, found.classes, settings.iou_threshold, settings.agnostic_nms)


def xywhr_to_original(xywhr: np.ndarray, placement: Placement) -> np.ndarray:
    """K×5 boxes from model-input pixels to original pixels, unclipped (ultralytics' ``scale_boxes(xywh=True)``)."""
    scale_x = np.float32(placement.width / placement.content_width)
    scale_y = np.float32(placement.height / placement.content_height)
    mapped = np.array(xywhr, dtype=np.float32)
    mapped[:, 0] = (mapped[:, 0] - placement.offset_x) * scale_x
    mapped[:, 1] = (mapped[:, 1] - placement.offset_y) * scale_y
    mapped[:, 2] *= scale_x
    mapped[:, 3] *= scale_y
    return mapped


def obb_classes(outputs: Sequence[np.ndarray], background: bool) -> ClassCount:
    if len(outputs) == 1 and np.ndim(outputs[0]) == 2 and np.shape(outputs[0])[0] > 5:
        return (np.shape(outputs[0])[0] - 5,
                f"output {shape_text(outputs[0])}: 4 box rows, one per class, then the angle")
    return None


def draw_oriented(image: Image.Image, answer: Sequence[dict]) -> Image.Image:
    """Each rotated box with "label score" at its first corner; best drawn last (on top)."""
    picture, pen, width, face = box_canvas(image)
    for det in sorted(answer, key=lambda d: d["score"]):
        colour = box_colour(det["index"])
        points = [tuple(point) for point in det["corners"]]
        pen.line(points + points[:1], fill=colour, width=width, joint="curve")
        pen.text(points[0], f"{det['label']} {det['score']:.2f}", fill=colour, font=face,
                 stroke_width=max(1, width // 2), stroke_fill=(0, 0, 0))
    return picture


@dataclass
class OrientedBoxes(Detections):
    """The result: detections (``boxes`` enclosing the corners) plus ``xywhr`` K×5 in original pixels."""

    xywhr: np.ndarray

    def to_json(self) -> list:
        return [{**entry, "corners": corner_rows(quad), "angle": round(float(angle), 4)}
                for entry, quad, angle in zip(self.entries(), corners(self.xywhr), self.xywhr[:, 4])]

    def draw(self, image: Image.Image) -> Image.Image:
        return draw_oriented(image, self.to_json())


class OrientedBoxesTask(DetectionTask):
    """``yolov8_obb``: ``DetectionTask``'s letterboxed batches and decoding, rotated NMS (the format's
    ``suppress``), answers with corners and angle. No sliced inference (sahi merges oriented boxes
    by NMS only, and a merge of axis-aligned boxes would lose the angle)."""

    options = tuple(name for name in DetectionTask.options if name not in SLICE_OPTIONS)

    def finish(self, outputs: List[np.ndarray], placement: Placement, settings: Optional[Any] = None) -> OrientedBoxes:
        found, _ = self.detect(outputs, placement, settings or self.settings)
        xywhr = xywhr_to_original(found.extra, placement)
        return OrientedBoxes(self.labels, enclosing(corners(xywhr)), found.scores, found.classes, xywhr)

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_oriented(image, answer)


FORMATS = (Format("yolov8_obb", "detection", decode_yolov8_obb, RESIZE, PREDICT, suppress=suppress_rotated,
                class_count=obb_classes, task_class=f"{__name__}:OrientedBoxesTask", ultralytics_task="obb"),)
