"""Synthetic pictures whose right answer is known to the pixel, and real photos at chosen sizes."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

GEOMETRY_SIZES = [(333, 777), (777, 333), (1280, 720)]  # width × height


def bright_box_scene(width: int, height: int) -> Tuple[Image.Image, List[float]]:
    """A white rectangle at an odd place on dark noise, with a grey distractor.

    Returns the image and the true box ``[x1, y1, x2, y2]`` (x2/y2 exclusive, in pixels).
    """
    rng = np.random.default_rng(width * 7 + height)
    pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    x1, y1 = round(width * 0.31) + 1, round(height * 0.23) + 1
    x2, y2 = round(width * 0.77), round(height * 0.64)
    draw.rectangle([round(width * 0.05), round(height * 0.7), round(width * 0.25), round(height * 0.95)],
                   fill=(90, 90, 90))
    draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=(250, 250, 250))  # PIL's rectangle includes x2 - 1, y2 - 1
    return image, [float(x1), float(y1), float(x2), float(y2)]


def colour_scene(width: int, height: int) -> Tuple[Image.Image, np.ndarray]:
    """Red, green and blue shapes on black; returns the image and its true class mask
    (0 background, 1 red, 2 green, 3 blue)."""
    truth = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(truth)
    draw.rectangle([width * 0.1, height * 0.1, width * 0.45, height * 0.4], fill=1)
    draw.ellipse([width * 0.5, height * 0.2, width * 0.93, height * 0.55], fill=2)
    draw.polygon([(width * 0.2, height * 0.9), (width * 0.55, height * 0.6), (width * 0.8, height * 0.97)], fill=3)
    mask = np.asarray(truth)
    palette = np.array([[0, 0, 0], [230, 20, 20], [20, 230, 20], [20, 20, 230]], dtype=np.uint8)
    return Image.fromarray(palette[mask]), mask


# Real photos at sizes ultralytics' letterbox must resample (issue 24: 1280×720, 333×777, 900×420): a
# crop box of a scikit-image photo, resized to width × height. Chosen so that the random conditioned
# YOLOv8n/-seg (OBJECT_PHOTOS) and YOLOv8n-pose (PERSON_PHOTOS) exports find a few things on each.
OBJECT_PHOTOS = {(1280, 720): ("immunohistochemistry", (0, 112, 512, 400)),
                 (333, 777): ("immunohistochemistry", (0, 0, 219, 512)),
                 (900, 420): ("immunohistochemistry", (0, 273, 512, 512))}
PERSON_PHOTOS = {(1280, 720): ("immunohistochemistry", (0, 224, 512, 512)),
                 (333, 777): ("immunohistochemistry", (293, 0, 512, 512)),
                 (900, 420): ("page", (192, 50, 384, 140))}


def quadrant_scene(width: int = 128, height: int = 128) -> Image.Image:
    """Grey, with the top-left quadrant of the centre square (what a centre-cropping classifier
    sees) pure red: what the quadrant toy's class 0 reads (tests/toy_models.py)."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    pixels[top:top + side // 2, left:left + side // 2] = (255, 0, 0)
    return Image.fromarray(pixels)


def sized_photos(chosen: dict) -> dict:
    """``{"WxH": image}`` for ``OBJECT_PHOTOS`` or ``PERSON_PHOTOS``: each crop resized with PIL's bilinear filter."""
    import skimage.data

    return {f"{width}x{height}": Image.fromarray(getattr(skimage.data, name)()).convert("RGB").crop(box)
            .resize((width, height), Image.BILINEAR)
            for (width, height), (name, box) in chosen.items()}
