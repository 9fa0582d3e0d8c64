"""Small models whose right answer is known exactly, for testing geometry end to end.

Both take an un-normalised image (settings mean 0, std 1, so pixels arrive in [0, 1]) and
follow the same tensor contracts as the exported torchvision models.
"""

from __future__ import annotations

import torch
from torch import nn

TOY_DETECTION_LABELS = ["background", "bright rectangle"]
TOY_SEGMENTATION_LABELS = ["background", "red", "green", "blue"]


class BrightestBoxDetector(nn.Module):
    """One box around the pixels brighter than 0.5, score 1 if there are any.

    Outputs ``boxes`` N×1×4 (model-input pixels, x2/y2 exclusive) and ``scores`` N×1×2
    (column 0 background).
    """

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.register_buffer("index", torch.arange(input_size, dtype=torch.float32))
        self.size = float(input_size)

    def forward(self, images: torch.Tensor):
        bright = (images.mean(dim=1) > 0.5).float()          # N×H×W
        columns = bright.amax(dim=1) > 0                     # N×W
        rows = bright.amax(dim=2) > 0                        # N×H
        x1 = torch.where(columns, self.index, self.size).amin(dim=1)
        x2 = torch.where(columns, self.index + 1, 0.0).amax(dim=1)
        y1 = torch.where(rows, self.index, self.size).amin(dim=1)
        y2 = torch.where(rows, self.index + 1, 0.0).amax(dim=1)
        found = columns.float().amax(dim=1)
        boxes = torch.stack([x1, y1, x2, y2], dim=-1)[:, None, :]
        scores = torch.stack([1 - found, found], dim=-1)[:, None, :]
        return boxes, scores


class ColourSegmenter(nn.Module):
    """Per-pixel logits: background 0.5, red/green/blue the channel's value. A pure colour
    wins its class, black is background; logits are smooth, so resized edges stay in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            for channel in range(3):
                self.conv.weight[channel + 1, channel] = 1.0
            self.conv.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


TOY_FORMAT_CLASSES = 3   # the format toys score class 1 (0.95) and leave the others near zero
TOY_FORMAT_LABELS = ["square", "bright rectangle", "circle"]


class BrightestBoxInFormat(nn.Module):
    """``BrightestBoxDetector``'s box (and whether there is one) in a detector family's layout
    (``detection_format``, docs/models.md), among ``slots`` candidates of which the others are empty."""

    def __init__(self, fmt: str, input_size: int, slots: int = 8) -> None:
        super().__init__()
        self.fmt, self.slots, self.size = fmt, slots, float(input_size)
        self.box = BrightestBoxDetector(input_size)

    def forward(self, images: torch.Tensor):
        boxes, scores = self.box(images)
        x1, y1, x2, y2 = boxes[:, 0].unbind(-1)                      # each N
        found = scores[:, 0, 1]                                         # N, 1.0 or 0.0
        n = images.shape[0]
        cxcywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)   # N×4
        classes = torch.stack([found * 0.01, found * 0.95, found * 0.02], dim=-1)       # N×C
        empty = torch.zeros(n, self.slots - 1, 1, dtype=images.dtype, device=images.device)

        def with_empty_slots(first: torch.Tensor) -> torch.Tensor:      # N×F -> N×slots×F
            return torch.cat([first[:, None, :], empty.expand(n, self.slots - 1, first.shape[-1])], dim=1)

        if self.fmt == "yolov8":       # N×(4+C)×A
            return with_empty_slots(torch.cat([cxcywh, classes], dim=-1)).transpose(1, 2)
        if self.fmt == "yolov5":       # N×A×(5+C), score = objectness × class
            return with_empty_slots(torch.cat([cxcywh, found[:, None], classes], dim=-1))
        if self.fmt == "yolo_nms":     # N×K×6
            return with_empty_slots(torch.cat([boxes[:, 0], classes[:, 1:2], found[:, None]], dim=-1))
        if self.fmt == "rtdetr":       # N×Q×(4+C), normalised to the input
            return with_empty_slots(torch.cat([cxcywh / self.size, classes], dim=-1))
        if self.fmt == "detr":         # pred_logits N×Q×(C+1) (last: no object), pred_boxes N×Q×4 normalised
            logits = torch.stack([found * 0, found * 9, found * 0, (1 - found) * 9], dim=-1)
            no_object = torch.tensor([0.0, 0.0, 0.0, 9.0], dtype=images.dtype).expand(n, self.slots - 1, 4)
            return torch.cat([logits[:, None, :], no_object], dim=1), with_empty_slots(cxcywh / self.size)
        raise ValueError(self.fmt)


TOY_TAG_LABELS = ["red", "green", "blue"]
TOY_TAG_GAIN = 20.0  # logit of a tag: gain × (the channel's mean over the image - 0.5)


class ColourTagger(nn.Module):
    """Multi-label toy: one logit per colour channel, ``TOY_TAG_GAIN × (channel mean - 0.5)`` on the
    un-normalised image (mean 0, std 1): a red+blue image scores red and blue near 1, green near 0;
    the sigmoid of each logit is known from the pixel values alone."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return TOY_TAG_GAIN * (images.mean(dim=(2, 3)) - 0.5)


QUADRANT_LABELS = ["red corner", "green corner", "blue floor"]
QUADRANT_SETTINGS = {"task": "classification", "input_size": 64, "resize_size": 64, "mean": [0, 0, 0],
                     "std": [1, 1, 1], "output": "logits", "labels": "labels.json", "top_k": 3}


class QuadrantClassifier(nn.Module):
    """Three logits that each read one known region of the model input (pixels in [0, 1]): the
    top-left quadrant's red, the top-right quadrant's green, the bottom half's blue (means, ×8).
    An explanation of class 0 must point at the top-left quadrant, of class 1 at the top-right one."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half_h, half_w = images.shape[-2] // 2, images.shape[-1] // 2
        red = images[:, 0, :half_h, :half_w].mean(dim=(1, 2))
        green = images[:, 1, :half_h, half_w:].mean(dim=(1, 2))
        blue = images[:, 2, half_h:, :].mean(dim=(1, 2))
        return 8 * torch.stack([red, green, blue], dim=1)
