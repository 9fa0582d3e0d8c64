"""Object detection: ``{"label", "index", "score", "box": [x1, y1, x2, y2]}`` in the pixels
of the original image.

Model contract: outputs ``boxes`` N×A×4 (x1, y1, x2, y2 in model-input pixels) and
``scores`` N×A×C (per-class probabilities). Thresholding, class-aware NMS and the mapping
back to the original image happen here, so one exported graph serves any image size.
"""

from __future__ import annotations

from typing import List

import numpy as np
from PIL import Image

from tsvision.serving.geometry import Placement, fit_square, mean_fill
from tsvision.serving.tasks.base import VisionTask


class DetectionTask(VisionTask):
    name = "detection"

    def prepare(self, image: Image.Image):
        return fit_square(image, self.settings.input_size, self.settings.resize_mode, mean_fill(self.settings.mean))

    def headline(self, answer: list) -> str:
        return answer[0]["label"] if answer else ""

    def finish(self, outputs: List[np.ndarray], placement: Placement) -> list:
        import torch
        from torchvision.ops import batched_nms

        s = self.settings
        boxes, scores = outputs[0], outputs[1]
        if s.background_index is not None:  # "no object" is never a detection
            scores = scores.copy()
            scores[:, s.background_index] = 0.0
        anchor_ids, class_ids = np.nonzero(scores > s.score_threshold)
        candidate_scores = scores[anchor_ids, class_ids]
        if candidate_scores.size > s.pre_nms_top_k:
            best = np.argpartition(-candidate_scores, s.pre_nms_top_k)[: s.pre_nms_top_k]
            anchor_ids, class_ids, candidate_scores = anchor_ids[best], class_ids[best], candidate_scores[best]
        if candidate_scores.size == 0:
            return []
        with torch.inference_mode():
            keep = batched_nms(
                torch.from_numpy(np.ascontiguousarray(boxes[anchor_ids], dtype=np.float32)),
                torch.from_numpy(candidate_scores.astype(np.float32)),
                torch.from_numpy(class_ids),
                s.iou_threshold,
            )[: s.max_detections].numpy()
        mapped = placement.boxes_to_original(boxes[anchor_ids[keep]])
        return [
            {
                "label": self.label(int(c)),
                "index": int(c),
                "score": float(score),
                "box": [round(float(v), 2) for v in box],
            }
            for c, score, box in zip(class_ids[keep], candidate_scores[keep], mapped)
        ]
