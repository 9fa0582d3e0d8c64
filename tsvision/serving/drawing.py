"""Answers drawn for people: a top-k bar chart beside the photo, boxes with labels and scores,
a coloured class mask with a legend, instance masks under their boxes, keypoint skeletons.
PIL and numpy only (this ships in every archive).

The photo keeps its original resolution; text and line widths scale with it. Colours are stable
per class index: ``BOX_COLOURS`` for boxes, bars and instance masks, ``voc_palette`` for class
masks; a skeleton's limbs and points take ``BOX_COLOURS`` by edge and keypoint index. The server draws
with these (``Accept: image/png``), and so do the examples and the demo.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Colour = Tuple[int, int, int]
# Twenty well separated bright colours (ultralytics' palette), by class index modulo 20.
BOX_COLOURS: List[Colour] = [tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in (  # type: ignore[misc]
    "FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
    "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7")]
PICTURE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


def box_colour(index: int) -> Colour:
    """The colour of class ``index``'s boxes and bars."""
    return BOX_COLOURS[int(index) % len(BOX_COLOURS)]


@lru_cache(maxsize=4)
def voc_palette(n: int = 256) -> np.ndarray:
    """n×3 uint8 colours, the PASCAL VOC colour map: 0 black, 1 dark red, 2 green, 3 olive..."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        value, r, g, b = index, 0, 0, 0
        for bit in range(7, -1, -1):
            r |= (value & 1) << bit
            g |= ((value >> 1) & 1) << bit
            b |= ((value >> 2) & 1) << bit
            value >>= 3
        colours[index] = (r, g, b)
    colours.setflags(write=False)
    return colours


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` pixels."""
    return ImageFont.load_default(size=max(8, int(size)))


def text_size(image_size: Tuple[int, int]) -> int:
    """A readable font size for a picture of this size: 1/40 of its shorter side, at least 12 px."""
    return max(12, round(min(image_size) / 40))


def _text_colour(background: Sequence[int]) -> Colour:
    """Black or white, whichever reads better on ``background``."""
    r, g, b = background[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def box_canvas(image: Image.Image) -> Tuple[Image.Image, ImageDraw.ImageDraw, int, ImageFont.ImageFont]:
    """What drawing boxes starts from: an RGB copy of the photo, a pen on it, the line width (1/200 of
    the shorter side, at least 2 px) and the label font (``text_size``)."""
    picture = image.convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 200))
    face = font(text_size(picture.size))
    return picture, pen, width, face


def draw_detection(image: Image.Image, answer: Sequence[dict]) -> Image.Image:
    """Each box with "label score" on a copy of the photo; best drawn last (on top)."""
    picture, pen, width, face = box_canvas(image)
    for det in sorted(answer, key=lambda d: d["score"]):
        colour = box_colour(det["index"])
        x1, y1, x2, y2 = det["box"]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{det['label']} {det['score']:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=face)
        height = bottom - top + 4
        ty = y1 - height if y1 >= height else y1 + width  # above the box if it fits, else inside
        pen.rectangle((x1, ty, x1 + right - left + 4, ty + height), fill=colour)
        pen.text((x1 + 2 - left, ty + 2 - top), text, fill=_text_colour(colour), font=face)
    return picture


def draw_instances(image: Image.Image, answer: Sequence[dict], masks: Sequence[np.ndarray],
                   alpha: float = 0.45) -> Image.Image:
    """Each instance's mask (H×W booleans, one per answer entry) blended in its class colour,
    worst first so the best lies on top, then the boxes and labels of ``draw_detection``."""
    photo = image.convert("RGB")
    pixels = np.asarray(photo, dtype=np.float32).copy()
    for det, mask in sorted(zip(answer, masks), key=lambda pair: pair[0]["score"]):
        if mask.shape != pixels.shape[:2]:
            raise ValueError(f"the image is {photo.width}x{photo.height} but a mask is {mask.shape[1]}x{mask.shape[0]}")
        pixels[mask] = (1 - alpha) * pixels[mask] + alpha * np.asarray(box_colour(det["index"]), dtype=np.float32)
    return draw_detection(Image.fromarray(np.round(pixels).astype(np.uint8)), answer)


def draw_keypoints(image: Image.Image, answer: Sequence[dict], skeleton: Sequence[Sequence[int]],
                   visible: float = 0.5) -> Image.Image:
    """Each person's box, then its skeleton: limb ``e`` in colour ``e``, keypoint ``k`` as a dot in
    colour ``k``. Only keypoints scoring above ``visible`` are drawn, and limbs between two of them."""
    picture = draw_detection(image, answer)
    pen = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 150))
    radius = width + 1
    for det in answer:
        points = det.get("keypoints") or []
        shown = [len(p) == 3 and p[2] > visible for p in points]
        for edge, (a, b) in enumerate(skeleton):
            if a < len(points) and b < len(points) and shown[a] and shown[b]:
                pen.line((points[a][0], points[a][1], points[b][0], points[b][1]), fill=box_colour(edge), width=width)
        for k, (x, y, _) in enumerate(points):
            if shown[k]:
                pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=box_colour(k),
                            outline=(255, 255, 255))
    return picture


