"""Binary masks -> compact JSON: COCO run-length encoding, or polygon rings (numpy only).

``encode_rle`` writes the compressed string form pycocotools' ``mask.encode`` writes and its
``decode`` reads: ``{"size": [h, w], "counts": "..."}``, runs over the pixels in column-major
order, starting with a run of zeros. ``decode_rle`` reads it back (for clients and tests).

``polygons`` traces the outer boundary of every 4-connected region of a mask along the pixel
edges, in original-image pixels (pixel ``(x, y)`` covers ``[x, x+1] × [y, y+1]``), as COCO
polygons ``[x1, y1, x2, y2, ...]``. Holes are not represented (COCO polygons cannot say
"minus"; use RLE for exact masks).

``encode_png_mask`` writes a 1-bit PNG (base64) at the mask's size. ``decode_mask`` reads any of
the three back to an H×W boolean array (``mask_format``: ``rle``, ``polygon``, ``png``).
``encode_class_png`` writes a segmentation's class-index mask as one PNG; ``decode_class_png`` reads it.
"""

from __future__ import annotations

import base64
import io
from typing import Dict, List, Sequence, Union

import numpy as np
from PIL import Image


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
_DX = np.array([1, 0, -1, 0])  # direction -> step: 0 right, 1 down, 2 left, 3 up (image axes, y down)
_DY = np.array([0, 1, 0, -1])


def _boundary_edges(mask: np.ndarray):
    """Every pixel edge between a mask pixel and a non-mask one, directed so the mask lies on its
    right: outer boundaries run clockwise on screen, holes the other way. Returns the start
    corners ``xs``, ``ys`` and the ``directions``."""
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    found = []
    for direction, neighbour, (dx, dy) in ((0, padded[:-2, 1:-1], (0, 0)),    # top edge: (x, y) -> (x+1, y)
                                           (1, padded[1:-1, 2:], (1, 0)),     # right edge: (x+1, y) -> (x+1, y+1)
                                           (2, padded[2:, 1:-1], (1, 1)),     # bottom edge: (x+1, y+1) -> (x, y+1)
                                           (3, padded[1:-1, :-2], (0, 1))):   # left edge: (x, y+1) -> (x, y)
        ys, xs = np.nonzero(inside & ~neighbour)
        found.append((xs + dx, ys + dy, np.full(xs.size, direction)))
    return (np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]),
            np.concatenate([f[2] for f in found]))


def _successors(xs: np.ndarray, ys: np.ndarray, directions: np.ndarray, width: int) -> np.ndarray:
    """For each edge, the edge that continues the boundary from its end corner. Where two regions
    touch at a corner (two edges leave it) the right turn is taken: regions stay 4-connected."""
    keys = ys * (width + 3) + xs
    order = np.argsort(keys, kind="stable")
    ends = (ys + _DY[directions]) * (width + 3) + xs + _DX[directions]
    first = np.searchsorted(keys[order], ends, side="left")
    chosen = order[first]
    two = np.flatnonzero(np.searchsorted(keys[order], ends, side="right") - first == 2)
    if two.size:
        other = order[first[two] + 1]
        right_turn = (directions[two] + 1) % 4
        chosen[two] = np.where(directions[other] == right_turn, other, chosen[two])
    return chosen


def polygons(mask: np.ndarray) -> List[List[int]]:
    """The outer boundary of each region of an H×W mask as a COCO polygon ``[x1, y1, x2, y2, ...]``
    (pixel corners, so it encloses exactly the region's pixels, holes filled); largest first."""
    mask = np.asarray(mask, dtype=bool)
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    top, left = int(rows[0]), int(columns[0])
    crop = mask[top:rows[-1] + 1, left:columns[-1] + 1]
    xs, ys, directions = _boundary_edges(crop)
    following = _successors(xs, ys, directions, crop.shape[1])
    previous = np.empty_like(following)
    previous[following] = np.arange(following.size)
    is_corner = (directions != directions[previous]).tolist()
    following, xs, ys = following.tolist(), (xs + left).tolist(), (ys + top).tolist()
    seen = bytearray(len(following))
    found = []
    for start in range(len(following)):
        if seen[start] or not is_corner[start]:
            continue
        ring, edge = [], start
        while not seen[edge]:
            seen[edge] = 1
            if is_corner[edge]:
                ring += (xs[edge], ys[edge])
            edge = following[edge]
        area = 0.5 * (np.dot(ring[0::2], np.roll(ring[1::2], -1)) - np.dot(ring[1::2], np.roll(ring[0::2], -1)))
        if area > 0:  # clockwise on screen (y down): an outer boundary; holes run the other way
            found.append((area, ring))
    found.sort(key=lambda item: -item[0])
    return [ring for _, ring in found]


def fill_polygons(rings: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """The pixels whose centres lie inside any of ``rings`` (even-odd per ring, rings OR-ed).
    Exact for the pixel-edge polygons ``polygons`` writes: ``fill_polygons(polygons(m))`` is ``m``
    with its holes filled."""
    mask = np.zeros((height, width), dtype=bool)
    for ring in rings:
        xs = np.rint(np.asarray(ring[0::2], dtype=np.float64)).astype(np.int64)
        ys = np.rint(np.asarray(ring[1::2], dtype=np.float64)).astype(np.int64)
        toggles = np.zeros((height + 1, width + 2), dtype=np.int8)
        for x, y0, y1 in zip(xs, ys, np.roll(ys, -1)):  # vertical edges: (x, y0) -> (x, y1)
            low, high = sorted((int(np.clip(y0, 0, height)), int(np.clip(y1, 0, height))))
            toggles[low:high, int(np.clip(x, 0, width + 1))] ^= 1
        mask |= (np.cumsum(toggles[:height], axis=1)[:, :width] % 2).astype(bool)
    return mask


def encode_png_mask(mask: np.ndarray) -> str:
    """An H×W boolean mask -> base64 1-bit PNG (white = in the mask)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG", compress_level=6)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_class_png(mask: np.ndarray) -> str:
    """Class-index mask -> base64 PNG: 8-bit grey up to 256 classes, 16-bit beyond."""
    if mask.max(initial=0) < 256:
        image = Image.fromarray(mask.astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(mask.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_class_png(data: str) -> np.ndarray:
    """Inverse of ``encode_class_png``, for clients and tests."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def encode_mask(mask: np.ndarray, mask_format: str) -> Union[dict, list, str]:
    """An H×W boolean mask in ``mask_format``: ``rle`` (dict), ``polygon`` (list) or ``png`` (str)."""
    if mask_format == "rle":
        return encode_rle(mask)
    if mask_format == "polygon":
        return polygons(mask)
    if mask_format == "png":
        return encode_png_mask(mask)
    raise ValueError(f"mask_format must be 'png', 'rle' or 'polygon', got {mask_format!r}")


def decode_mask(encoded: Union[dict, list, str], height: int, width: int) -> np.ndarray:
    """One answer's ``mask`` in any ``mask_format`` -> H×W boolean array (for clients, drawing, tests)."""
    if isinstance(encoded, dict):
        mask = decode_rle(encoded).astype(bool)
    elif isinstance(encoded, list):
        return fill_polygons(encoded, height, width)
    else:
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("1"), dtype=bool)
    if mask.shape != (height, width):
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
    return mask
