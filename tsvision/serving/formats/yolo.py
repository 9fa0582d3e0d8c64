"""ultralytics' exports: YOLO (v5u/v8/11 detect, segment, pose, and ``nms=True``/end-to-end) and RT-DETR.

Preprocessed as ultralytics predicts: letterboxed to 640 on grey 114, centred (``letterbox_center``),
pixels in [0, 1]; ultralytics' predict thresholds (confidence 0.25, IoU 0.7).

- ``yolov8`` (YOLOv8, YOLO11): one (4+C)×A: cx, cy, w, h input pixels, sigmoid class scores. An ONNX
  model runs cut at its head's raw outputs by default (``yolo_head``, ``split_head``).
- ``yolov5``: A×(5+C): cx, cy, w, h, objectness, class scores; score = objectness × class.
- ``yolo_nms`` (``nms=True``, YOLOv10, YOLO26): K×6: x1, y1, x2, y2, score, class, zero-padded;
  already suppressed, so no NMS runs.
- ``rtdetr``: Q×(4+C): cx, cy, w, h normalised to the model input, sigmoid scores.
- ``yolov8_seg`` (instance_segmentation): ``output0`` (4+C+M)×A (M mask coefficients) and
  ``protos`` M×h×w.
- ``yolov8_pose`` (keypoints): (4+1+3K)×A: box, the person score, K × (x, y, visibility).

Each box keeps its best class, as ultralytics does.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from tsvision.serving.formats import yolo_head
from tsvision.serving.formats.registry import Candidates, ClassCount, Format, Shapes
from tsvision.serving.geometry import Placement
from tsvision.serving.ops import best_class, one_output, shape_error, shape_text, xyxy_from_cxcywh

RESIZE = {"input_size": 640, "resize_mode": "letterbox_center"}  # ultralytics' LetterBox(center=True)
PREDICT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "iou_threshold": 0.7, "score_threshold": 0.25}
TASKS = "tsvision.serving.tasks"


def decode_yolov8(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    """The whole graph's (4+C)×A output, or the split head's two (``yolo_head``: ``split_head``)."""
    if yolo_head.is_split(outputs) and settings.split_head:  # the worker runs the cut graph (build_task)
        return yolo_head.decode_split(outputs[0], outputs[1], settings.score_threshold, placement.input_size)
    raw = one_output("yolov8", outputs, "one output N×(4+C)×A with 4+C < A", lambda o: 5 <= o.shape[0] < o.shape[1])
    keep, scores, classes = best_class(raw[4:].T, settings.score_threshold)
    return Candidates(xyxy_from_cxcywh(raw[:4, keep].T), scores, classes)


def decode_yolov5(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    raw = one_output("yolov5", outputs, "one output N×A×(5+C)", lambda o: o.shape[1] >= 6)
    keep, scores, classes = best_class(raw[:, 5:] * raw[:, 4:5], settings.score_threshold)
    return Candidates(xyxy_from_cxcywh(raw[keep, :4]), scores, classes)


def decode_yolo_nms(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    raw = one_output("yolo_nms", outputs, "one output N×K×6 (x1, y1, x2, y2, score, class)", lambda o: o.shape[1] == 6)
    keep = np.nonzero(raw[:, 4] > settings.score_threshold)[0]
    return Candidates(raw[keep, :4].astype(np.float32), raw[keep, 4].astype(np.float32),
                      np.rint(raw[keep, 5]).astype(np.int64))


def decode_rtdetr(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    raw = one_output("rtdetr", outputs, "one output N×Q×(4+C)", lambda o: o.shape[1] >= 5)
    keep, scores, classes = best_class(raw[:, 4:], settings.score_threshold)
    return Candidates(xyxy_from_cxcywh(raw[keep, :4]) * np.float32(placement.input_size), scores, classes)


def yolo_seg_outputs(outputs: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """One image's ``output0`` (4+C+M)×A and ``protos`` M×h×w, in either order."""
    arrays = [np.asarray(o) for o in outputs]
    if len(arrays) == 2 and arrays[0].ndim == 3:
        arrays = arrays[::-1]
    if len(arrays) != 2 or arrays[0].ndim != 2 or arrays[1].ndim != 3 or arrays[0].shape[0] <= 4 + arrays[1].shape[0]:
        raise shape_error("yolov8_seg", "output0 N×(4+C+32)×A and protos N×32×H×W", arrays)
    return arrays[0], arrays[1]


