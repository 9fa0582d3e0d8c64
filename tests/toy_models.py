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
