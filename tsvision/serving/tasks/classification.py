"""Classification: centre crop in, top-k ``{"label", "index", "score"}`` out."""

from __future__ import annotations

from typing import List, Optional

import numpy as np
from PIL import Image

from tsvision.serving.drawing import draw_classification
from tsvision.serving.geometry import resize_center_crop
from tsvision.serving.ops import shape_text
from tsvision.serving.results import Classification
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.base import ClassCount, VisionTask


class ClassificationTask(VisionTask):
    name = "classification"
    options = ("top_k",)
    default_micro_batch = 4  # served 0.79 -> 0.95 of in-process at 32 clients on 2 cores (docs/performance.md)
    default_streams = 2  # served at 16 clients: ONNX 229.4 -> 244.6, TorchScript 116.9 -> 205.8 req/s (performance.md)

    def prepare(self, image: Image.Image, settings: Optional[Settings] = None):
        s = settings or self.settings
        return resize_center_crop(image, s.resize_size, s.input_size, s.interpolation), None

    @property
    def draft(self):
        """With ``decode_draft``: a JPEG decoded no smaller than the preset's resize needs (shorter side
        ``resize_size``); the crop is then taken from it as from the full image."""
        if not self.settings.decode_draft:
            return None
        side = self.settings.resize_size
        return lambda width, height: (-(-width * side // min(width, height)), -(-height * side // min(width, height)))

    def class_count(self, outputs: List[np.ndarray]) -> ClassCount:
        return outputs[0].size, f"{self.settings.output} {shape_text(outputs[0])}"

    def headline(self, answer: list) -> str:
        return answer[0]["label"] if answer else ""

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_classification(image, answer)

    def finish(self, outputs: List[np.ndarray], meta, settings: Optional[Settings] = None) -> Classification:
        s = settings or self.settings
        scores = outputs[0].astype(np.float64).reshape(-1)
        if s.output == "logits":
            scores = np.exp(scores - scores.max())
            scores /= scores.sum()
        top = np.argsort(-scores, kind="stable")[:min(s.top_k, scores.size)]
        return Classification(self.labels, top, scores[top])