def decode_yolov8_seg(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    """``output0``'s candidates above the threshold, ``extra`` their mask coefficients."""
    raw, protos = yolo_seg_outputs(outputs)
    classes_count = raw.shape[0] - 4 - protos.shape[0]
    kept, scores, classes = best_class(raw[4:4 + classes_count].T, settings.score_threshold)
    return Candidates(xyxy_from_cxcywh(raw[:4, kept].T), scores, classes, raw[4 + classes_count:, kept].T)


def decode_yolov8_pose(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    """(4+1+3K)×A -> candidates above the threshold, ``extra`` their K×3 keypoints in input pixels."""
    raw = one_output("yolov8_pose", outputs, "one output N×(4+1+3K)×A (one class, K keypoints of x, y, visibility)",
                     lambda o: o.shape[0] >= 8 and (o.shape[0] - 5) % 3 == 0 and o.shape[0] < o.shape[1])
    count = (raw.shape[0] - 5) // 3
    keep, scores, classes = best_class(raw[4:5].T, settings.score_threshold)
    points = raw[5:, keep].T.reshape(len(keep), count, 3)
    return Candidates(xyxy_from_cxcywh(raw[:4, keep].T), scores, classes, points.astype(np.float32))


def _one_3d(shapes: Shapes) -> bool:
    return len(shapes) == 1 and len(shapes[0]) == 3


def is_yolov8(shapes: Shapes) -> bool:
    """One N×(4+C)×A output, rows fewer than anchors (and not yolo_nms' N×K×6)."""
    return _one_3d(shapes) and shapes[0][2] != 6 and 5 <= shapes[0][1] < shapes[0][2]


def is_yolo_nms(shapes: Shapes) -> bool:
    """One N×K×6 output. (N×A×(5+C) yolov5 and N×Q×(4+C) rtdetr look alike: never guessed.)"""
    return _one_3d(shapes) and shapes[0][2] == 6


def _one_2d(outputs: Sequence[np.ndarray]) -> bool:
    return len(outputs) == 1 and np.ndim(outputs[0]) == 2


def yolov8_classes(outputs: Sequence[np.ndarray], background: bool) -> ClassCount:
    if yolo_head.is_split(outputs):
        return np.shape(outputs[1])[0], f"class logits {shape_text(outputs[1])}: one row per class"
    if _one_2d(outputs) and np.shape(outputs[0])[0] > 4:
        return np.shape(outputs[0])[0] - 4, f"output {shape_text(outputs[0])}: 4 box rows, then one per class"
    return None


def yolov5_classes(outputs: Sequence[np.ndarray], background: bool) -> ClassCount:
    if _one_2d(outputs) and np.shape(outputs[0])[1] > 5:
        return (np.shape(outputs[0])[1] - 5,
                f"output {shape_text(outputs[0])}: 4 box columns and objectness, then one per class")
    return None


def rtdetr_classes(outputs: Sequence[np.ndarray], background: bool) -> ClassCount:
    if _one_2d(outputs) and np.shape(outputs[0])[1] > 4:
        return np.shape(outputs[0])[1] - 4, f"output {shape_text(outputs[0])}: 4 box columns, then one per class"
    return None


def seg_classes(outputs: List[np.ndarray], background: bool) -> ClassCount:
    try:
        raw, protos = yolo_seg_outputs(outputs)
    except ValueError:  # the decoder says what is wrong
        return None
    return (raw.shape[0] - 4 - protos.shape[0],
            f"output0 {shape_text(raw)}: 4 box rows, one per class, then {protos.shape[0]} mask coefficients")


def pose_classes(outputs: List[np.ndarray], background: bool) -> ClassCount:
    return 1, f"output {shape_text(outputs[0])}: yolov8_pose scores one class, the person"


FORMATS = (
    # serial_micro_batch 1: YOLOv8n at 640² runs faster one image at a time on one thread than four at once (two
    # one-thread processes: 29.1 against 26.7 img/s; served, two workers of batch 4: 1.03x; docs/performance.md)
    Format("yolov8", "detection", decode_yolov8, RESIZE, PREDICT, recognise=is_yolov8, class_count=yolov8_classes,
           ultralytics_task="detect", serial_micro_batch=1, faster_graph=yolo_head.faster_graph),
    Format("yolov5", "detection", decode_yolov5, RESIZE, {**PREDICT, "iou_threshold": 0.45},
           class_count=yolov5_classes),
    Format("yolo_nms", "detection", decode_yolo_nms, RESIZE, PREDICT, nms_free=True, recognise=is_yolo_nms),
    Format("rtdetr", "detection", decode_rtdetr, RESIZE, PREDICT, class_count=rtdetr_classes),
    Format("yolov8_seg", "instance_segmentation", decode_yolov8_seg, RESIZE, PREDICT, class_count=seg_classes,
           task_class=f"{TASKS}.instance_segmentation:YoloInstanceSegmentationTask", ultralytics_task="segment"),
    Format("yolov8_pose", "keypoints", decode_yolov8_pose, RESIZE, PREDICT, class_count=pose_classes,
           task_class=f"{TASKS}.keypoints:KeypointsTask", ultralytics_task="pose"),
)