def draw_classification(image: Image.Image, answer: Sequence[dict]) -> Image.Image:
    """The photo with the top-k scores as a horizontal bar chart beside it, best at the top."""
    photo = image.convert("RGB")
    size = max(14, round(photo.height / max(12, 2.2 * (len(answer) + 1))))
    face = font(size)
    panel = max(round(0.75 * photo.height), 24 * size)
    row = round(size * 2.0)
    height = max(photo.height, row * (len(answer) + 1) + size)
    canvas = Image.new("RGB", (photo.width + panel, height), "white")
    canvas.paste(photo, (0, 0))
    pen = ImageDraw.Draw(canvas)
    left, margin = photo.width + size, size
    pen.text((left, margin // 2), f"top {len(answer)}", fill=(0, 0, 0), font=face)
    full = panel - 2 * size
    for rank, item in enumerate(answer):
        y = margin // 2 + row * (rank + 1)
        length = max(1, round(full * min(1.0, max(0.0, float(item["score"])))))
        colour = box_colour(item["index"])
        pen.rectangle((left, y, left + length, y + row - 4), fill=colour)
        text = f"{item['label']} {100 * item['score']:.1f}%"
        ink = _text_colour(colour) if length > full // 2 else (0, 0, 0)
        pen.text((left + 4, y + (row - 4 - size) // 2), text, fill=ink, font=face)
    return canvas


def draw_segmentation(image: Image.Image, mask: np.ndarray, classes: Sequence[dict], alpha: float = 0.5,
                      background: Optional[int] = 0) -> Image.Image:
    """The class mask coloured with ``voc_palette`` over the photo at ``alpha``, with a legend
    strip to the right (present classes, colour and share); ``background`` pixels keep the photo."""
    photo = image.convert("RGB")
    if photo.size != (mask.shape[1], mask.shape[0]):
        raise ValueError(f"the image is {photo.width}x{photo.height} but the mask is {mask.shape[1]}x{mask.shape[0]}")
    colours = voc_palette(max(256, int(mask.max(initial=0)) + 1))
    pixels = np.asarray(photo, dtype=np.float32)
    blended = (1 - alpha) * pixels + alpha * colours[mask].astype(np.float32)
    if background is not None:
        keep = mask == background
        blended[keep] = pixels[keep]
    overlay = Image.fromarray(np.round(blended).astype(np.uint8))
    shown = sorted((c for c in classes if c["index"] != background), key=lambda c: -c["fraction"])
    size = text_size(photo.size)
    face = font(size)
    line = round(size * 1.5)
    strip = 16 * size
    canvas = Image.new("RGB", (photo.width + strip, max(photo.height, line * len(shown) + size)), "white")
    canvas.paste(overlay, (0, 0))
    pen = ImageDraw.Draw(canvas)
    for rank, item in enumerate(shown):
        x, y = photo.width + size // 2, size // 2 + rank * line
        pen.rectangle((x, y, x + size, y + size), fill=tuple(int(c) for c in colours[item["index"]]), outline=(0, 0, 0))
        text = f"{item['label']} {100 * item['fraction']:.1f}%"
        pen.text((x + round(1.4 * size), y), text, fill=(0, 0, 0), font=face)
    return canvas


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in 0..1 -> uint8 RGB of the "hot" colour map: black, red, yellow, white."""
    v = np.clip(values, 0.0, 1.0)[..., None] * 3.0 - np.arange(3, dtype=np.float32)
    return np.round(255 * np.clip(v, 0.0, 1.0)).astype(np.uint8)


def draw_heatmap(image: Image.Image, heat: np.ndarray, box: Optional[Sequence[float]] = None,
                 alpha: float = 0.7) -> Image.Image:
    """A saliency grid (rows×columns, 0..1, over the whole photo) smoothed to the photo's size and
    blended over it, more opaque where hotter (``alpha`` at the peak); ``box``, the part the model
    saw, outlined when it is not the whole photo."""
    photo = image.convert("RGB")
    grid = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    smooth = np.clip(np.asarray(grid.resize(photo.size, Image.BILINEAR)), 0.0, 1.0)[..., None]
    pixels = np.asarray(photo, dtype=np.float32)
    blended = (1 - alpha * smooth) * pixels + alpha * smooth * heat_colours(smooth[..., 0]).astype(np.float32)
    picture = Image.fromarray(np.round(blended).astype(np.uint8))
    if box is not None and (box[0] > 0.5 or box[1] > 0.5 or box[2] < photo.width - 0.5 or box[3] < photo.height - 0.5):
        ImageDraw.Draw(picture).rectangle(tuple(round(v) for v in box), outline=(255, 255, 255),
                                          width=max(1, round(min(photo.size) / 300)))
    return picture


def encode(picture: Image.Image, media_type: str = "image/png") -> bytes:
    """The picture as PNG or JPEG bytes (fast settings: this runs per request)."""
    buffer = io.BytesIO()
    if PICTURE_FORMATS[media_type] == "PNG":
        picture.save(buffer, format="PNG", compress_level=1)
    else:
        picture.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
