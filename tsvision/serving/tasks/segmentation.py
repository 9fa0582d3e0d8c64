"""Semantic segmentation: a class-index mask at the original resolution, as base64 PNG,
with per-class pixel counts and fractions.

With ``mask_format`` ``rle`` or ``polygon`` there is no class-index PNG: each entry of
``classes`` carries its own ``"mask"`` (that class's pixels, ``masks.encode_mask``) instead."""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
from PIL import Image

from tsvision.serving.batching import BySize, Stack
from tsvision.serving.drawing import draw_segmentation
from tsvision.serving.geometry import Placement, fit_square, mean_fill, resize_shorter_side
from tsvision.serving.masks import decode_class_png, decode_mask, encode_class_png
from tsvision.serving.ops import shape_text
from tsvision.serving.results import Segmentation
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.base import ClassCount, VisionTask
from tsvision.serving.tiling import TiledImage, Tiles, wants_tiles

encode_png, decode_png = encode_class_png, decode_class_png  # their old names


class SegmentationTask(VisionTask):
    name = "segmentation"
    options = ("mask_format", "tile", "tile_size", "tile_overlap")
    # served 10.6 -> 11.6 req/s at 16 clients, faster in each of 4 alternating rounds, once its argmax got
    # faster (docs/performance.md, "second pass"); serial on TorchScript (serial_runtimes)
    default_micro_batch = 4
    default_streams = 1  # two runs at once of its large inputs served 12.3 -> 6.8 req/s (ONNX; docs/performance.md)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # torchvision's preset keeps each image's aspect ratio: one forward pass per shape
        inner = BySize() if self.settings.resize_mode == "shorter_side" else Stack()
        self.batching = Tiles(inner, self.settings.tile_batch)  # large images in tiles (tsvision.serving.tiling)

    def prepare_for(self, image: Image.Image, settings: Optional[Settings]):
        """A large image as its tiles when the request's (else the archive's) ``tile`` says so, else ``prepare``."""
        s = settings or self.settings
        if wants_tiles(image.width, image.height, s):
            tiled = TiledImage.cut(image, s)
            return tiled, tiled
        return self.prepare(image)

    def prepare(self, image: Image.Image, settings: Optional[Settings] = None):
        s = settings or self.settings
        if s.resize_mode == "shorter_side":  # torchvision's preset: any aspect ratio, one forward pass per shape
            return resize_shorter_side(image, s.input_size, s.max_size, s.interpolation)
        return fit_square(image, s.input_size, s.resize_mode, mean_fill(s.mean), s.interpolation)

    def class_count(self, outputs: List[np.ndarray]) -> ClassCount:
        return outputs[0].shape[0], f"logits {shape_text(outputs[0])}"

    def headline(self, answer: dict) -> str:
        return max(answer["classes"], key=lambda c: c["pixels"])["label"] if answer["classes"] else ""

    def draw_answer(self, image: Image.Image, answer: dict) -> Image.Image:
        return draw_segmentation(image, class_mask(answer), answer["classes"])

    def finish(self, outputs: List[np.ndarray], placement: Placement,
               settings: Optional[Settings] = None) -> Segmentation:
        mask_format = (settings or self.settings).mask_format or "png"
        if isinstance(placement, TiledImage):  # its tiles were blended into the mask as they came (Tiles)
            return Segmentation(self.labels, outputs[0], mask_format)
        return Segmentation(self.labels, upsample_argmax(outputs[0], placement), mask_format)


def class_mask(answer: dict) -> np.ndarray:
    """A JSON answer's H×W class indices (for clients), from its PNG ``mask`` or its classes' own
    masks. Polygons fill holes, so a class's polygons may cover the classes inside it: the largest
    areas are painted first (the server draws from the mask array itself)."""
    if "mask" in answer:
        return decode_png(answer["mask"])
    height, width = answer["height"], answer["width"]
    decoded = [(decode_mask(entry["mask"], height, width), entry["index"]) for entry in answer["classes"]]
    mask = np.zeros((height, width), dtype=np.int32)
    for pixels, index in sorted(decoded, key=lambda item: -int(item[0].sum())):
        mask[pixels] = index
    return mask


def upsample_argmax(logits: np.ndarray, placement: Placement) -> np.ndarray:
    """C×h×w logits over the model input -> H×W class indices over the original image.

    The answer is that of resizing the part of the output that covers the image (not the
    padding) bilinearly to the original size (``align_corners=False``, as torch does) and
    taking the argmax per pixel, so mask edges are placed to the original pixel. It is computed
    without resizing all C channels: a bilinear value is a convex combination of its four
    source pixels, so where those four agree on the winning class the interpolated logits do
    too, and only the pixels near a class edge (a few percent) are interpolated, all classes.
    """
    _, out_h, out_w = logits.shape
    rows = min(out_h, math.ceil(placement.content_height * out_h / placement.input_height))
    cols = min(out_w, math.ceil(placement.content_width * out_w / placement.input_width))
    region = logits[:, :rows, :cols]
    y0, y1, wy = _bilinear_sources(rows, placement.height)
    x0, x1, wx = _bilinear_sources(cols, placement.width)
    low = channel_argmax(region)  # uint8 up to 256 classes: a quarter of int32's memory traffic below
    top, bottom = low[y0], low[y1]
    mask = top[:, x0]
    edge = (mask != top[:, x1]) | (mask != bottom[:, x0]) | (mask != bottom[:, x1])
    ys, xs = np.nonzero(edge)
    if ys.size:
        fy, fx = wy[ys], wx[xs]
        r0, r1, c0, c1 = y0[ys], y1[ys], x0[xs], x1[xs]
        values = ((1 - fy) * ((1 - fx) * region[:, r0, c0] + fx * region[:, r0, c1])
                  + fy * ((1 - fx) * region[:, r1, c0] + fx * region[:, r1, c1]))
        mask[ys, xs] = values.argmax(0)
    return mask.astype(np.int32)


def channel_argmax(logits: np.ndarray) -> np.ndarray:
    """``logits.argmax(0)`` of C×H×W logits (the first of equal maxima; the first NaN wins), about 3×
    faster: NumPy's argmax over the outer axis walks the array with a stride of one plane per value,
    this compares plane by plane. uint8 for up to 256 classes, else int32."""
    best = logits[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8 if logits.shape[0] <= 256 else np.int32)
    better = np.empty(best.shape, dtype=bool)
    for c in range(1, logits.shape[0]):
        np.greater(logits[c], best, out=better)  # strict: an equal later class does not win
        np.maximum(best, logits[c], out=best)  # the same values; a NaN anywhere stays in ``best``
        np.copyto(index, c, where=better, casting="unsafe")
    if np.isnan(best).any():
        return logits.argmax(0).astype(index.dtype)  # NaNs (a broken model): NumPy's own rule
    return index


def _bilinear_sources(in_size: int, out_size: int):
    """For each output index: the two source indices and the weight of the second, as torch's
    bilinear resize with ``align_corners=False`` computes them."""
    real = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * np.float32(in_size / out_size) - np.float32(0.5)
    real = np.maximum(real, np.float32(0))
    first = np.minimum(real.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    return first, second, (real - first).astype(np.float32)

