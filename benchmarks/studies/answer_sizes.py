"""Instance segmentation answer sizes: tsvision's COCO RLE and polygons against the stock approach
(the soft masks as float lists in JSON, ``masks.tolist()``, as TorchServe's Mask R-CNN example and
stock-handler-based services send them; pytorch/serve#769, #2849).

    .venv/bin/python -m benchmarks.studies.answer_sizes [--instances 20] [--width 1280] [--height 720]

The masks are synthetic and seeded: ``instances`` ellipses of assorted sizes, each a Mask R-CNN-style
soft mask (float32 in [0, 1], blurred edges, zero elsewhere) at the image size. Prints a markdown
table: bytes of the JSON answer, the time to build it (encode / ``tolist``) and ``json.dumps`` time,
each the best of ``--repeat`` runs (the stock one once: it takes seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from typing import Callable, List, Tuple

import numpy as np

from tsvision.serving.masks import encode_rle, polygons


def soft_masks(instances: int, width: int, height: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """N×1×H×W float32 soft masks (ellipses with a 3-pixel soft edge) and their N×4 boxes."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    masks = np.zeros((instances, 1, height, width), dtype=np.float32)
    boxes = np.zeros((instances, 4), dtype=np.float32)
    for i in range(instances):
        rx, ry = rng.uniform(0.03, 0.2) * width, rng.uniform(0.05, 0.3) * height
        cx, cy = rng.uniform(rx, width - rx), rng.uniform(ry, height - ry)
        distance = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)  # 1 on the ellipse
        masks[i, 0] = np.clip((1 - distance) * min(rx, ry) / 3 + 0.5, 0, 1)
        boxes[i] = [cx - rx, cy - ry, cx + rx, cy + ry]
    return masks, boxes


def _best(function: Callable[[], object], repeat: int) -> Tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best * 1000, result


def measure(instances: int = 20, width: int = 1280, height: int = 720, repeat: int = 3,
            threshold: float = 0.5) -> List[dict]:
    """One row per encoding: name, bytes, build ms, json.dumps ms."""
    masks, boxes = soft_masks(instances, width, height)
    base = [{"label": "person", "index": 1, "score": 0.9, "box": [round(float(v), 2) for v in box]} for box in boxes]

    def ours(encode):
        return [{**entry, "mask": encode(mask[0] > threshold)} for entry, mask in zip(base, masks)]

    def int_lists():
        return [{**e, "mask": (m[0] > threshold).astype(np.uint8).tolist()} for e, m in zip(base, masks)]

    def float_lists():
        return {"boxes": boxes.tolist(), "masks": masks.tolist()}

    rows = []
    for name, build, times in (
        ("tsvision RLE (default)", partial(ours, encode_rle), repeat),
        ("tsvision polygons", partial(ours, polygons), repeat),
        ("stock: thresholded 0/1 masks as int lists", int_lists, 1),
        ("stock: soft masks as float lists (masks.tolist())", float_lists, 1),
    ):
        build_ms, answer = _best(build, times)
        dumps_ms, text = _best(partial(json.dumps, answer), times)
        rows.append({"answer": name, "bytes": len(text), "build_ms": build_ms, "dumps_ms": dumps_ms})
        del answer, text
    return rows


def table(rows: List[dict]) -> str:
    stock = rows[-1]
    lines = ["| answer | JSON bytes | vs float lists | build ms | json.dumps ms | build + dumps vs float lists |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        total = row["build_ms"] + row["dumps_ms"]
        size = f"{stock['bytes'] / row['bytes']:,.0f}× smaller" if row is not stock else "(reference)"
        speed = f"{(stock['build_ms'] + stock['dumps_ms']) / total:,.1f}× faster" if row is not stock else "(reference)"
        lines.append(f"| {row['answer']} | {row['bytes']:,} | {size} | {row['build_ms']:,.1f} | "
                     f"{row['dumps_ms']:,.1f} | {speed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.instances} instances on a {args.width}×{args.height} image:\n")
    print(table(measure(args.instances, args.width, args.height, args.repeat)))


if __name__ == "__main__":
    main()
