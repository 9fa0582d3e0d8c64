"""Sliced inference (SAHI) geometry and merging: where the slices of a large image lie, and how
their detections become one answer. Plain numpy; ``tasks/slices.py`` runs it in the batch.

- ``slice_windows``: the grid of sahi's ``slicing.get_slice_bboxes`` (sahi 0.12.8), rounding
  included: the overlap in pixels is ``int(overlap * slice side)``, and the last slice of a row or
  column is pushed back inside the image, so every slice has the full size (unless the image is
  smaller than one slice).
- ``merge``: sahi's ``NMSPostprocess`` (``nms``), ``NMMPostprocess`` (``nmm``) and
  ``GreedyNMMPostprocess`` (``greedy_nmm``, sahi's default) on the pooled detections of all
  slices: the same order (score, then x1, y1, x2, y2), the same overlap (``ios``: intersection
  over the smaller box, sahi's default, or ``iou``), per class unless agnostic, a candidate
  matching at ``>= threshold``; a merge unites the boxes (and masks), keeps the higher score, and
  the class of the higher-scored one. The overlaps are computed one row at a time (memory O(N),
  not sahi's N×N matrix); the answers are the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MERGES = ("greedy_nmm", "nmm", "nms")     # sahi's GREEDYNMM, NMM, NMS
MATCH_METRICS = ("ios", "iou")            # sahi's IOS, IOU
SLICE_OPTIONS = ("slice_size", "slice_overlap", "slice_merge", "slice_match_metric", "slice_match_threshold",
                 "slice_whole_image")  # the per-request options (tsvision.serving.options), each a Settings field
MIN_SLICE = 32                            # the smallest slice side accepted
Window = Tuple[int, int, int, int]        # x1, y1, x2, y2 in original pixels (x2, y2 exclusive)


def parse_slice_size(value: Any) -> Optional[Tuple[int, int]]:
    """``640``, ``"640"``, ``"640x480"`` (width × height) or ``[640, 480]`` -> (width, height);
    ``0``, ``"none"``, ``"off"`` or None -> None (no slicing). Raises ``ValueError`` otherwise."""
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ValueError(f"slice_size must be a side in pixels or WIDTHxHEIGHT, got {value!r}")
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "0", "none", "off", "null"):
            return None
        match = re.fullmatch(r"(\d{1,6})(?:\s*[x×,]\s*(\d{1,6}))?", text)
        if not match:
            raise ValueError(f"slice_size must be a side in pixels (640) or WIDTHxHEIGHT (640x480), got {value!r}")
        width = int(match.group(1))
        height = int(match.group(2)) if match.group(2) else width
    elif isinstance(value, int):
        if value == 0:
            return None
        width = height = value
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        width, height = value
    else:
        raise ValueError(f"slice_size must be a side in pixels (640) or WIDTHxHEIGHT (640x480), got {value!r}")
    if min(width, height) < MIN_SLICE:
        raise ValueError(f"slice_size sides must be at least {MIN_SLICE} pixels, got {width}x{height}")
    return int(width), int(height)


def check_settings(settings: Any) -> None:
    """The slicing settings of a ``Settings`` (raises ``ValueError`` naming the bad one)."""
    if not 0.0 <= settings.slice_overlap < 1.0:
        raise ValueError(f"slice_overlap must be a fraction from 0 up to (not including) 1, "
                         f"got {settings.slice_overlap!r}")
    if settings.slice_merge not in MERGES:
        raise ValueError(f"slice_merge must be one of {MERGES}, got {settings.slice_merge!r}")
    if settings.slice_match_metric not in MATCH_METRICS:
        raise ValueError(f"slice_match_metric must be one of {MATCH_METRICS}, got {settings.slice_match_metric!r}")
    if not 0.0 <= settings.slice_match_threshold <= 1.0:
        raise ValueError(f"slice_match_threshold must lie between 0 and 1, got {settings.slice_match_threshold!r}")
    if settings.max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {settings.max_slices!r}")


def slice_windows(width: int, height: int, slice_width: int, slice_height: int, overlap: float) -> List[Window]:
    """The slices of a ``width``×``height`` image, row by row: sahi's ``get_slice_bboxes`` with
    ``overlap`` as both ratios (kept line for line, its rounding and the pushed-back last slices too)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError("overlap must be a fraction below 1")
    y_overlap, x_overlap = int(overlap * slice_height), int(overlap * slice_width)
    windows: List[Window] = []
    y_min = y_max = 0
    while y_max < height:
        x_min = x_max = 0
        y_max = y_min + slice_height
        while x_max < width:
            x_max = x_min + slice_width
            if y_max > height or x_max > width:
                x_max, y_max = min(width, x_max), min(height, y_max)
                x_min, y_min = max(0, x_max - slice_width), max(0, y_max - slice_height)
            windows.append((x_min, y_min, x_max, y_max))
            x_min = x_max - x_overlap
        y_min = y_max - y_overlap
    return windows


