"""Answers as objects: what a task's ``finish`` returns for one image.

A result holds arrays in the ORIGINAL image's pixels (boxes, scores, classes, masks, keypoints;
the class probabilities of a classification, the class-index mask of a segmentation), the names
it needs (labels, the skeleton) and the request's settings that shape its answer (``mask_format``).
It serialises itself (``to_json``: the JSON-ready answer, byte for byte what the tasks answered
before results were objects) and draws itself on the already decoded image (``draw``), from its
arrays: nothing is decoded twice, and instance and class masks keep their holes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, List, Sequence

import numpy as np
from PIL import Image

from tsvision.serving.drawing import (
    draw_classification,
    draw_detection,
    draw_instances,
    draw_keypoints,
    draw_segmentation,
)
from tsvision.serving.errors import RequestError
from tsvision.serving.masks import encode_class_png, encode_mask
from tsvision.serving.settings import label_for


def detection_entry(label: str, index: int, score: float, box: np.ndarray) -> dict:
    """One detection of an answer: ``{"label", "index", "score", "box"}``, box rounded to 0.01 px."""
    return {"label": label, "index": index, "score": float(score), "box": [round(float(v), 2) for v in box]}


def keypoint_rows(points: np.ndarray) -> List[List[float]]:
    """K×3 (x, y, score) -> JSON rows, coordinates to 0.01 px, scores to 4 decimals."""
    return [[round(float(x), 2), round(float(y), 2), round(float(score), 4)] for x, y, score in points]


@dataclass
class Result:
    """One image's answer before it is JSON. ``labels`` name the class indices."""

    labels: Sequence[str]

    def label(self, index: int) -> str:
        return label_for(self.labels, int(index))

    def to_json(self) -> Any:
        """The JSON-ready answer."""
        raise NotImplementedError

    def draw(self, image: Image.Image) -> Image.Image:
        """The answer drawn on the decoded image (``Accept: image/png``)."""
        raise NotImplementedError(f"{type(self).__name__} draws no pictures")


@dataclass
class Classification(Result):
    """The top-k classes, best first: their ``indices`` and probabilities ``scores``."""

    indices: np.ndarray
    scores: np.ndarray

    def to_json(self) -> list:
        return [{"label": self.label(i), "index": int(i), "score": float(s)} for i, s in zip(self.indices, self.scores)]

    def draw(self, image: Image.Image) -> Image.Image:
        return draw_classification(image, self.to_json())


@dataclass
class Detections(Result):
    """K kept detections, best first: ``boxes`` K×4 (x1, y1, x2, y2, original pixels), ``scores``, ``classes``."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def entries(self) -> List[dict]:
        """``{"label", "index", "score", "box"}`` per detection."""
        return [detection_entry(self.label(c), int(c), score, box)
                for c, score, box in zip(self.classes, self.scores, self.boxes)]

    def to_json(self) -> list:
        return self.entries()

    def draw(self, image: Image.Image) -> Image.Image:
        return draw_detection(image, self.entries())


@dataclass
class Keypoints(Detections):
    """Persons: detections plus ``points`` K×P×3 (x, y, score; original pixels), drawn with the
    ``skeleton`` (index pairs); a keypoint is drawn when its score is above ``visible``."""

    points: np.ndarray
    skeleton: Sequence[Sequence[int]] = ()
    visible: float = 0.5

    def to_json(self) -> list:
        return [{**entry, "keypoints": keypoint_rows(person)} for entry, person in zip(self.entries(), self.points)]

    def draw(self, image: Image.Image) -> Image.Image:
        return draw_keypoints(image, self.to_json(), self.skeleton, self.visible)


@dataclass
class Instances(Detections):
    """Instances: detections plus ``masks`` K×H×W booleans at the original size, answered in
    ``mask_format`` (rle, polygon or png) and drawn from the arrays (holes kept)."""

    masks: np.ndarray
    mask_format: str = "rle"

    def to_json(self) -> list:
        return [{**entry, "mask": encode_mask(mask, self.mask_format)}
                for entry, mask in zip(self.entries(), self.masks)]

    def draw(self, image: Image.Image) -> Image.Image:
        return draw_instances(image, self.entries(), list(self.masks))


@dataclass
class Segmentation(Result):
    """The ``mask`` of class indices (H×W, original size), answered as a class-index PNG or, with
    ``mask_format`` rle / polygon, one mask per present class; drawn from the array."""

    mask: np.ndarray
    mask_format: str = "png"

    def classes(self) -> List[dict]:
        """``{"index", "label", "pixels", "fraction"}`` per class present, by index."""
        counts = np.bincount(self.mask.reshape(-1), minlength=1)
        total = self.mask.size
        return [{"index": int(i), "label": self.label(i), "pixels": int(n), "fraction": round(float(n) / total, 6)}
                for i, n in enumerate(counts) if n]

    def to_json(self) -> dict:
        height, width = (int(n) for n in self.mask.shape)
        classes = self.classes()
        if self.mask_format == "png":
            return {"width": width, "height": height, "mask": encode_class_png(self.mask), "classes": classes}
        for entry in classes:
            entry["mask"] = encode_mask(self.mask == entry["index"], self.mask_format)
        return {"width": width, "height": height, "classes": classes}

    def draw(self, image: Image.Image) -> Image.Image:
        return draw_segmentation(image, self.mask, self.classes())


@dataclass
class Embedding(Result):
    """One image's L2-normalised ``vector`` (float32), answered in ``embedding_format``: ``json`` a list
    of numbers; ``base64_float32`` / ``base64_float16`` ``{"embedding": base64, "dtype", "dim",
    "byte_order": "little"}``, the vector's little-endian bytes (numpy: ``np.frombuffer(raw, "<f4")``)."""

    vector: np.ndarray
    embedding_format: str = "json"

    def to_json(self) -> Any:
        if self.embedding_format == "json":
            return [float(v) for v in self.vector]
        dtype = self.embedding_format.rpartition("_")[2]  # float32 or float16
        raw = self.vector.astype("<f4" if dtype == "float32" else "<f2").tobytes()
        return {"embedding": base64.b64encode(raw).decode("ascii"), "dtype": dtype, "dim": int(self.vector.size),
                "byte_order": "little"}

    def draw(self, image: Image.Image) -> Image.Image:
        raise no_picture()


def no_picture() -> RequestError:
    """The 400 of a picture asked of an embedding."""
    return RequestError(400, "BadOption", "option 'format': the embedding task draws no pictures; ask for JSON")
