"""``detr``: facebookresearch/DETR and its Hugging Face exports.

Outputs ``pred_logits`` N×Q×(C+1) (softmax; the last column is "no object") and ``pred_boxes``
N×Q×4 (cx, cy, w, h normalised to the image content), in either order. Each query keeps its best
class. Preprocessed as trained: ImageNet normalisation, stretched to 800.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tsvision.serving.formats.registry import Candidates, ClassCount, Format, Shapes
from tsvision.serving.geometry import Placement
from tsvision.serving.ops import best_class, shape_error, shape_text, xyxy_from_cxcywh


def decode_detr(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    if len(outputs) == 2 and outputs[0].ndim == 2 and outputs[0].shape[-1] == 4 and outputs[1].ndim == 2 \
            and outputs[1].shape[-1] != 4:
        outputs = outputs[::-1]  # pred_boxes came first
    if len(outputs) != 2 or outputs[0].ndim != 2 or outputs[1].ndim != 2 or outputs[1].shape[-1] != 4 \
            or outputs[0].shape[0] != outputs[1].shape[0] or outputs[0].shape[-1] < 2:
        raise shape_error("detr", "two outputs, pred_logits N×Q×(C+1) and pred_boxes N×Q×4", outputs)
    logits, boxes = outputs
    logits = logits.astype(np.float32)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    keep, scores, classes = best_class(probabilities[:, :-1], settings.score_threshold)
    # Normalised to the image content (DETR resizes without padding): to model-input pixels.
    scale = np.array([placement.content_width, placement.content_height] * 2, dtype=np.float32)
    offset = np.array([placement.offset_x, placement.offset_y] * 2, dtype=np.float32)
    return Candidates(xyxy_from_cxcywh(boxes[keep]) * scale + offset, scores, classes)


def is_detr(shapes: Shapes) -> bool:
    """Two 3-d outputs over the same queries: logits (not …×4), then boxes (…×4)."""
    return len(shapes) == 2 and all(len(s) == 3 for s in shapes) and shapes[0][1] == shapes[1][1] \
        and shapes[0][2] != 4 and shapes[1][2] == 4


def detr_classes(outputs: Sequence[np.ndarray], background: bool) -> ClassCount:
    shapes = [np.shape(o) for o in outputs]
    if len(shapes) == 2 and all(len(shape) == 2 for shape in shapes):
        logits = 1 if shapes[0][-1] == 4 and shapes[1][-1] != 4 else 0  # pred_boxes may come first
        return shapes[logits][1] - 1, f"pred_logits {shape_text(outputs[logits])}, the last column 'no object'"
    return None


FORMATS = (Format("detr", "detection", decode_detr, resize={"input_size": 800, "resize_mode": "stretch"},
                defaults={"score_threshold": 0.7}, recognise=is_detr, class_count=detr_classes),)
