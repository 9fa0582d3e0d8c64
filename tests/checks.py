"""Schema checks and agreement rules shared by the in-process and the served tests."""

from __future__ import annotations

import numpy as np

from tsvision.serving.tasks.segmentation import decode_png


def check_classification(answer: list, labels: list, top_k: int = 5) -> None:
    assert len(answer) == top_k and len({x["index"] for x in answer}) == top_k
    scores = [x["score"] for x in answer]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert all(set(x) == {"label", "index", "score"} and x["label"] == labels[x["index"]] for x in answer)


def check_segmentation(answer: dict, width: int, height: int, num_classes: int) -> np.ndarray:
    assert set(answer) == {"width", "height", "mask", "classes"}
    mask = decode_png(answer["mask"])
    assert mask.shape == (height, width) and mask.dtype == np.uint8 \
        and (answer["width"], answer["height"]) == (width, height)
    counts = np.bincount(mask.reshape(-1), minlength=num_classes)
    assert len(counts) == num_classes
    assert {c["index"]: c["pixels"] for c in answer["classes"]} == {i: int(n) for i, n in enumerate(counts) if n}
    assert abs(sum(c["fraction"] for c in answer["classes"]) - 1) < 1e-4
    return mask


def check_detection(answer: list, width: int, height: int, score_threshold: float, max_detections: int = 100) -> None:
    assert len(answer) <= max_detections
    assert [d["score"] for d in answer] == sorted((d["score"] for d in answer), reverse=True)
    for det in answer:
        assert set(det) == {"label", "index", "score", "box"}
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert det["index"] != 0 and det["score"] > score_threshold


def assert_same_classification(a: list, b: list, score_tol: float = 1e-3) -> None:
    assert [x["index"] for x in a] == [x["index"] for x in b], (a, b)
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) <= score_tol


def assert_same_detections(a: list, b: list, box_tol: float = 1.0, score_tol: float = 1e-3) -> None:
    """Every detection clearly above the lowest kept score has a twin: same class, score
    within ``score_tol``, every box edge within ``box_tol`` pixels. Near the cut-off a
    detection may fall on either side from rounding alone, so those are not required."""
    assert bool(a) == bool(b), (a, b)
    floor = max(min((d["score"] for d in a), default=0), min((d["score"] for d in b), default=0)) + score_tol
    for first, second in ((a, b), (b, a)):
        for det in (d for d in first if d["score"] > floor):
            twins = [d for d in second if d["index"] == det["index"] and abs(d["score"] - det["score"]) <= score_tol
                     and np.abs(np.subtract(d["box"], det["box"])).max() <= box_tol]
            assert twins, f"no twin for {det}"


def mask_agreement(a: dict, b: dict) -> float:
    assert (a["width"], a["height"]) == (b["width"], b["height"])
    return float((decode_png(a["mask"]) == decode_png(b["mask"])).mean())


def assert_same_answer(task_name: str, a, b) -> None:
    """Two answers of one image by the same model, within float noise: classification and
    detection entry by entry, masks by pixel agreement."""
    if task_name == "classification":
        assert_same_classification(a, b, score_tol=1e-5)
    elif task_name == "detection":
        assert_same_detections(a, b, box_tol=0.05, score_tol=1e-5)
    else:
        assert mask_agreement(a, b) >= 0.9999
