"""Instance segmentation: detection entries plus each instance's ``"mask"`` at the ORIGINAL size.

Each instance is ``{"label", "index", "score", "box": [x1, y1, x2, y2], "mask"}``; ``mask`` is
COCO RLE ``{"size": [h, w], "counts": "..."}`` (``mask_format: rle``, the default; pycocotools
decodes it), a list of polygons ``[x1, y1, x2, y2, ...]`` in original pixels (``polygon``) or a
base64 1-bit PNG at the original size (``png``); ``masks.decode_mask`` reads all three.
A pixel belongs to the mask when its probability is above ``mask_threshold``.

Two model contracts (``detection_format``, docs/models.md):

- ``torchvision``: a whole torchvision Mask R-CNN (scripted, or its one-image ONNX export), as
  ``TorchvisionDetectionTask`` runs it, returning ``masks`` N×1×H×W soft masks at the image's
  own size besides ``boxes``, ``labels``, ``scores``.
- ``yolov8_seg`` (ultralytics YOLOv8/YOLO11-seg ONNX): ``output0`` N×(4+C+32)×A (cx, cy, w, h,
  class scores, mask coefficients) and ``protos`` N×32×h×w (h = w = input_size / 4). Decoded
  and suppressed like ``yolov8``; each mask is ``coefficients @ protos``, mapped to the original
  image exactly as ultralytics' predictor does with ``retina_masks=True``
  (``ops.process_mask_native``: upsampled, the letterbox cropped, resized bilinearly, then
  cropped to the box); instances whose mask is empty are dropped, as ultralytics drops them.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.drawing import draw_instances
from tsvision.serving.formats.yolo import yolo_seg_outputs
from tsvision.serving.geometry import Placement
from tsvision.serving.masks import decode_mask
from tsvision.serving.results import Instances
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.detection import DETECTION_OPTIONS, DetectionTask
from tsvision.serving.tasks.torchvision_detection import TorchvisionDetectionTask

PIXEL_BUDGET = 16_000_000  # float mask pixels upsampled at once (ultralytics' own bound)

INSTANCE_OPTIONS = DETECTION_OPTIONS + ("mask_format", "mask_threshold")


def draw_answer(image: Image.Image, answer: list) -> Image.Image:
    """A JSON answer drawn (for clients): each instance's mask in its class colour, its box and
    "label score" on top. Polygons carry outer rings only: their holes are filled here."""
    return draw_instances(image, answer, [decode_mask(entry["mask"], image.height, image.width) for entry in answer])


class TorchvisionInstanceSegmentationTask(TorchvisionDetectionTask):
    """Mask R-CNN (``detection_format: torchvision``): the model pastes soft masks at the original size."""

    name = "instance_segmentation"
    options = INSTANCE_OPTIONS
    default_micro_batch = 0  # not measured for this task: serial unless set

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_answer(image, answer)

    def finish(self, outputs: List[np.ndarray], size: Tuple[int, int],
               settings: Optional[Settings] = None) -> Instances:
        s = settings or self.settings
        boxes, labels, scores, masks = mask_rcnn_outputs(outputs)
        width, height = size
        if masks.shape[-2:] != (height, width):
            raise ValueError(f"the model's masks are {masks.shape[-2]}×{masks.shape[-1]}, the image {height}×{width}: "
                             "detection_format 'torchvision' expects masks at the image's own size")
        chosen, boxes = self.select(boxes, labels, scores, size, s)
        kept = masks[chosen].reshape(len(chosen), height, width) > s.mask_threshold
        return Instances(self.labels, boxes, scores[chosen], labels[chosen], kept, s.mask_format or "rle")


def mask_rcnn_outputs(outputs: List[np.ndarray]) -> Tuple[np.ndarray, ...]:
    """``boxes`` (K×4), ``labels`` (K, integers), ``scores`` (K, floats), ``masks`` (K×1×H×W) told apart
    by their shapes, whatever order the runtime gives them in (TorchScript: by name; ONNX: the graph's)."""
    arrays = [np.asarray(o) for o in outputs]
    boxes = [a for a in arrays if a.ndim == 2 and a.shape[-1] == 4]
    masks = [a for a in arrays if a.ndim == 4]
    labels = [a for a in arrays if a.ndim == 1 and a.dtype.kind in "iu"]
    scores = [a for a in arrays if a.ndim == 1 and a.dtype.kind == "f"]
    if len(arrays) != 4 or not (len(boxes) == len(masks) == len(labels) == len(scores) == 1):
        shapes = ", ".join(f"{a.dtype}[{'×'.join(str(d) for d in a.shape)}]" for a in arrays)
        raise ValueError("detection_format 'torchvision' for instance_segmentation expects boxes K×4, labels K, "
                         f"scores K and masks K×1×H×W; the model's outputs are {shapes}")
    return boxes[0], labels[0], scores[0], masks[0]


class YoloInstanceSegmentationTask(DetectionTask):
    """YOLOv8-seg (``detection_format: yolov8_seg``): letterboxed batches, masks from prototypes."""

    name = "instance_segmentation"
    options = INSTANCE_OPTIONS

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_answer(image, answer)

    def finish(self, outputs: List[np.ndarray], placement: Placement,
               settings: Optional[Settings] = None) -> Instances:
        s = settings or self.settings
        found, mapped = self.detect(outputs, placement, s)
        _, protos = yolo_seg_outputs(outputs)
        masks = prototype_masks(protos, found.extra, mapped, placement, s.mask_threshold)
        shown = np.array([bool(mask.any()) for mask in masks], dtype=bool)  # ultralytics drops empty masks
        return Instances(self.labels, mapped[shown], found.scores[shown], found.classes[shown], masks[shown],
                         s.mask_format or "rle")


def prototype_masks(protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, placement: Placement,
                    threshold: float) -> np.ndarray:
    """K×H×W boolean masks at the original size: ultralytics' ``process_mask_native`` (retina masks).

    The prototype logits ``coefficients @ protos`` are upsampled by the smallest factor (1, 2 or 4)
    that puts the letterbox padding on whole pixels, the padding is cropped, the rest is resized
    bilinearly to the original image, thresholded (logit above ``log(t / (1 - t))``, i.e.
    probability above ``t``) and cropped to each box (``boxes`` in original pixels)."""
    import torch
    import torch.nn.functional as F

    channels, mh, mw = protos.shape
    height, width = placement.height, placement.width
    masks = np.zeros((len(coefficients), height, width), dtype=bool)
    if not len(coefficients):
        return masks
    stride = placement.input_size / mh  # 4 for every ultralytics model
    cut = math.log(threshold / (1 - threshold))
    gain = min(stride * mh / height, stride * mw / width)
    pad = (round(stride * mh) - max(round(height * gain), 1)) | (round(stride * mw) - max(round(width * gain), 1))
    factor = 4 // math.gcd(4, pad | pad // 2)
    with torch.inference_mode():
        logits = torch.from_numpy(np.ascontiguousarray(coefficients, dtype=np.float32)) \
            @ torch.from_numpy(np.ascontiguousarray(protos, dtype=np.float32)).view(channels, -1)
        logits = logits.view(1, -1, mh, mw)
        step = max(1, PIXEL_BUDGET // (height * width + factor * factor * mh * mw))
        for start in range(0, len(coefficients), step):
            chunk = logits[:, start:start + step]
            if factor > 1:
                chunk = F.interpolate(chunk, scale_factor=factor, mode="bilinear")
            masks[start:start + step] = (_unletterbox(chunk, height, width) > cut)[0].numpy()
    columns, rows = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    for mask, (x1, y1, x2, y2) in zip(masks, np.asarray(boxes, dtype=np.float32)):
        mask[:, (columns < x1) | (columns >= x2)] = False
        mask[(rows < y1) | (rows >= y2)] = False
    return masks


def _unletterbox(masks, height: int, width: int):
    """ultralytics' ``scale_masks``: the content region of a centred letterbox, resized to height × width."""
    import torch.nn.functional as F

    mask_h, mask_w = masks.shape[2:]
    if (mask_h, mask_w) == (height, width):
        return masks
    gain = min(mask_h / height, mask_w / width)
    pad_w, pad_h = (mask_w - max(round(width * gain), 1)) / 2, (mask_h - max(round(height * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = top + max(round(height * gain), 1), left + max(round(width * gain), 1)
    return F.interpolate(masks[..., top:bottom, left:right].float(), (height, width), mode="bilinear")
