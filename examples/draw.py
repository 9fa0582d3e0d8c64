"""Draw a saved JSON answer offline with the server's own drawing code (``tsvision.serving.drawing``).

    python -m examples.draw --task detection --answer answer.json --image photo.jpg --out out.png

To get the picture from the server instead, ask for it: ``Accept: image/png`` (``examples.client --draw``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Union

from PIL import Image

from tsvision.serving import drawing
from tsvision.serving.images import decode_image
from tsvision.serving.tasks.instance_segmentation import draw_answer as draw_instances
from tsvision.serving.tasks.keypoints import COCO_SKELETON
from tsvision.serving.tasks.segmentation import class_mask

TASKS = ("classification", "segmentation", "detection", "instance_segmentation", "keypoints")


def picture(task: str, answer, image: Union[bytes, Image.Image], skeleton=COCO_SKELETON,
            visible: float = 0.5) -> Image.Image:
    """``answer`` of ``task`` drawn on ``image`` (the bytes sent, or a decoded image), as the server
    draws it. Keypoints: ``skeleton`` is the model's (its describe answer has it), ``visible`` 0.5 for
    YOLO-pose visibilities, 0 for Keypoint R-CNN's logits."""
    if isinstance(image, (bytes, bytearray)):
        image = decode_image(bytes(image))  # same decoding as the server, EXIF rotation included
    if task == "classification":
        return drawing.draw_classification(image, answer)
    if task == "detection":
        return drawing.draw_detection(image, answer)
    if task == "segmentation":
        return drawing.draw_segmentation(image, class_mask(answer), answer["classes"])
    if task == "instance_segmentation":
        return draw_instances(image, answer)
    if task == "keypoints":
        return drawing.draw_keypoints(image, answer, skeleton, visible)
    raise ValueError(f"unknown task {task!r}")


def draw(task: str, answer, out: Union[str, Path], image: Union[bytes, Image.Image]) -> None:
    """Save ``picture(task, answer, image)`` to ``out`` (PNG, or JPEG by its suffix)."""
    picture(task, answer, image).save(out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.draw", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--answer", required=True, help="the JSON answer file ('-' for stdin)")
    p.add_argument("--image", required=True, type=Path, help="the image that was sent")
    p.add_argument("--out", required=True, type=Path, help="PNG (or JPEG) file to write")
    args = p.parse_args(argv)
    answer = json.load(sys.stdin if args.answer == "-" else open(args.answer))
    draw(args.task, answer, args.out, args.image.read_bytes())
    print(f"saved {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
