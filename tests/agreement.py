"""How two answers to the same image must agree (TorchScript vs ONNX, batched vs alone)."""

from __future__ import annotations

import numpy as np

from handlers.segmentation import decode_png


def assert_same_classification(a: list, b: list, score_tol: float = 1e-3) -> None:
    assert [x["index"] for x in a] == [x["index"] for x in b], (a, b)
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) <= score_tol


def assert_same_detections(a: list, b: list, box_tol: float = 1.0, score_tol: float = 1e-3) -> None:
    """Every detection clearly above the lowest kept score has a twin: same class, score
    within ``score_tol``, every box edge within ``box_tol`` pixels. Near the cut-off a
    detection may fall on either side from rounding alone, so those are not required."""
    floor = max(min((d["score"] for d in a), default=0), min((d["score"] for d in b), default=0)) + score_tol
    for first, second in ((a, b), (b, a)):
        for det in (d for d in first if d["score"] > floor):
            twins = [d for d in second if d["index"] == det["index"] and abs(d["score"] - det["score"]) <= score_tol
                     and np.abs(np.subtract(d["box"], det["box"])).max() <= box_tol]
            assert twins, f"no twin for {det}"
    assert len(a) > 0 or len(b) == 0


def mask_agreement(a: dict, b: dict) -> float:
    assert (a["width"], a["height"]) == (b["width"], b["height"])
    return float((decode_png(a["mask"]) == decode_png(b["mask"])).mean())