def count_windows(width: int, height: int, slice_width: int, slice_height: int, overlap: float) -> int:
    """How many slices ``slice_windows`` gives, without listing them (to refuse huge counts first)."""
    def along(side: int, size: int, step_back: int) -> int:
        if side <= size:
            return 1
        return 1 + -(-(side - size) // (size - step_back))
    return along(width, slice_width, int(overlap * slice_width)) * along(height, slice_height,
                                                                           int(overlap * slice_height))


# -- merging ----------------------------------------------------------------------------------
def _overlaps(box: np.ndarray, boxes: np.ndarray, metric: str) -> np.ndarray:
    """``box`` against each of ``boxes`` (float32, as sahi's matrix): IoU or IoS, 0 where undefined."""
    inter_w = np.maximum(0, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    inter_h = np.maximum(0, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    denominator = area + areas - inter if metric == "iou" else np.minimum(area, areas)
    out = np.zeros(np.broadcast(inter, denominator).shape, dtype=np.result_type(inter, denominator))
    return np.divide(inter, denominator, out=out, where=denominator > 0).astype(np.float32)


def _order(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Best score first; ties by x1, y1, x2, y2 (sahi's ``_score_tiebreak_order``)."""
    return np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))


def _nms(boxes: np.ndarray, scores: np.ndarray, metric: str, threshold: float) -> Dict[int, List[int]]:
    kept: Dict[int, List[int]] = {}
    suppressed = np.zeros(len(boxes), dtype=bool)
    for index in _order(boxes, scores):
        if suppressed[index]:
            continue
        kept[int(index)] = []
        suppressed |= _overlaps(boxes[index], boxes, metric) >= threshold
    return kept


def _greedy_nmm(boxes: np.ndarray, scores: np.ndarray, metric: str, threshold: float) -> Dict[int, List[int]]:
    kept: Dict[int, List[int]] = {}
    suppressed = np.zeros(len(boxes), dtype=bool)
    order = _order(boxes, scores)
    for position, index in enumerate(order):
        if suppressed[index]:
            continue
        remaining = order[position + 1:]
        candidates = remaining[~suppressed[remaining]]
        merged = candidates[_overlaps(boxes[index], boxes[candidates], metric) >= threshold] \
            if len(candidates) else candidates
        suppressed[merged] = True
        kept[int(index)] = [int(m) for m in merged]
    return kept


def _nmm(boxes: np.ndarray, scores: np.ndarray, metric: str, threshold: float) -> Dict[int, List[int]]:
    """Transitive merging: a box claims every not yet claimed box it dominates (lower score, or an
    equal score and coordinates not above its own) and overlaps, for the keeper it belongs to."""
    count = len(boxes)
    kept: Dict[int, List[int]] = {}
    keeper = np.full(count, -1, dtype=np.intp)
    everyone = np.arange(count)
    for index in _order(boxes, scores):
        lower = scores[index] > scores
        below = np.zeros(count, dtype=bool)  # coords(index) < coords(j), lexicographically over x1, y1, x2, y2
        equal = np.ones(count, dtype=bool)
        for column in range(4):
            below |= equal & (boxes[index, column] < boxes[:, column])
            equal &= boxes[index, column] == boxes[:, column]
        dominated = (everyone != index) & (lower | ((scores[index] == scores) & ~below))
        matched = np.nonzero(dominated & (_overlaps(boxes[index], boxes, metric) >= threshold))[0]
        if keeper[index] < 0:
            keeper[index] = index
            kept[int(index)] = []
        members = kept[int(keeper[index])]
        for other in matched:
            if keeper[other] < 0:
                members.append(int(other))
                keeper[other] = keeper[index]
    return kept


_GROUPERS = {"nms": _nms, "greedy_nmm": _greedy_nmm, "nmm": _nmm}


@dataclass
class Merged:
    """The merged detections, best first: per kept detection its ``boxes`` row, ``scores``,
    ``classes``, the index it came from (``sources``: its keeper, whose extras it keeps) and the
    indices whose boxes (and masks) it united (``members``, the keeper first)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    sources: np.ndarray
    members: List[List[int]]


def merge(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, method: str = "greedy_nmm",
          metric: str = "ios", threshold: float = 0.5, agnostic: bool = False) -> Merged:
    """The detections of all slices (original pixels) merged as sahi merges them (module docstring)."""
    if method not in _GROUPERS or metric not in MATCH_METRICS:
        raise ValueError(f"merge method must be one of {MERGES}, metric one of {MATCH_METRICS}")
    flat = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # sahi's tonumpy() is float32
    flat_scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    groups: Dict[int, List[int]] = {}
    for members in ([np.arange(len(flat))] if agnostic else
                    [np.nonzero(classes == c)[0] for c in np.unique(classes)]):
        for keep, merged in _GROUPERS[method](flat[members], flat_scores[members], metric, threshold).items():
            groups[int(members[keep])] = [int(members[m]) for m in merged]
    exact = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    exact_scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    out_boxes, out_scores, out_classes, sources, united = [], [], [], [], []
    for keep, candidates in groups.items():
        box, score, label, members = exact[keep].copy(), exact_scores[keep], classes[keep], [keep]
        for other in candidates:  # sahi's _apply_merge: each candidate checked against the growing box
            if method != "nms" and _matches(box, exact[other], metric, threshold):
                box = np.concatenate([np.minimum(box[:2], exact[other, :2]), np.maximum(box[2:], exact[other, 2:])])
                label = label if score > exact_scores[other] else classes[other]
                score = max(score, exact_scores[other])
                members.append(other)
        out_boxes.append(box)
        out_scores.append(score)
        out_classes.append(label)
        sources.append(keep)
        united.append(members)
    order = np.argsort(-np.asarray(out_scores, dtype=np.float64), kind="stable")
    return Merged(np.asarray(out_boxes, dtype=np.float64).reshape(-1, 4)[order],
                  np.asarray(out_scores, dtype=np.float64)[order],
                  np.asarray(out_classes, dtype=classes.dtype)[order],
                  np.asarray(sources, dtype=np.intp)[order], [united[i] for i in order])


def _matches(first: np.ndarray, second: np.ndarray, metric: str, threshold: float) -> bool:
    """sahi's ``has_match`` on two boxes (float64)."""
    inter = max(0.0, min(first[2], second[2]) - max(first[0], second[0])) * \
        max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    area1 = (first[2] - first[0]) * (first[3] - first[1])
    area2 = (second[2] - second[0]) * (second[3] - second[1])
    denominator = area1 + area2 - inter if metric == "iou" else min(area1, area2)
    if denominator <= 0:  # sahi divides by zero here: nan, never a match
        return False
    return bool(inter / denominator >= threshold)


def shift_boxes(boxes: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """N×4 boxes in a slice's pixels -> the original image's (the slice's top-left added)."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([window[0], window[1]] * 2, dtype=np.float64)
