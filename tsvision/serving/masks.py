"""Binary masks -> compact JSON: COCO run-length encoding, or polygon rings (numpy only).

``encode_rle`` writes the compressed string form pycocotools' ``mask.encode`` writes and its
``decode`` reads: ``{"size": [h, w], "counts": "..."}``, runs over the pixels in column-major
order, starting with a run of zeros. ``decode_rle`` reads it back (for clients and tests).

``polygons`` traces the outer boundary of every 4-connected region of a mask along the pixel
edges, in original-image pixels (pixel ``(x, y)`` covers ``[x, x+1] × [y, y+1]``), as COCO
polygons ``[x1, y1, x2, y2, ...]``. Holes are not represented (COCO polygons cannot say
"minus"; use RLE for exact masks).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np


def run_lengths(mask: np.ndarray) -> np.ndarray:
    """The COCO run lengths of an H×W mask: alternating zeros/ones in column-major order, zeros first.
    Only the columns between the first and the last one holding a mask pixel are scanned."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        return np.array([height * width] if height * width else [], dtype=np.int64)
    first, last = int(columns[0]), int(columns[-1]) + 1
    flat = np.ascontiguousarray(mask[:, first:last].T).reshape(-1)  # column-major: x outer, y inner
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).astype(np.int64)
    if flat[0]:  # COCO always starts with a (possibly empty) run of zeros
        runs = np.concatenate(([0], runs))
    runs[0] += first * height                       # the empty columns before ...
    if flat[-1]:
        runs = np.concatenate((runs, [0]))
    runs[-1] += (width - last) * height             # ... and after
    if runs[-1] == 0:
        runs = runs[:-1]
    return runs


def counts_string(runs: np.ndarray) -> str:
    """pycocotools' ``rleToString``: each count (from the fourth on, as a difference with the count two
    before) in 5-bit groups, low first, 0x20 marking "more follows", offset by 48 into ASCII."""
    values = runs.astype(np.int64).copy()
    if values.size > 3:
        values[3:] -= runs[1:-2]
    out = bytearray()
    for x in values.tolist():
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C for the negative differences
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append((c | 0x20 if more else c) + 48)
    return out.decode("ascii")


def encode_rle(mask: np.ndarray) -> Dict[str, object]:
    """An H×W boolean mask -> ``{"size": [h, w], "counts": str}`` (COCO compressed RLE)."""
    height, width = mask.shape
    return {"size": [int(height), int(width)], "counts": counts_string(run_lengths(mask))}


def decode_rle(rle: Dict[str, object]) -> np.ndarray:
    """``{"size": [h, w], "counts": str}`` -> H×W uint8 mask (pycocotools' ``rleFrString`` + ``decode``)."""
    height, width = (int(v) for v in rle["size"])
    text = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else bytes(rle["counts"])
    runs: List[int] = []
    position = 0
    while position < len(text):
        x, shift, more = 0, 0, True
        while more:
            c = text[position] - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            position += 1
            shift += 5
            if not more and (c & 0x10):
                x |= -1 << shift
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, np.asarray(runs, dtype=np.int64))
    if flat.size != height * width:
        raise ValueError(f"RLE counts cover {flat.size} pixels, size says {height}×{width}")
    return flat.reshape(width, height).T.copy()


# -- polygons ---------------------------------------------------------------------------------
_STEP = {0: (1, 0), 1: (0, 1), 2: (-1, 0), 3: (0, -1)}  # direction -> (dx, dy): right, down, left, up


def _boundary_edges(mask: np.ndarray) -> Dict[tuple, List[int]]:
    """Every pixel edge between a mask pixel and a non-mask one, directed so the mask lies on its
    right (image axes, y down): the outer boundaries run clockwise on screen. Start corner -> directions."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    edges: Dict[tuple, List[int]] = {}

    def add(ys: np.ndarray, xs: np.ndarray, direction: int) -> None:
        for x, y in zip(xs.tolist(), ys.tolist()):
            edges.setdefault((x, y), []).append(direction)

    inside = padded[1:-1, 1:-1]
    above, below = padded[:-2, 1:-1], padded[2:, 1:-1]
    left, right = padded[1:-1, :-2], padded[1:-1, 2:]
    ys, xs = np.nonzero(inside & ~above)   # top edge of pixel (x, y): (x, y) -> (x+1, y), mask below = right
    add(ys, xs, 0)
    ys, xs = np.nonzero(inside & ~right)   # right edge: (x+1, y) -> (x+1, y+1)
    add(ys, xs + 1, 1)
    ys, xs = np.nonzero(inside & ~below)   # bottom edge: (x+1, y+1) -> (x, y+1)
    add(ys + 1, xs + 1, 2)
    ys, xs = np.nonzero(inside & ~left)    # left edge: (x, y+1) -> (x, y)
    add(ys + 1, xs, 3)
    return edges


def _rings(edges: Dict[tuple, List[int]]) -> List[List[tuple]]:
    """Chain the directed edges into closed rings of corner points (only the corners where the
    direction turns). Where two regions touch at a corner, turn right: regions stay 4-connected."""
    rings = []
    while edges:
        start = next(iter(edges))
        point, direction, first = start, None, None
        corners: List[tuple] = []
        while True:
            choices = edges.get(point)
            if not choices:
                break
            if direction is None or len(choices) == 1:
                chosen = choices[0]
            else:  # a corner shared by two diagonal pixels: the right turn, then straight, then left
                preference = [(direction + 1) % 4, direction, (direction + 3) % 4]
                chosen = next((d for d in preference if d in choices), choices[0])
            choices.remove(chosen)
            if not choices:
                del edges[point]
            if direction is None:
                first = chosen
            if chosen != direction:
                corners.append(point)
            direction = chosen
            dx, dy = _STEP[chosen]
            point = (point[0] + dx, point[1] + dy)
        if len(corners) > 1 and first == direction:  # the start lay on a straight run: not a corner
            corners.pop(0)
        rings.append(corners)
    return rings


def _signed_area(ring: List[tuple]) -> float:
    xs = np.array([p[0] for p in ring], dtype=np.float64)
    ys = np.array([p[1] for p in ring], dtype=np.float64)
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


def polygons(mask: np.ndarray) -> List[List[int]]:
    """The outer boundary of each region of an H×W mask as a COCO polygon ``[x1, y1, x2, y2, ...]``
    (pixel corners, so it encloses exactly the region's pixels, holes filled); largest first."""
    found = []
    for ring in _rings(_boundary_edges(mask)):
        if len(ring) < 3:
            continue
        area = _signed_area(ring)
        if area > 0:  # clockwise on screen (y down) = an outer boundary; holes run the other way
            found.append((area, [int(v) for point in ring for v in point]))
    found.sort(key=lambda item: -item[0])
    return [coords for _, coords in found]
