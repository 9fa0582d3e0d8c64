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

from typing import Any, List, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.drawing import draw_detection
from tsvision.serving.errors import internal_error
from tsvision.serving.ops import keep_classes, nms
from tsvision.serving.tasks.base import ImageBatch, VisionTask, group_by_shape
from tsvision.serving.tasks.detection import DETECTION_OPTIONS, detection_entry


class TorchvisionDetectionTask(VisionTask):
    name = "detection"
    options = DETECTION_OPTIONS

    @classmethod
    def before_load(cls) -> None:
        """A scripted torchvision detector calls ``torchvision::nms`` and ``roi_align``: importing
        torchvision registers them (without it ``torch.jit.load`` fails with "Unknown builtin op")."""
        try:
            import torchvision  # noqa: F401
        except ImportError:  # an ONNX model does not need it
            pass

    def prepare(self, image: Image.Image) -> Tuple[np.ndarray, Tuple[int, int]]:
        """The decoded RGB image at its own size (decoding already refused more than max_pixels)."""
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return array, (array.shape[1], array.shape[0])

    def headline(self, answer: list) -> str:
        return answer[0]["label"] if answer else ""

    def prepare_batch(self, items) -> ImageBatch:
        batch = ImageBatch([None] * len(items))
        images = self._place(batch, enumerate(self._map(self._prepare_item, items)))
        if images:
            batch.inputs = self._map(to_chw_float, images)  # a list: the sizes differ
        return batch

    def infer(self, batch: ImageBatch) -> ImageBatch:
        """The model on the live images, one call per group of equally sized images."""
        if batch.inputs is not None:
            try:
                batch.outputs = run_by_size(self.runtime, batch.inputs)
            except Exception:  # the model failed: its images get 500, the worker lives on
                self._fail(batch, internal_error("InferenceError", f"the model failed on this batch of {len(batch.positions)} images"))
            batch.inputs = None
        return batch

    def finish_batch(self, batch: ImageBatch) -> List[Any]:
        if batch.outputs is not None:
            rows = [(outputs, meta, batch.settings_at(position))
                    for outputs, meta, position in zip(batch.outputs, batch.metas, batch.positions)]
            for position, answer in zip(batch.positions, self._map(self._finish_item, rows)):
                batch.results[position] = answer
            batch.outputs = None
        return batch.results

    def draw(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_detection(image, answer)

    def finish(self, outputs: List[np.ndarray], size: Tuple[int, int]) -> list:
        """``boxes``, ``labels``, ``scores`` of one image -> its answer."""
        boxes, labels, scores = (np.asarray(o) for o in outputs)
        kept, boxes = self.select(boxes, labels, scores, size)
        return [detection_entry(self.label(int(c)), int(c), score, box)
                for c, score, box in zip(labels[kept], scores[kept], boxes)]

    def select(self, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
               size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """The model already ran NMS (its own box_score_thresh and nms_thresh), so the threshold, the
        background class, ``classes`` and the limit apply; a request's stricter ``iou_threshold`` or
        ``agnostic_nms`` runs NMS again. The kept rows (best first) and their boxes clipped to the
        ``size`` (width, height) image."""
        s = self.settings
        keep = scores > s.score_threshold
        if s.background_index is not None:
            keep &= labels != s.background_index
        keep[np.setdiff1d(np.arange(len(labels)), keep_classes(labels, s.classes))] = False
        rows = np.nonzero(keep)[0]
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        if len(rows) and (s.agnostic_nms or s.iou_threshold < self.archive_settings.iou_threshold):
            rows = rows[nms(boxes[rows], scores[rows], labels[rows], s.iou_threshold, s.agnostic_nms)]
        rows = rows[: s.max_detections]
        width, height = size
        return rows, np.clip(boxes[rows].astype(np.float64), 0, [width, height, width, height])

    def warm_up(self, batch_size: int = 2, rounds: int = 2) -> None:
        blank = [np.zeros((3, 240, 320), dtype=np.float32), np.zeros((3, 320, 240), dtype=np.float32)]
        for _ in range(rounds):
            run_by_size(self.runtime, blank[:batch_size])


def to_chw_float(image: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 -> 3×H×W float32 in [0, 1] (the model normalises itself)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def run_by_size(runtime, images: List[np.ndarray]) -> List[List[np.ndarray]]:
    """``runtime.run_images`` on each group of equally sized images; outputs in the images' order."""
    outputs: List[Any] = [None] * len(images)
    for indices in group_by_shape(images).values():
        for index, result in zip(indices, runtime.run_images([images[i] for i in indices])):
            outputs[index] = result
    return outputs
