"""Keypoint models whose right answer is known to the pixel: the bright rectangle of
``tests/scenes.py``, its four corners and its centre as keypoints, in the two keypoint contracts."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from tests.toy_models import BrightestBoxDetector

TOY_KEYPOINT_NAMES = ["top_left", "top_right", "bottom_right", "bottom_left", "centre"]
TOY_SKELETON = [[0, 1], [1, 2], [2, 3], [3, 0]]
TOY_VISIBILITY = [0.9, 0.8, 0.7, 0.6, 0.95]  # the yolov8_pose toy's per-keypoint scores
TOY_KEYPOINT_SCORES = [5.0, 4.0, 3.0, 2.0, 1.0]  # the Keypoint R-CNN toy's keypoints_scores
TOY_SCORE = 0.9


def corners_and_centre(x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """…×5×2: top-left, top-right, bottom-right, bottom-left, centre of boxes given edge by edge."""
    xs = torch.stack([x1, x2, x2, x1, (x1 + x2) / 2], dim=-1)
    ys = torch.stack([y1, y1, y2, y2, (y1 + y2) / 2], dim=-1)
    return torch.stack([xs, ys], dim=-1)


def true_keypoints(box: List[float]) -> List[List[float]]:
    """The truth for a scene's true box (x2/y2 exclusive): corners and centre, as the toys define them."""
    x1, y1, x2, y2 = box
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [(x1 + x2) / 2, (y1 + y2) / 2]]


class BrightRectangleKeypointRCNN(nn.Module):
    """Keypoint R-CNN's contract (``detection_format: torchvision``): a list of 3×H×W images in
    [0, 1] at their own size in; per image one detection (label 1, score 0.9, or 0 when nothing
    is brighter than 0.5): the box around the bright pixels (x2/y2 exclusive) in original pixels,
    its corners and centre as ``keypoints`` (x, y, 1) and ``keypoints_scores`` 5, 4, 3, 2, 1.
    Scripted it returns ``(losses, detections)`` as torchvision's detectors do; branch-free, so
    the ONNX trace of one image keeps working on any image."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("keypoint_scores", torch.tensor(TOY_KEYPOINT_SCORES))
        self.score = TOY_SCORE

    def forward(self, images: List[torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        detections: List[Dict[str, torch.Tensor]] = []
        for image in images:
            bright = image.mean(dim=0) > 0.5                       # H×W
            columns, rows = bright.any(dim=0), bright.any(dim=1)  # W, H
            xs = torch.arange(columns.shape[0], dtype=torch.float32, device=image.device)
            ys = torch.arange(rows.shape[0], dtype=torch.float32, device=image.device)
            # no shape constants: the ONNX trace keeps them
            x1 = torch.where(columns, xs, torch.full_like(xs, 1e9)).min()
            x2 = torch.where(columns, xs + 1, 0.0).max()
            y1 = torch.where(rows, ys, torch.full_like(ys, 1e9)).min()
            y2 = torch.where(rows, ys + 1, 0.0).max()
            found = columns.any().float()
            points = corners_and_centre(x1, y1, x2, y2)                          # 5×2
            keypoints = torch.cat([points, torch.ones(5, 1, device=image.device)], dim=1)[None]  # 1×5×3
            detections.append({"boxes": torch.stack([x1, y1, x2, y2])[None], "labels": torch.ones(1, dtype=torch.int64),
                               "scores": (found * self.score)[None], "keypoints": keypoints,
                               "keypoints_scores": self.keypoint_scores[None]})
        if torch.jit.is_scripting():
            return {}, detections
        return self.eager_outputs(detections)

    @torch.jit.unused
    def eager_outputs(self, detections):
        return detections  # eager torchvision detectors return the detections alone


class OneImage(nn.Module):
    """For the ONNX trace: one image in, the five outputs in torchvision's order out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        found = self.model([image])[0]
        return found["boxes"], found["labels"], found["scores"], found["keypoints"], found["keypoints_scores"]


class BrightRectanglePose(nn.Module):
    """YOLOv8-pose's contract (``detection_format: yolov8_pose``): N×3×S×S (letterboxed, /255) in,
    N×(4+1+3·5)×32 out: in slot 0 the bright rectangle's cx, cy, w, h and score 0.9 (0 when there
    is none), then its corners and centre as x, y (input pixels) and visibilities
    ``TOY_VISIBILITY``; the other slots are empty."""

    def __init__(self, input_size: int, slots: int = 32) -> None:
        super().__init__()
        self.box = BrightestBoxDetector(input_size)
        self.slots = slots
        self.register_buffer("visibility", torch.tensor(TOY_VISIBILITY))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        boxes, scores = self.box(images)
        x1, y1, x2, y2 = boxes[:, 0].unbind(-1)                                      # each N
        n = images.shape[0]
        points = corners_and_centre(x1, y1, x2, y2)                                   # N×5×2
        keypoints = torch.cat([points, self.visibility.expand(n, 5)[..., None]], dim=-1).reshape(n, 15)
        first = torch.cat([torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1),
                           scores[:, 0, 1:2] * TOY_SCORE, keypoints], dim=-1)         # N×20
        empty = torch.zeros(n, self.slots - 1, first.shape[-1], dtype=images.dtype, device=images.device)
        return torch.cat([first[:, None, :], empty], dim=1).transpose(1, 2)          # N×20×slots
