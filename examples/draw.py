"""Pictures of answers: a top-k bar chart, boxes on the photo, a coloured class mask over the photo.

    python -m examples.draw --task detection --answer answer.json --image photo.jpg --out out.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tsvision.serving.images import decode_image
from tsvision.serving.tasks.segmentation import decode_png

PathLike = Union[str, Path]


def palette(n: int = 256) -> np.ndarray:
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
    return colours


def draw_classification(answer: List[dict], path: PathLike, title: Optional[str] = None) -> None:
    """Horizontal bar chart of the top-k scores, best at the top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 0.5 * len(answer) + 1.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = [f"{item['label']} ({item['index']})" for item in answer]
    scores = [item["score"] for item in answer]
    bars = axes.barh(names[::-1], scores[::-1], color="tab:blue")
    axes.bar_label(bars, labels=[f"{s:.2%}" for s in scores[::-1]], padding=3)
    axes.set_xlim(0, min(1.0, 1.25 * max(scores, default=1.0)) or 1.0)  # room for the labels; never past 1
    axes.set_xlabel("score")
    axes.set_title(title or f"top {len(answer)} classes")
    figure.savefig(path, dpi=100)


def draw_detection(image: Image.Image, answer: List[dict], path: PathLike) -> None:
    """Each box with its "label score" on the photo; one colour per class."""
    picture = image.convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 200))
    font = ImageFont.load_default(size=max(12, round(min(picture.size) / 40)))
    colours = palette()
    for det in sorted(answer, key=lambda d: d["score"]):  # best drawn last, on top
        colour = tuple(int(c) for c in colours[det["index"] % len(colours)])
        x1, y1, x2, y2 = det["box"]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{det['label']} {det['score']:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 4 if y1 >= bottom - top + 4 else y1 + width  # above the box if it fits
        pen.rectangle((x1, ty, x1 + right - left + 4, ty + bottom - top + 4), fill=colour)
        pen.text((x1 + 2 - left, ty + 2 - top), text, fill="white", font=font)
    picture.save(path)


def draw_segmentation(image: Image.Image, answer: dict, path: PathLike, alpha: float = 0.5,
                      background: Optional[int] = 0, legend: bool = True) -> None:
    """The class mask coloured with ``palette()`` and blended over the photo at ``alpha``.

    Pixels of the ``background`` class keep the photo. With ``legend``, a strip right of the
    photo lists the present classes with their colours and fractions; the photo area is unchanged.
    """
    mask = decode_png(answer["mask"])
    if image.size != (mask.shape[1], mask.shape[0]):
        raise ValueError(f"the image is {image.size[0]}x{image.size[1]} but the mask is {mask.shape[1]}x{mask.shape[0]}; "
                         "pass the image that was sent (EXIF rotation applied)")
    colours = palette(max(256, int(mask.max()) + 1))
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * photo + alpha * colours[mask].astype(np.float32)
    if background is not None:
        blended[mask == background] = photo[mask == background]
    picture = Image.fromarray(np.round(blended).astype(np.uint8))
    if legend:
        picture = _with_legend(picture, [c for c in answer["classes"] if c["index"] != background], colours)
    picture.save(path)


def _with_legend(picture: Image.Image, classes: List[dict], colours: np.ndarray) -> Image.Image:
    font = ImageFont.load_default(size=14)
    line, strip = 20, 200
    canvas = Image.new("RGB", (picture.width + strip, max(picture.height, line * len(classes) + 10)), "white")
    canvas.paste(picture, (0, 0))
    pen = ImageDraw.Draw(canvas)
    for row, item in enumerate(sorted(classes, key=lambda c: -c["fraction"])):
        x, y = picture.width + 8, 6 + row * line
        pen.rectangle((x, y, x + 14, y + 14), fill=tuple(int(c) for c in colours[item["index"]]), outline="black")
        pen.text((x + 20, y), f"{item['label']} {100 * item['fraction']:.1f}%", fill="black", font=font)
    return canvas


def draw(task: str, answer, out: PathLike, image: Union[bytes, Image.Image, None] = None) -> None:
    """Draw ``answer`` of ``task``; ``image`` (the bytes sent, or a decoded image) is needed for detection and segmentation."""
    if task == "classification":
        draw_classification(answer, out)
        return
    if image is None:
        raise ValueError(f"drawing a {task} answer needs the image that was sent")
    if isinstance(image, (bytes, bytearray)):
        image = decode_image(bytes(image))  # same decoding as the server, EXIF rotation included
    if task == "detection":
        draw_detection(image, answer, out)
    elif task == "segmentation":
        draw_segmentation(image, answer, out)
    else:
        raise ValueError(f"unknown task {task!r}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.draw", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=("classification", "segmentation", "detection"))
    p.add_argument("--answer", required=True, help="the JSON answer file ('-' for stdin)")
    p.add_argument("--image", type=Path, help="the image that was sent (needed for detection and segmentation)")
    p.add_argument("--out", required=True, type=Path, help="PNG (or JPEG) file to write")
    args = p.parse_args(argv)
    if args.task != "classification" and args.image is None:
        p.error(f"--image is needed to draw a {args.task} answer")
    answer = json.load(sys.stdin if args.answer == "-" else open(args.answer))
    draw(args.task, answer, args.out, args.image.read_bytes() if args.image else None)
    print(f"saved {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
