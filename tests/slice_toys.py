"""A toy detector for sliced inference whose right answer is known: it fires on small bright
squares at its own input scale, and on nothing once a large image is shrunk to that scale.

``BrightSquares`` takes a letterboxed N×3×S×S batch in [0, 1] (the ``yolov8`` contract, mean 0,
std 1). Each anchor looks at a 32×32 window (stride 8): the box is the exact pixel extent of the
window's bright pixels (red channel > 0.5), found only when they do not touch the window's edge;
the score ``sigmoid((pixels - 60) / 6)``: a square of 10 px or more scores ~1, a 16 px square
shrunk five times (3 px) ~0. Class 0 ("white") when its pixels are also green, class 1 ("red")
otherwise. With ``masks``, the ``yolov8_seg`` contract: mask coefficients (1, 0, ...) and
prototype 0 ``20 (f - 0.5)``, f the bright fraction of each 4×4 cell.

``scene`` plants squares in a large black image and returns their true boxes.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tsvision.serving.runtimes import _TorchRuntime

SQUARE_LABELS = ["white", "red"]
WINDOW, STRIDE, PAD = 32, 8, 12  # S/8 anchors a side


class BrightSquares(nn.Module):
    def __init__(self, input_size: int, masks: int = 0) -> None:
        super().__init__()
        self.size, self.masks = input_size, masks
        grid = torch.arange(input_size, dtype=torch.float32)
        self.register_buffer("xs", grid.view(1, 1, 1, -1).expand(1, 1, input_size, input_size).clone())
        self.register_buffer("ys", grid.view(1, 1, -1, 1).expand(1, 1, input_size, input_size).clone())
        starts = torch.arange(input_size // STRIDE, dtype=torch.float32) * STRIDE - PAD  # each window's first pixel
        self.register_buffer("left", starts.view(1, 1, 1, -1))
        self.register_buffer("top", starts.view(1, 1, -1, 1))

    @staticmethod
    def _pool_max(values: torch.Tensor) -> torch.Tensor:
        """The window's maximum, one axis at a time (the same values, far fewer comparisons)."""
        rows = F.max_pool2d(values, (1, WINDOW), (1, STRIDE), (0, PAD))
        return F.max_pool2d(rows, (WINDOW, 1), (STRIDE, 1), (PAD, 0))

    @staticmethod
    def _pool_sum(values: torch.Tensor) -> torch.Tensor:
        """The window's sum (zero outside the image), one axis at a time."""
        rows = F.avg_pool2d(values, (1, WINDOW), (1, STRIDE), (0, PAD), count_include_pad=True)
        return F.avg_pool2d(rows, (WINDOW, 1), (STRIDE, 1), (PAD, 0), count_include_pad=True) * (WINDOW * WINDOW)

    def forward(self, images: torch.Tensor):
        bright = (images[:, 0:1] > 0.5).float()
        white = bright * (images[:, 1:2] > 0.5).float()
        pixels, whites = self._pool_sum(bright), self._pool_sum(white)
        big = float(self.size * 4)
        x1 = -self._pool_max(-(bright * self.xs + (1 - bright) * big))
        y1 = -self._pool_max(-(bright * self.ys + (1 - bright) * big))
        x2 = self._pool_max(bright * (self.xs + 1))
        y2 = self._pool_max(bright * (self.ys + 1))
        inside = ((x1 > self.left) & (y1 > self.top) & (x2 < self.left + WINDOW) & (y2 < self.top + WINDOW)).float()
        score = torch.sigmoid((pixels - 60) / 6) * inside
        share = whites / pixels.clamp_min(1)
        n = images.shape[0]
        rows = [(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1).clamp_min(0), (y2 - y1).clamp_min(0),
                score * share, score * (1 - share)]
        if self.masks:
            rows += [torch.ones_like(score)] + [torch.zeros_like(score)] * (self.masks - 1)
        output0 = torch.cat([r.reshape(n, 1, -1) for r in rows], dim=1)  # N×(4+2[+masks])×anchors
        if not self.masks:
            return output0
        cells = F.avg_pool2d(bright, 4)
        protos = torch.cat([(cells - 0.5) * 20, torch.zeros_like(cells).expand(n, self.masks - 1, -1, -1)], dim=1)
        return output0, protos


class ModuleRuntime(_TorchRuntime):
    """A torch module as a tsvision runtime, in-process (``run``; ``run_images`` for a model that
    takes a list of images, as the torchvision detectors)."""

    name = "eager"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(0, "cpu")
        self._module = module.eval()

    def _call(self, inputs):
        return self._module(inputs)


def scene(width: int, height: int, count: int, seed: int, spread: bool = True,
          sides: Tuple[int, int] = (10, 16)) -> Tuple[Image.Image, List[Tuple[List[float], int]]]:
    """A black ``width``×``height`` image with ``count`` squares (sides in ``sides``), white or red;
    with ``spread`` no two closer than 40 px (each one object), else anywhere (touching, clustered).
    Returns the image and each square's (box x1, y1, x2, y2 with x2/y2 exclusive, class index)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    planted: List[Tuple[List[float], int]] = []
    while len(planted) < count:
        side = int(rng.integers(sides[0], sides[1] + 1))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if spread and any(abs(x - b[0]) < 40 + side and abs(y - b[1]) < 40 + side for b, _ in planted):
            continue
        label = int(rng.integers(0, 2))
        pixels[y:y + side, x:x + side] = (255, 255, 255) if label == 0 else (255, 0, 0)
        planted.append(([float(x), float(y), float(x + side), float(y + side)], label))
    return Image.fromarray(pixels), planted
