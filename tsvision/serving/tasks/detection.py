"""Object detection: ``{"label", "index", "score", "box": [x1, y1, x2, y2]}`` in the pixels
of the original image.

Each ``detection_format``'s record (``tsvision.serving.formats``: ``ssd``, the default, the YOLO
and DETR layouts) decodes one image's outputs into candidate boxes in model-input pixels.
Thresholding, NMS (class-aware unless ``agnostic_nms``) and the mapping back to the original
image happen here, so one exported graph serves any image size.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from tsvision.serving import formats
from tsvision.serving.drawing import draw_detection
from tsvision.serving.formats import Candidates, ClassCount, Format
from tsvision.serving.geometry import YOLO_FILL, Placement, fit_square, mean_fill
from tsvision.serving.ops import keep_classes, nms
from tsvision.serving.results import Detections, detection_entry  # noqa: F401 (detection_entry: its old home)
from tsvision.serving.settings import Settings
from tsvision.serving.slicing import SLICE_OPTIONS
from tsvision.serving.tasks.base import VisionTask

DETECTION_OPTIONS = ("score_threshold", "iou_threshold", "max_detections", "classes", "agnostic_nms") + SLICE_OPTIONS


class DetectionTask(VisionTask):
    name = "detection"
    options = DETECTION_OPTIONS
    default_micro_batch = 4  # served 0.81 -> 0.89 of in-process at 32 clients on 2 cores (docs/performance.md)
    default_streams = 2  # served at 16 clients: ONNX 61.1 -> 73.5 req/s, TorchScript 33.3 -> 50.7 (docs/performance.md)

    def prepare(self, image: Image.Image, settings: Optional[Settings] = None):
        s = settings or self.settings
        fill = YOLO_FILL if s.resize_mode == "letterbox_center" else mean_fill(s.mean)
        return fit_square(image, s.input_size, s.resize_mode, fill, s.interpolation)

    def headline(self, answer: list) -> str:
        return answer[0]["label"] if answer else ""

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_detection(image, answer)

    @property
    def format(self) -> Format:
        """The record of this task's ``detection_format``."""
        return formats.lookup(self.settings.task, self.settings.detection_format)

    def class_count(self, outputs: List[np.ndarray]) -> ClassCount:
        count = self.format.class_count
        return count(outputs, self.settings.background_index is not None) if count is not None else None

    def decode(self, outputs: List[np.ndarray], placement: Placement, settings: Settings) -> Candidates:
        """One image's raw outputs -> its candidates above the threshold (the format's decoder)."""
        return self.format.decode(outputs, settings, placement)

    def detect(self, outputs: List[np.ndarray], placement: Placement,
               settings: Settings) -> Tuple[Candidates, np.ndarray]:
        """Decode, keep the ``pre_nms_top_k`` best, NMS, keep ``max_detections``: the kept
        candidates (best first) and their boxes in original pixels (``settings``: the request's)."""
        s = settings
        found = self.decode(outputs, placement, s)
        if s.classes is not None:  # before NMS: other classes neither count nor suppress
            found = found.take(keep_classes(found.classes, s.classes))
        if found.scores.size > s.pre_nms_top_k:
            found = found.take(np.argpartition(-found.scores, s.pre_nms_top_k)[: s.pre_nms_top_k])
        if found.scores.size == 0:
            return found, np.zeros((0, 4), dtype=np.float32)
        record = self.format
        if record.nms_free:  # the model already suppressed overlaps
            keep = np.argsort(-found.scores, kind="stable")[: s.max_detections]
        elif record.suppress is not None:  # the format's own NMS
            keep = record.suppress(found, s)[: s.max_detections]
        else:
            keep = nms(found.boxes, found.scores, found.classes, s.iou_threshold, s.agnostic_nms)[: s.max_detections]
        found = found.take(keep)
        return found, placement.boxes_to_original(found.boxes)

    def finish(self, outputs: List[np.ndarray], placement: Placement,
               settings: Optional[Settings] = None) -> Detections:
        found, boxes = self.detect(outputs, placement, settings or self.settings)
        return Detections(self.labels, boxes, found.scores, found.classes)
