"""Semantic segmentation: a class-index mask at the original resolution, as base64 PNG,
with per-class pixel counts and fractions."""

from __future__ import annotations

import base64
import io
import math
from typing import List

import numpy as np
from PIL import Image

from handlers.geometry import Placement, fit_square, mean_fill
from handlers.task import VisionTask


class SegmentationTask(VisionTask):
    def prepare(self, image: Image.Image):
        return fit_square(image, self.settings.input_size, self.settings.resize_mode, mean_fill(self.settings.mean))

    def headline(self, answer: dict) -> str:
        return max(answer["classes"], key=lambda c: c["pixels"])["label"] if answer["classes"] else ""

    def finish(self, outputs: List[np.ndarray], placement: Placement) -> dict:
        mask = upsample_argmax(outputs[0], placement)
        counts = np.bincount(mask.reshape(-1), minlength=1)
        total = mask.size
        classes = [
            {"index": int(i), "label": self.label(int(i)), "pixels": int(n), "fraction": round(float(n) / total, 6)}
            for i, n in enumerate(counts)
            if n
        ]
        return {"width": placement.width, "height": placement.height, "mask": encode_png(mask), "classes": classes}


def upsample_argmax(logits: np.ndarray, placement: Placement) -> np.ndarray:
    """C×h×w logits over the model input -> H×W class indices over the original image.

    The part of the output that covers the image (not the padding) is resized bilinearly to
    the original size before the argmax, so mask edges are placed to the original pixel.
    """
    import torch
    import torch.nn.functional as F

    _, out_h, out_w = logits.shape
    rows = min(out_h, math.ceil(placement.content_height * out_h / placement.input_size))
    cols = min(out_w, math.ceil(placement.content_width * out_w / placement.input_size))
    with torch.inference_mode():
        region = torch.from_numpy(np.ascontiguousarray(logits[:, :rows, :cols]))[None].float()
        full = F.interpolate(region, size=(placement.height, placement.width), mode="bilinear", align_corners=False)
        return full[0].argmax(0).to(torch.int32).numpy()


def encode_png(mask: np.ndarray) -> str:
    """Class-index mask -> base64 PNG: 8-bit grey up to 256 classes, 16-bit beyond."""
    if mask.max(initial=0) < 256:
        image = Image.fromarray(mask.astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(mask.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    """Inverse of ``encode_png``, for clients and tests."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
