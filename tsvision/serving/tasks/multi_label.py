"""Multi-label classification: sigmoid scores, every label at or above its threshold, best first."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from tsvision.serving.ops import sigmoid
from tsvision.serving.results import Classification
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.base import Runtime
from tsvision.serving.tasks.classification import ClassificationTask


class MultiLabelClassificationTask(ClassificationTask):
    """``multi_label: true``: each class scored alone (``output: logits`` -> sigmoid; ``probabilities``
    as they are), answered when its score reaches its threshold: ``class_thresholds`` names some
    classes' own, the rest use ``score_threshold`` (a request's own replaces it for those classes;
    the per-class thresholds are the archive's calibration and stay). ``top_k`` caps the answer at
    the k best labels that pass."""

    options = ("top_k", "score_threshold")

    def __init__(self, runtime: Runtime, settings: Settings, labels: Sequence[str] = (), workers: int = 1) -> None:
        super().__init__(runtime, settings, labels, workers)
        self.thresholds = class_threshold_indices(settings.class_thresholds or {}, self.labels)

    def finish(self, outputs: List[np.ndarray], meta, settings: Optional[Settings] = None) -> Classification:
        s = settings or self.settings
        scores = outputs[0].astype(np.float64).reshape(-1)
        if s.output == "logits":
            scores = sigmoid(scores)
        thresholds = np.full(scores.size, s.score_threshold)
        for index, value in self.thresholds.items():
            if index < scores.size:
                thresholds[index] = value
        passed = np.flatnonzero(scores >= thresholds)
        order = passed[np.argsort(-scores[passed], kind="stable")][:s.top_k]
        return Classification(self.labels, order, scores[order])


def class_threshold_indices(thresholds: dict, labels: Sequence[str]) -> dict:
    """``class_thresholds`` keyed by class index: a key is a label name, else a class index
    (``"3"``); an unknown name, or an index past the labels, raises ``ValueError``."""
    names = {name: index for index, name in reversed(list(enumerate(labels)))}
    found = {}
    for key, value in thresholds.items():
        if key in names:
            found[names[key]] = value
        elif key.isdigit() and (not labels or int(key) < len(labels)):
            found[int(key)] = value
        else:
            known = ", ".join(list(labels)[:20]) + (" ..." if len(labels) > 20 else "")
            raise ValueError(f"class_thresholds names {key!r}, which is neither a label ({known or 'no labels'}) "
                             f"nor a class index 0..{max(len(labels) - 1, 0)}")
    return found
