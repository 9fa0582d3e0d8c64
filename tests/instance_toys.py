"""Instance segmentation toys whose masks are known to the pixel (the bright rectangle of
``tests/scenes.py``), one per model contract (docs/models.md)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tests.toy_models import BrightestBoxDetector

TOY_INSTANCE_LABELS = ["background", "bright rectangle", "circle"]
PROTO_STRIDE = 4
YOLO_BOX_PAD = 8  # model-input pixels the yolov8_seg toy's box reaches beyond the rectangle


class BrightMaskRCNN(nn.Module):
    """The ``torchvision`` contract (a whole Mask R-CNN): a list of 3×H×W images in [0, 1]; per image
    one detection, label 1, score 1 when there are bright pixels (mean over channels > 0.5, else 0),
    its box around them (x2/y2 exclusive) and soft mask ``sigmoid(40 (brightness - 0.5))`` at the
    image's own size. Scripted it returns ``(losses, detections)``, eager the detections, as torchvision's."""

    @torch.jit.unused
    def eager_outputs(self, losses: Dict[str, torch.Tensor], detections: List[Dict[str, torch.Tensor]]):
        return detections

    def forward(self, images: List[torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        detections: List[Dict[str, torch.Tensor]] = []
        for image in images:
            brightness = image.mean(dim=0)                          # H×W
            bright = brightness > 0.5
            columns, rows = bright.any(dim=0), bright.any(dim=1)
            xs = torch.arange(brightness.shape[1], dtype=torch.float32, device=image.device)
            ys = torch.arange(brightness.shape[0], dtype=torch.float32, device=image.device)
            width, height = xs.shape[0] * 1.0, ys.shape[0] * 1.0
            x1 = torch.where(columns, xs, torch.full_like(xs, width)).amin()
            x2 = torch.where(columns, xs + 1, torch.zeros_like(xs)).amax()
            y1 = torch.where(rows, ys, torch.full_like(ys, height)).amin()
            y2 = torch.where(rows, ys + 1, torch.zeros_like(ys)).amax()
            found = columns.any().float()
            detections.append({
                "boxes": torch.stack([x1, y1, x2, y2])[None],
                "labels": torch.ones(1, dtype=torch.int64, device=image.device),
                "scores": found[None],
                "masks": torch.sigmoid((brightness - 0.5) * 40)[None, None],
            })
        losses: Dict[str, torch.Tensor] = {}
        if torch.jit.is_scripting():
            return losses, detections
        return self.eager_outputs(losses, detections)


class BrightMaskYoloSeg(nn.Module):
    """The ``yolov8_seg`` contract: a letterboxed N×3×S×S batch in [0, 1] -> ``output0`` N×(4+3+32)×8
    and ``protos`` N×32×(S/4)×(S/4). Slot 0 holds the bright rectangle's box grown by ``YOLO_BOX_PAD``
    pixels, class 1 at 0.95 and mask coefficients (1, 0, ..., 0); the other slots are empty. Prototype 0
    is ``20 (f - 0.5)``, f the fraction of each 4×4 cell brighter than 0.3: the rectangle AND the grey
    distractor beside it (0.35), so the distractor is left out only by the crop to the box."""

    def __init__(self, input_size: int, slots: int = 8, masks: int = 32) -> None:
        super().__init__()
        self.box = BrightestBoxDetector(input_size)
        self.size, self.slots, self.masks = float(input_size), slots, masks
        self.register_buffer("grow", torch.tensor([-1.0, -1.0, 1.0, 1.0]) * YOLO_BOX_PAD)

    def forward(self, images: torch.Tensor):
        boxes, scores = self.box(images)
        x1, y1, x2, y2 = (boxes[:, 0] + self.grow).clamp_min(0.0).clamp_max(self.size).unbind(-1)
        found = scores[:, 0, 1]
        n = images.shape[0]
        cxcywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
        classes = torch.stack([found * 0.01, found * 0.95, found * 0.02], dim=-1)
        coefficients = torch.cat([found[:, None], torch.zeros(n, self.masks - 1, dtype=images.dtype)], dim=-1)
        first = torch.cat([cxcywh, classes, coefficients], dim=-1)                        # N×F
        empty = torch.zeros(n, self.slots - 1, first.shape[-1], dtype=images.dtype)
        output0 = torch.cat([first[:, None, :], empty], dim=1).transpose(1, 2)          # N×F×slots
        lit = (images.mean(dim=1, keepdim=True) > 0.3).float()
        fraction = F.avg_pool2d(lit, PROTO_STRIDE)
        protos = torch.cat([(fraction - 0.5) * 20, torch.zeros_like(fraction).expand(n, self.masks - 1, -1, -1)], dim=1)
        return output0, protos
