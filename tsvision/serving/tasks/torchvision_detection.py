"""Object detection with a whole torchvision detector (``detection_format: torchvision``).

Model contract: a scripted torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSD) that takes
a list of 3×H×W float images in [0, 1] of any size, resizes and normalises them itself, runs
its own NMS, and returns ``(losses, detections)`` with per image ``boxes`` (x1, y1, x2, y2 in
the ORIGINAL image's pixels), ``labels`` (0 = background) and ``scores``. Its ONNX export takes
one image per call and returns ``boxes``, ``labels``, ``scores``.

Each image keeps its own size. torchvision zero-pads the images of one call to a common size,
which changes the features near the padded edges (vision#4257), so the images of a batch go to
the model in groups of equal size: every image answers exactly as it would alone. The answer is
the same as ``DetectionTask``'s: ``{"label", "index", "score", "box"}``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.batching import BySize, run_by_size, to_chw_float  # noqa: F401 (their old home)
from tsvision.serving.drawing import draw_detection
from tsvision.serving.ops import keep_classes, nms
from tsvision.serving.results import Detections
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.base import VisionTask
from tsvision.serving.tasks.detection import DETECTION_OPTIONS


class TorchvisionDetectionTask(VisionTask):
    name = "detection"
    options = DETECTION_OPTIONS
    # Images at their own size, one model call per size; a failing call fails the batch.
    batching = BySize(images=True, whole_batch=True)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The model ran its own NMS at (at most) the archive's iou_threshold: a request's stricter one runs it again.
        self.model_iou_threshold = self.settings.iou_threshold

    @classmethod
    def before_load(cls) -> None:
        """A scripted torchvision detector calls ``torchvision::nms`` and ``roi_align``: importing
        torchvision registers them (without it ``torch.jit.load`` fails with "Unknown builtin op")."""
        try:
            import torchvision  # noqa: F401
        except ImportError:  # an ONNX model does not need it
            pass

    def prepare(self, image: Image.Image, settings: Optional[Settings] = None) -> Tuple[np.ndarray, Tuple[int, int]]:
        """The decoded RGB image at its own size (decoding already refused more than max_pixels)."""
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return array, (array.shape[1], array.shape[0])

    def headline(self, answer: list) -> str:
        return answer[0]["label"] if answer else ""

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_detection(image, answer)

    def finish(self, outputs: List[np.ndarray], size: Tuple[int, int],
               settings: Optional[Settings] = None) -> Detections:
        """``boxes``, ``labels``, ``scores`` of one image -> its result."""
        boxes, labels, scores = (np.asarray(o) for o in outputs)
        kept, boxes = self.select(boxes, labels, scores, size, settings or self.settings)
        return Detections(self.labels, boxes, scores[kept], labels[kept])

    def select(self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
               size: Tuple[int, int], settings: Settings) -> Tuple[np.ndarray, np.ndarray]:
        """The model already ran NMS (its own box_score_thresh and nms_thresh), so the threshold, the
        background class, ``classes`` and the limit apply; a stricter ``iou_threshold`` than the
        model's (``model_iou_threshold``) or ``agnostic_nms`` runs NMS again. The kept rows (best
        first) and their boxes clipped to the ``size`` (width, height) image."""
        s = settings
        keep = scores > s.score_threshold
        if s.background_index is not None:
            keep &= labels != s.background_index
        keep[np.setdiff1d(np.arange(len(labels)), keep_classes(labels, s.classes))] = False
        rows = np.nonzero(keep)[0]
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        if len(rows) and (s.agnostic_nms or s.iou_threshold < self.model_iou_threshold):
            rows = rows[nms(boxes[rows], scores[rows], labels[rows], s.iou_threshold, s.agnostic_nms)]
        rows = rows[: s.max_detections]
        width, height = size
        return rows, np.clip(boxes[rows].astype(np.float64), 0, [width, height, width, height])

    def warm_up(self, batch_size: int = 2, rounds: int = 2) -> None:
        blank = [np.zeros((3, 240, 320), dtype=np.float32), np.zeros((3, 320, 240), dtype=np.float32)]
        for _ in range(rounds):
            run_by_size(self.runtime, blank[:batch_size])
