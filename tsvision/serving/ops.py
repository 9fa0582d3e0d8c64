"""Box, score and output-shape helpers shared by the format decoders and the tasks (as ultralytics'
``utils/ops.py``): plain numpy in, numpy out; torch only where NMS runs."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np


def shape_text(array: np.ndarray) -> str:
    """One image's output shape with the batch axis put back: ``N×1000``."""
    return "×".join(["N"] + [str(d) for d in np.shape(array)])


def shape_error(fmt: str, expected: str, outputs: Sequence[np.ndarray]) -> ValueError:
    """The error for one image's ``outputs`` that do not fit detection_format ``fmt`` (``expected`` says what would)."""
    shapes = ", ".join(shape_text(o) for o in outputs)
    return ValueError(f"detection_format {fmt!r} expects {expected}; the model's outputs are {shapes} "
                      "(docs/models.md lists the formats; choose one with --set detection_format=...)")


def one_output(fmt: str, outputs: Sequence[np.ndarray], expected: str,
               check: Callable[[np.ndarray], bool]) -> np.ndarray:
    """The single 2-d output of one image that passes ``check``, else ``shape_error``."""
    if len(outputs) != 1 or outputs[0].ndim != 2 or not check(outputs[0]):
        raise shape_error(fmt, expected, outputs)
    return outputs[0]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function, in the array's own float type (overflow to 0 is not a warning)."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-logits))


def xyxy_from_cxcywh(cxcywh: np.ndarray) -> np.ndarray:
    """K×4 centre x, y, width, height -> K×4 float32 x1, y1, x2, y2."""
    cx, cy, w, h = cxcywh[:, 0], cxcywh[:, 1], cxcywh[:, 2], cxcywh[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def best_class(scores: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per box (rows of K×C ``scores``): its best class and score. Returns the rows whose best score
    passes ``threshold``, those scores (float32) and classes (int64)."""
    # The row maxima pick the rows first (a ufunc reduction, fast in any memory order: YOLOv8's scores
    # are a transposed view), then the argmax runs on the few rows kept: 0.47 -> 0.10 ms for 8400×80.
    keep = np.nonzero(scores.max(axis=1) > threshold)[0]
    kept = scores[keep]
    classes = kept.argmax(axis=1)
    return keep, kept[np.arange(len(keep)), classes].astype(np.float32), classes.astype(np.int64)


def keep_classes(classes: np.ndarray, wanted: Optional[Sequence[int]]) -> np.ndarray:
    """The positions of ``classes`` that are in ``wanted`` (None: all)."""
    if wanted is None:
        return np.arange(len(classes))
    return np.nonzero(np.isin(classes, np.asarray(wanted, dtype=np.int64)))[0]


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        agnostic: bool = False) -> np.ndarray:
    """torchvision's NMS on K×4 x1, y1, x2, y2 ``boxes``: per class (``batched_nms``) unless
    ``agnostic``. The kept rows, best first."""
    import torch
    from torchvision.ops import batched_nms
    from torchvision.ops import nms as plain_nms

    with torch.inference_mode():
        tensors = (torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)))
        if agnostic:
            return plain_nms(*tensors, iou_threshold).numpy()
        return batched_nms(*tensors, torch.from_numpy(np.asarray(classes, dtype=np.int64)), iou_threshold).numpy()
