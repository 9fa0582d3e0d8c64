"""Embeddings: centre crop in, one L2-normalised vector out (a JSON list, base64 float32/float16,
or over the Open Inference Protocol an FP32 tensor of every image's vector)."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
from PIL import Image

from tsvision.serving.errors import RequestError
from tsvision.serving.geometry import resize_center_crop
from tsvision.serving.results import Embedding, no_picture
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.base import VisionTask

V2_OUTPUT = "embeddings"  # the Open Inference Protocol output: FP32, shape [images, dimensions]


class EmbeddingTask(VisionTask):
    """The model's output for one image (any shape: flattened) is its embedding, divided by its
    L2 norm; ``embedding_format`` (a setting and a per-request option) says how it is written."""

    name = "embedding"
    options = ("embedding_format",)

    def prepare(self, image: Image.Image, settings: Optional[Settings] = None):
        s = settings or self.settings
        return resize_center_crop(image, s.resize_size, s.input_size, s.interpolation), None

    def finish(self, outputs: List[np.ndarray], meta, settings: Optional[Settings] = None) -> Embedding:
        s = settings or self.settings
        vector = outputs[0].astype(np.float64).reshape(-1)
        if not np.all(np.isfinite(vector)):
            raise RequestError(500, "PostprocessError", "the model's output for this image is not finite")
        norm = np.linalg.norm(vector)
        return Embedding(self.labels, (vector / norm if norm > 0 else vector).astype(np.float32), s.embedding_format)

    def headline(self, answer: Any) -> str:
        return ""

    def draw_answer(self, image: Image.Image, answer: Any) -> Image.Image:
        raise no_picture()

    def v2_tensor(self, answers: Sequence[Any]) -> Optional[dict]:
        """Every image's vector as one FP32 ``[images, dimensions]`` output, when all are JSON lists of
        one length (``embedding_format: json``); else None (the usual BYTES ``answers``)."""
        if not answers or not all(isinstance(a, list) for a in answers) or len({len(a) for a in answers}) != 1:
            return None
        return {"name": V2_OUTPUT, "datatype": "FP32", "shape": [len(answers), len(answers[0])],
                "data": [float(v) for answer in answers for v in answer]}
