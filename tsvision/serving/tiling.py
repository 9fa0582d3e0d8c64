"""Tiled semantic segmentation: a large image cut into overlapping tiles at its own pixel scale,
their logits blended in the overlaps and stitched into one class mask at the original size.

When (``wants_tiles``): the ``tile`` setting or option. ``never`` (the default), ``always``, or ``auto``:
tiles when the image's shorter side is more than ``AUTO_FACTOR`` times the tile's shorter side, i.e. when
the whole-image pass would shrink the image more than that.

Tiles (``TiledImage``): ``tile_size`` (width, height; default the model's ``input_size`` square) pixels of
the ORIGINAL image, never resized, so a tile is what the model sees; neighbours share ``tile_overlap`` of
a tile, the last tile of a row or column is moved back to end at the image's edge (as SAHI and MONAI place
them), and an image smaller than a tile on one side is padded with the mean colour (padding is ignored).

Blending: each tile's logits are weighted by a window that is 1 inside and falls linearly, (i + 0.5) / n,
across each overlap of n pixels with a neighbour (the neighbour's rises the same way, so in an overlap the
two weights sum to 1: a cross-fade; no ramp at the image's edges). Logits, not probabilities: the weighted
sum is what an ensemble of the tiles' logits would be, the argmax of a weighted sum needs no division by
the summed weights (the same for every class at a pixel), and no softmax over C × tile pixels is paid
per tile. A fully convolutional per-pixel model gives the whole-image logits in every tile, so the blend
gives back the whole-image mask.

Memory: tiles go through the model in raster order, at most ``tile_batch`` inputs per forward pass, and
their logits are added into a band of C × tile height × image width float32 covering the current row of
tiles. When the next row starts, the band's rows above it are final: their argmax goes into the H×W
class mask (uint8, uint16 past 256 classes) and the band moves down. The image's full-resolution logits
for all classes are never held (21 classes × 8000×6000 float32 would be 4 GB; the band is 21 × 520 ×
8000 × 4 bytes = 350 MB at the default 520 px tile), nor all its tiles: each pass cuts its own.

Batching (``Tiles``, the segmentation task's strategy): the tiles of every tiled image of a batch and the
other images of the same shape share the forward passes, the other images in the first one; a batch
without tiled images runs exactly as the inner strategy runs it. A pass that fails fails only the
images with an input in it (500); the other images of the batch are answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.batching import BySize, Inputs, Mapper, Rows, Stack, Strategy
from tsvision.serving.errors import internal_error
from tsvision.serving.geometry import mean_fill, normalize
from tsvision.serving.runtimes import Runtime
from tsvision.serving.settings import Settings

AUTO_FACTOR = 2  # tile: auto tiles an image whose shorter side is over twice the tile's shorter side


def tile_shape(settings: Settings) -> Tuple[int, int]:
    """(width, height) of one tile: the ``tile_size`` setting, else the model's ``input_size`` square."""
    return tuple(settings.tile_size) if settings.tile_size else (settings.input_size, settings.input_size)


def wants_tiles(width: int, height: int, settings: Settings) -> bool:
    """Whether an image of ``width``×``height`` is tiled under ``settings`` (``tile``, ``tile_size``)."""
    if settings.tile == "always":
        return True
    return settings.tile == "auto" and min(width, height) > AUTO_FACTOR * min(tile_shape(settings))


