"""Large scenes for tiled segmentation whose right mask is known: for ``ColourSegmenter``
(tests/toy_models.py: a pure red, green or blue pixel is its class, black is background) a
black image with small pure-colour squares planted on it, and a large blue rectangle."""

from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image

COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}  # class index -> its pure colour


def planted_scene(width: int, height: int, side: int = 3, count: int = 40,
                  seed: int = 0) -> Tuple[Image.Image, np.ndarray]:
    """(the RGB image, its H×W class mask): ``count`` squares of ``side`` px in random colours at random
    places (a whole-image pass shrinking the image loses them) and one large blue rectangle."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    truth = np.zeros((height, width), dtype=np.uint8)
    top, left = height // 4, width // 3
    pixels[top:top + height // 5, left:left + width // 4] = COLOURS[3]
    truth[top:top + height // 5, left:left + width // 4] = 3
    for _ in range(count):
        y, x = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        index = int(rng.integers(1, 4))
        pixels[y:y + side, x:x + side] = COLOURS[index]
        truth[y:y + side, x:x + side] = index
    return Image.fromarray(pixels), truth
