"""Sliced inference in the batch (docs/large-images.md, "Sliced detection").

A request with ``slice_size`` set has each image cut into overlapping slices (``slicing.slice_windows``)
and, with ``slice_whole_image``, the whole image added as one more (sahi's ``perform_standard_pred``).
``prepare_slices`` prepares each slice as the task prepares an image (``Slices``); the batch puts
them among the other requests' images for the one forward pass (``VisionTask.gather``) and hands
them back together (``group_rows``); ``finish_slices`` finishes each slice as an image of its own,
moves its boxes, keypoints and masks to the original pixels and merges them (``slicing.merge``).

Masks stay small: each slice's instance masks are cut to the pixels they cover (``Patch``) as soon
as the slice is finished, merged masks are the union of their patches, and the answer pastes one
instance at a time into a full-size mask while it is serialised (``PatchMasks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.errors import RequestError
from tsvision.serving.results import Detections, Instances, Keypoints
from tsvision.serving.slicing import Window, count_windows, merge, shift_boxes, slice_windows


@dataclass
class Slices:
    """One image's prepared slices: per slice its model array, ``prepare``'s meta and its window
    (x1, y1, x2, y2 in the original image); the whole image is the last when added."""

    arrays: List[np.ndarray]
    metas: List[Any]
    windows: List[Window]
    width: int
    height: int


@dataclass(frozen=True)
class SliceMeta:
    """The meta of one slice among the batch's images: its image's ``Slices`` and its index there."""

    slices: Slices
    index: int

    @property
    def meta(self) -> Any:
        return self.slices.metas[self.index]


def wants_slices(settings: Any) -> bool:
    """Whether images with these settings are sliced."""
    return settings is not None and getattr(settings, "slice_size", None) is not None


def prepare_slices(image: Image.Image, settings: Any, prepare: Callable[[Image.Image], Tuple[np.ndarray, Any]]
                   ) -> Slices:
    """``image`` cut into slices (and the whole image with ``slice_whole_image`` when there are
    several), each prepared by ``prepare``; more slices than ``max_slices`` are the request's 400."""
    width, height = image.size
    slice_width, slice_height = settings.slice_size
    count = count_windows(width, height, slice_width, slice_height, settings.slice_overlap)
    if count > settings.max_slices:
        raise RequestError(400, "TooManySlices",
                           f"this {width}×{height} image makes {count} slices of {slice_width}×{slice_height} with "
                           f"slice_overlap {settings.slice_overlap}; at most {settings.max_slices} (max_slices): "
                           "use larger slices or less overlap")
    windows = slice_windows(width, height, slice_width, slice_height, settings.slice_overlap)
    if len(windows) > 1 and settings.slice_whole_image:
        windows.append((0, 0, width, height))
    arrays, metas = [], []
    for window in windows:
        array, meta = prepare(image if window == (0, 0, width, height) else image.crop(window))
        arrays.append(array)
        metas.append(meta)
    return Slices(arrays, metas, windows, width, height)


def group_rows(positions: Sequence[int], rows: Sequence[Tuple[List[np.ndarray], Any, Any]]
               ) -> List[Tuple[int, Tuple[Any, Any, Any]]]:
    """Per answer: its slot and its row. The rows of one image's slices (``SliceMeta``, in a run)
    become one row ``(list of outputs, list of SliceMeta, settings)``; other rows stay as they are."""
    grouped: List[Tuple[int, Tuple[Any, Any, Any]]] = []
    for position, (outputs, meta, settings) in zip(positions, rows):
        if isinstance(meta, SliceMeta):
            if grouped and grouped[-1][0] == position and isinstance(grouped[-1][1][1], list):
                grouped[-1][1][0].append(outputs)
                grouped[-1][1][1].append(meta)
                continue
            grouped.append((position, ([outputs], [meta], settings)))
        else:
            grouped.append((position, (outputs, meta, settings)))
    return grouped


