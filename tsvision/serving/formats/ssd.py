"""``ssd``: torchvision's SSD/SSDlite exported without its postprocessing (the default format).

Outputs ``boxes`` N×A×4 (x1, y1, x2, y2 in model-input pixels) and ``scores`` N×A×C (per-class
probabilities, further outputs ignored); every (box, class) pair above ``score_threshold`` is a
candidate; ``background_index`` is never one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tsvision.serving.formats.registry import Candidates, ClassCount, Format, Shapes
from tsvision.serving.geometry import Placement
from tsvision.serving.ops import shape_error, shape_text


def decode_ssd(outputs: Sequence[np.ndarray], settings, placement: Placement) -> Candidates:
    if len(outputs) < 2 or outputs[0].ndim != 2 or outputs[0].shape[-1] != 4 or outputs[1].ndim != 2 \
            or outputs[1].shape[0] != outputs[0].shape[0]:
        raise shape_error("ssd", "boxes N×A×4 and scores N×A×C (further outputs are ignored)", outputs)
    boxes, scores = outputs[0], outputs[1]
    if settings.background_index is not None:  # "no object" is never a detection
        scores = scores.copy()
        scores[:, settings.background_index] = 0.0
    anchors, classes = np.nonzero(scores > settings.score_threshold)
    return Candidates(np.asarray(boxes[anchors], dtype=np.float32), scores[anchors, classes].astype(np.float32),
                      classes.astype(np.int64))


def is_ssd(shapes: Shapes) -> bool:
    """Two 3-d outputs over the same anchors: boxes (…×4), then scores (not …×4)."""
    return len(shapes) == 2 and all(len(s) == 3 for s in shapes) and shapes[0][1] == shapes[1][1] \
        and shapes[0][2] == 4 and shapes[1][2] != 4


def ssd_classes(outputs: Sequence[np.ndarray], background: bool) -> ClassCount:
    if len(outputs) >= 2 and np.ndim(outputs[1]) == 2:
        said = f"scores {shape_text(outputs[1])}" + (", the background column included" if background else "")
        return np.shape(outputs[1])[1], said
    return None


FORMATS = (Format("ssd", "detection", decode_ssd, background=True, recognise=is_ssd, class_count=ssd_classes),)
