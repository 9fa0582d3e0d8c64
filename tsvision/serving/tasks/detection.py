"""Object detection: ``{"label", "index", "score", "box": [x1, y1, x2, y2]}`` in the pixels
of the original image.

Model contract (``detection_format: ssd``, the default): outputs ``boxes`` N×A×4 (x1, y1, x2, y2
in model-input pixels) and ``scores`` N×A×C (per-class probabilities); the YOLO and DETR layouts
are decoded by ``detection_formats``. Thresholding, NMS (class-aware unless ``agnostic_nms``) and
the mapping back to the original image happen here, so one exported graph serves any image size.
"""

from __future__ import annotations

from typing import List

import numpy as np
from PIL import Image

from tsvision.serving.geometry import YOLO_FILL, Placement, fit_square, mean_fill
from tsvision.serving.tasks.base import VisionTask
from tsvision.serving.tasks.detection_formats import DECODERS, NMS_FREE


class DetectionTask(VisionTask):
    name = "detection"

    def prepare(self, image: Image.Image):
        s = self.settings
        fill = YOLO_FILL if s.resize_mode == "letterbox_center" else mean_fill(s.mean)
        return fit_square(image, s.input_size, s.resize_mode, fill)

    def headline(self, answer: list) -> str:
        return answer[0]["label"] if answer else ""

    def finish(self, outputs: List[np.ndarray], placement: Placement) -> list:
        s = self.settings
        found = DECODERS[s.detection_format](outputs, s, placement)
        keep = select_detections(found.boxes, found.scores, found.classes, s)
        mapped = placement.boxes_to_original(found.boxes[keep])
        return [
            {
                "label": self.label(int(c)),
                "index": int(c),
                "score": float(score),
                "box": [round(float(v), 2) for v in box],
            }
            for c, score, box in zip(found.classes[keep], found.scores[keep], mapped)
        ]


def select_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, settings) -> np.ndarray:
    """Indices of the candidates to answer, best first: the ``pre_nms_top_k`` best, then NMS
    (class-aware unless ``agnostic_nms``; none for the NMS-free formats), at most ``max_detections``."""
    import torch
    from torchvision.ops import batched_nms, nms

    s = settings
    candidates = np.arange(scores.size)
    if scores.size > s.pre_nms_top_k:
        candidates = np.argpartition(-scores, s.pre_nms_top_k)[: s.pre_nms_top_k]
    if candidates.size == 0:
        return candidates
    boxes, scores, classes = boxes[candidates], scores[candidates], classes[candidates]
    if s.detection_format in NMS_FREE:  # the model already suppressed overlaps
        keep = np.argsort(-scores, kind="stable")[: s.max_detections]
    else:
        with torch.inference_mode():
            tensors = (torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
                       torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)))
            if s.agnostic_nms:
                keep = nms(*tensors, s.iou_threshold)
            else:
                keep = batched_nms(*tensors, torch.from_numpy(classes), s.iou_threshold)
            keep = keep[: s.max_detections].numpy()
    return candidates[keep]