@dataclass
class Patch:
    """Part of a boolean mask: ``mask`` with its top-left pixel at ``x``, ``y`` of the original image."""

    x: int
    y: int
    mask: np.ndarray

    @classmethod
    def cut(cls, mask: np.ndarray, x: int = 0, y: int = 0) -> "Patch":
        """The smallest patch of ``mask`` (placed at ``x``, ``y``) that holds all its pixels."""
        rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if not len(rows):
            return cls(x, y, np.zeros((0, 0), dtype=bool))
        return cls(x + int(columns[0]), y + int(rows[0]),
                   np.ascontiguousarray(mask[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]))

    @staticmethod
    def union(patches: Sequence["Patch"]) -> "Patch":
        """One patch holding every pixel of ``patches``."""
        shown = [p for p in patches if p.mask.size]
        if not shown:
            return Patch(0, 0, np.zeros((0, 0), dtype=bool))
        x1, y1 = min(p.x for p in shown), min(p.y for p in shown)
        x2 = max(p.x + p.mask.shape[1] for p in shown)
        y2 = max(p.y + p.mask.shape[0] for p in shown)
        out = np.zeros((y2 - y1, x2 - x1), dtype=bool)
        for p in shown:
            out[p.y - y1:p.y - y1 + p.mask.shape[0], p.x - x1:p.x - x1 + p.mask.shape[1]] |= p.mask
        return Patch(x1, y1, out)

    def full(self, height: int, width: int) -> np.ndarray:
        """This patch pasted into an empty ``height``×``width`` mask."""
        out = np.zeros((height, width), dtype=bool)
        out[self.y:self.y + self.mask.shape[0], self.x:self.x + self.mask.shape[1]] = self.mask
        return out


class PatchMasks(Sequence):
    """K full-size masks made one at a time from their patches (``Instances.masks`` of a sliced answer)."""

    def __init__(self, patches: Sequence[Patch], height: int, width: int) -> None:
        self.patches, self.height, self.width = list(patches), height, width

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return PatchMasks(self.patches[index], self.height, self.width)
        return self.patches[index].full(self.height, self.width)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (patch.full(self.height, self.width) for patch in self.patches)


@dataclass
class _Found:
    """One slice's detections in original pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    points: Optional[np.ndarray] = None
    patches: Optional[List[Patch]] = None


def _moved(result: Detections, window: Window) -> _Found:
    """A slice's result with its boxes, keypoints and masks in the original image's pixels."""
    x, y = window[0], window[1]
    found = _Found(shift_boxes(result.boxes, window), np.asarray(result.scores, dtype=np.float64).reshape(-1),
                   np.asarray(result.classes).reshape(-1))
    if isinstance(result, Keypoints):
        points = np.array(result.points, dtype=np.float64)
        points[..., 0] += x
        points[..., 1] += y
        found.points = points
    if isinstance(result, Instances):
        found.patches = [Patch.cut(np.asarray(mask, dtype=bool), x, y) for mask in result.masks]
    return found


def finish_slices(finish: Callable[[List[np.ndarray], Any, Any], Detections], outputs: Sequence[List[np.ndarray]],
                  metas: Sequence[SliceMeta], settings: Any) -> Detections:
    """Each slice finished by the task's ``finish`` (as an image of its own), moved to the original
    pixels, and all merged by the settings (``slice_merge``, ``slice_match_metric``,
    ``slice_match_threshold``; per class unless ``agnostic_nms``); the best ``max_detections``.
    The answer is the class the task's ``finish`` returns, in original pixels."""
    slices = metas[0].slices
    parts, sample = [], None
    for row, meta in zip(outputs, metas):
        result = finish(row, meta.meta, settings)
        sample = result
        parts.append(_moved(result, slices.windows[meta.index]))
    boxes = np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4))
    scores = np.concatenate([p.scores for p in parts]) if parts else np.zeros(0)
    classes = np.concatenate([p.classes for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    merged = merge(boxes, scores, classes, settings.slice_merge, settings.slice_match_metric,
                   settings.slice_match_threshold, settings.agnostic_nms)
    keep = slice(0, settings.max_detections)
    width, height = slices.width, slices.height
    merged_boxes = merged.boxes[keep].copy()
    np.clip(merged_boxes[:, 0::2], 0, width, out=merged_boxes[:, 0::2])
    np.clip(merged_boxes[:, 1::2], 0, height, out=merged_boxes[:, 1::2])
    answer = Detections(sample.labels if sample is not None else [], merged_boxes, merged.scores[keep],
                        merged.classes[keep])
    if isinstance(sample, Keypoints):
        points = np.concatenate([p.points for p in parts if p.points is not None and p.points.size]
                                or [np.zeros((0, sample.points.shape[1] if sample.points.ndim == 3 else 0, 3))])
        kept_points = points[merged.sources[keep]] if len(points) else np.zeros((0, 0, 3))
        return Keypoints(answer.labels, answer.boxes, answer.scores, answer.classes, kept_points,
                         sample.skeleton, sample.visible)
    if isinstance(sample, Instances):
        patches = [patch for p in parts for patch in (p.patches or [])]
        unions = [Patch.union([patches[i] for i in members]) for members in merged.members[keep]]
        return Instances(answer.labels, answer.boxes, answer.scores, answer.classes,
                         PatchMasks(unions, height, width), sample.mask_format)
    return answer
