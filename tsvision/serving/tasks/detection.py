"""Object detection: ``{"label", "index", "score", "box": [x1, y1, x2, y2]}`` in the pixels
of the original image.

Model contract (``detection_format: ssd``, the default): outputs ``boxes`` N×A×4 (x1, y1, x2, y2
in model-input pixels) and ``scores`` N×A×C (per-class probabilities); the YOLO and DETR layouts
are decoded by ``detection_formats``. Thresholding, NMS (class-aware unless ``agnostic_nms``) and
the mapping back to the original image happen here, so one exported graph serves any image size.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.drawing import draw_detection
from tsvision.serving.geometry import YOLO_FILL, Placement, fit_square, mean_fill
from tsvision.serving.results import Detections, detection_entry  # noqa: F401 (detection_entry: its old home)
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.base import ClassCount, VisionTask
from tsvision.serving.tasks.detection_formats import DECODERS, NMS_FREE, Candidates, class_count

DETECTION_OPTIONS = ("score_threshold", "iou_threshold", "max_detections", "classes", "agnostic_nms")


def keep_classes(classes: np.ndarray, wanted) -> np.ndarray:
    """The positions of ``classes`` that are in ``wanted`` (None: all)."""
    if wanted is None:
        return np.arange(len(classes))
    return np.nonzero(np.isin(classes, np.asarray(wanted, dtype=np.int64)))[0]


class DetectionTask(VisionTask):
    name = "detection"
    options = DETECTION_OPTIONS
    default_micro_batch = 4  # served 0.81 -> 0.89 of in-process at 32 clients on 2 cores (docs/performance.md)

    def prepare(self, image: Image.Image, settings: Optional[Settings] = None):
        s = settings or self.settings
        fill = YOLO_FILL if s.resize_mode == "letterbox_center" else mean_fill(s.mean)
        return fit_square(image, s.input_size, s.resize_mode, fill, s.interpolation)

    def headline(self, answer: list) -> str:
        return answer[0]["label"] if answer else ""

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_detection(image, answer)

    def class_count(self, outputs: List[np.ndarray]) -> ClassCount:
        return class_count(self.settings.detection_format, outputs, self.settings.background_index is not None)

    def decode(self, outputs: List[np.ndarray], placement: Placement, settings: Settings) -> Candidates:
        """One image's raw outputs -> its candidates above the threshold (``detection_format``)."""
        return DECODERS[settings.detection_format](outputs, settings, placement)

    def detect(self, outputs: List[np.ndarray], placement: Placement,
               settings: Settings) -> Tuple[Candidates, np.ndarray]:
        """Decode, keep the ``pre_nms_top_k`` best, NMS, keep ``max_detections``: the kept
        candidates (best first) and their boxes in original pixels (``settings``: the request's)."""
        import torch
        from torchvision.ops import batched_nms, nms

        s = settings
        found = self.decode(outputs, placement, s)
        if s.classes is not None:  # before NMS: other classes neither count nor suppress
            found = found.take(keep_classes(found.classes, s.classes))
        if found.scores.size > s.pre_nms_top_k:
            found = found.take(np.argpartition(-found.scores, s.pre_nms_top_k)[: s.pre_nms_top_k])
        if found.scores.size == 0:
            return found, np.zeros((0, 4), dtype=np.float32)
        if s.detection_format in NMS_FREE:  # the model already suppressed overlaps
            keep = np.argsort(-found.scores, kind="stable")[: s.max_detections]
        else:
            with torch.inference_mode():
                tensors = (torch.from_numpy(np.ascontiguousarray(found.boxes, dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(found.scores, dtype=np.float32)))
                if s.agnostic_nms:
                    keep = nms(*tensors, s.iou_threshold)
                else:
                    keep = batched_nms(*tensors, torch.from_numpy(found.classes), s.iou_threshold)
                keep = keep[: s.max_detections].numpy()
        found = found.take(keep)
        return found, placement.boxes_to_original(found.boxes)

    def finish(self, outputs: List[np.ndarray], placement: Placement,
               settings: Optional[Settings] = None) -> Detections:
        found, boxes = self.detect(outputs, placement, settings or self.settings)
        return Detections(self.labels, boxes, found.scores, found.classes)