def positions(length: int, tile: int, overlap: float) -> List[int]:
    """Tile starts along an axis of ``length`` pixels: a stride of ``tile × (1 - overlap)`` (at least 1),
    the last start moved back to ``length - tile``; ``[0]`` when one tile covers it."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = -(-(length - tile) // stride) + 1
    return sorted({min(index * stride, length - tile) for index in range(count)})


def windows(starts: Sequence[int], tile: int) -> List[np.ndarray]:
    """Per tile start, its 1-D weights: 1, falling linearly across the overlap with each neighbour as
    ``(i + 0.5) / n`` over an overlap of ``n`` pixels (the neighbour's rising the same way)."""
    found = []
    for k, start in enumerate(starts):
        weight = np.ones(tile, dtype=np.float32)
        if k > 0 and starts[k - 1] + tile > start:
            n = starts[k - 1] + tile - start
            weight[:n] = np.minimum(weight[:n], (np.arange(n, dtype=np.float32) + 0.5) / n)
        if k + 1 < len(starts) and start + tile > starts[k + 1]:
            n = start + tile - starts[k + 1]
            weight[tile - n:] = np.minimum(weight[tile - n:], (np.arange(n, 0, -1, dtype=np.float32) - 0.5) / n)
        found.append(weight)
    return found


def resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """C×h×w -> C×``height``×``width``, bilinear with ``align_corners=False`` (as torch resizes), for a
    model whose output is smaller than its input."""
    def taps(source: int, target: int):
        real = np.maximum((np.arange(target, dtype=np.float32) + 0.5) * np.float32(source / target) - 0.5, 0)
        first = np.minimum(real.astype(np.int64), source - 1)
        return first, np.minimum(first + 1, source - 1), (real - first).astype(np.float32)

    (top, bottom, down), (left, right, across) = taps(logits.shape[1], height), taps(logits.shape[2], width)
    rows = logits[:, top] * (1 - down)[None, :, None] + logits[:, bottom] * down[None, :, None]
    return rows[:, :, left] * (1 - across) + rows[:, :, right] * across


class TiledImage:
    """One image cut into tiles (``tile``: the model input of tile ``index``, raster order) and the
    running blend of their logits (``add``, in the same order); ``mask`` is the H×W class mask once every
    tile was added (``complete``)."""

    def __init__(self, pixels: np.ndarray, settings: Settings) -> None:
        self.pixels = pixels  # H×W×3 uint8, released once the mask is complete
        self.height, self.width = pixels.shape[:2]
        self.tile_width, self.tile_height = tile_shape(settings)
        self.mean, self.std, self.fill = settings.mean, settings.std, mean_fill(settings.mean)
        self.ys = positions(self.height, self.tile_height, settings.tile_overlap)
        self.xs = positions(self.width, self.tile_width, settings.tile_overlap)
        self.wy, self.wx = windows(self.ys, self.tile_height), windows(self.xs, self.tile_width)
        self.mask: Optional[np.ndarray] = None
        self._band: Optional[np.ndarray] = None  # C × tile height × W: the image rows from ys[row] on
        self._row = 0
        self._added = 0

    @classmethod
    def cut(cls, image: Image.Image, settings: Settings) -> "TiledImage":
        return cls(np.asarray(image.convert("RGB")), settings)

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return 3, self.tile_height, self.tile_width

    @property
    def complete(self) -> bool:
        return self._added == self.count

    def tile(self, index: int) -> np.ndarray:
        """Tile ``index`` (raster order) as the model's normalised 3×h×w float32 input."""
        y, x = self.ys[index // len(self.xs)], self.xs[index % len(self.xs)]
        crop = self.pixels[y:y + self.tile_height, x:x + self.tile_width]
        if crop.shape[:2] != (self.tile_height, self.tile_width):  # the image is smaller than a tile here
            padded = np.empty((self.tile_height, self.tile_width, 3), dtype=np.uint8)
            padded[...] = np.asarray(self.fill, dtype=np.uint8)
            padded[:crop.shape[0], :crop.shape[1]] = crop
            crop = padded
        return normalize(crop[None], self.mean, self.std)[0]

    def add(self, index: int, logits: np.ndarray) -> None:
        """Blend tile ``index``'s C×h×w logits in; tiles come in raster order (0, 1, 2, ...)."""
        if index != self._added:
            raise ValueError(f"tile {index} came before tile {self._added}")
        if logits.ndim != 3:
            raise ValueError(f"a segmentation model outputs C×H×W logits per image, got shape {logits.shape}")
        th, tw = self.tile_height, self.tile_width
        if logits.shape[1:] != (th, tw):
            logits = resize_logits(logits, th, tw)
        row, column = divmod(index, len(self.xs))
        if self._band is None:
            classes = logits.shape[0]
            self._band = np.zeros((classes, th, self.width), dtype=np.float32)
            self.mask = np.zeros((self.height, self.width), dtype=np.uint8 if classes <= 256 else np.uint16)
        while self._row < row:
            self._finish_row()
        y, x = self.ys[row], self.xs[column]
        h, w = min(th, self.height - y), min(tw, self.width - x)
        weight = self.wy[row][:h, None] * self.wx[column][None, :w]
        part = logits[:, :h, :w]
        if part.flags.writeable:  # the tile's own output: weighted in place, no C×h×w temporary
            part *= weight
        else:
            part = part * weight
        self._band[:, :h, x:x + w] += part
        self._added += 1
        if self.complete:
            self._finish_row()
            self.pixels, self._band = None, None

    def _finish_row(self) -> None:
        """The band's rows above the next row of tiles are final: their argmax into the mask; move down."""
        top = self.ys[self._row]
        below = self.ys[self._row + 1] if self._row + 1 < len(self.ys) else self.height
        done, kept = below - top, self.tile_height - (below - top)
        self.mask[top:below] = class_argmax(self._band[:, :done])
        for plane in self._band:  # one class at a time: no copy of the whole band
            plane[:kept] = plane[done:done + kept]
            plane[kept:] = 0
        self._row += 1


def class_argmax(values: np.ndarray) -> np.ndarray:
    """``values.argmax(0)`` of C×h×w logits (the first class wins a tie) one class at a time, so no
    C×h×w copy is made of a strided view and no int64 array: memory of h×w, not C×h×w."""
    best = values[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8 if len(values) <= 256 else np.uint16)
    for klass in range(1, len(values)):
        better = values[klass] > best
        index[better] = klass
        np.maximum(best, values[klass], out=best)
    return index


@dataclass
class Mixed:
    """A batch's model inputs when some images are tiled: the other images' own inputs (``plain``, one
    3×H×W array each) and the tiled images, each with its slot among the batch's live images."""

    size: int
    plain_slots: List[int] = field(default_factory=list)
    plain: List[np.ndarray] = field(default_factory=list)
    tiled_slots: List[int] = field(default_factory=list)
    tiled: List[TiledImage] = field(default_factory=list)


@dataclass(frozen=True)
class Tiles:
    """The segmentation task's strategy: ``inner`` (``Stack`` or ``BySize``) for a batch without tiled
    images; with them, every model input of a shape (other images first, then each tiled image's tiles
    in order) in passes of at most ``max(per_pass, other images of that shape)`` inputs. A tiled image's
    row is its finished class mask (``[mask]``)."""

    inner: Strategy = field(default_factory=Stack)
    per_pass: int = 4

    def collate(self, arrays: List[np.ndarray], settings: Settings, map: Mapper) -> Inputs:
        tiled = [i for i, array in enumerate(arrays) if isinstance(array, TiledImage)]
        if not tiled:
            return self.inner.collate(arrays, settings, map)
        plain = [i for i in range(len(arrays)) if i not in set(tiled)]
        inputs = list(self.inner.collate([arrays[i] for i in plain], settings, map)) if plain else []
        return Mixed(len(arrays), plain, inputs, tiled, [arrays[i] for i in tiled])

    def run(self, runtime: Runtime, inputs: Inputs) -> Rows:
        if not isinstance(inputs, Mixed):
            return self.inner.run(runtime, inputs)
        rows: Rows = [None] * inputs.size  # type: ignore[list-item]
        shapes = {image.input_shape for image in inputs.tiled}
        alone = [k for k, array in enumerate(inputs.plain) if array.shape not in shapes]
        if alone:  # other images of a shape no tile has: as the inner strategy runs them
            for k, row in zip(alone, BySize().run(runtime, [inputs.plain[k] for k in alone])):
                rows[inputs.plain_slots[k]] = row
        for shape in shapes:
            self._run_shape(runtime, inputs, shape, rows)
        return rows

    def _run_shape(self, runtime: Runtime, inputs: Mixed, shape: tuple, rows: Rows) -> None:
        """The other images of ``shape`` and the tiles of that shape, in passes (see the class)."""
        queue: List[Tuple[str, int, int]] = [("plain", k, 0) for k, array in enumerate(inputs.plain)
                                             if array.shape == shape]
        size = max(self.per_pass, len(queue))
        tiled = [j for j, image in enumerate(inputs.tiled) if image.input_shape == shape]
        queue += [("tile", j, t) for j in tiled for t in range(inputs.tiled[j].count)]
        failed: dict = {}
        for start in range(0, len(queue), size):
            chunk = [entry for entry in queue[start:start + size] if entry[0] == "plain" or entry[1] not in failed]
            if not chunk:
                continue
            try:
                batch = np.stack([inputs.plain[k] if kind == "plain" else inputs.tiled[k].tile(t)
                                  for kind, k, t in chunk])
                outputs = runtime.run(batch)
            except Exception:  # the model failed on this pass: the images with an input in it get 500
                error = internal_error("InferenceError", f"the model failed on a pass of {len(chunk)} inputs "
                                                         "(tiles and images) of this batch")
                for kind, k, _ in chunk:
                    if kind == "plain":
                        rows[inputs.plain_slots[k]] = error
                    else:
                        failed[k] = error
                continue
            for i, (kind, k, t) in enumerate(chunk):
                if kind == "plain":
                    rows[inputs.plain_slots[k]] = [output[i] for output in outputs]
                elif k not in failed:
                    try:
                        inputs.tiled[k].add(t, outputs[0][i])
                    except Exception:
                        failed[k] = internal_error("PostprocessError", "blending this image's tiles failed")
        for j in tiled:
            image = inputs.tiled[j]
            rows[inputs.tiled_slots[j]] = failed.get(j) or ([image.mask] if image.complete else
                                                            internal_error("InferenceError", "a tile was lost"))
            image.pixels = None

