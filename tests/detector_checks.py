"""References for the whole torchvision detectors (tests/slow/test_torchvision_detectors.py,
tests/e2e/test_served_detectors.py): the archived model file called directly, and the answer derived
from its raw outputs independently of the task's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tsvision.serving.tasks.torchvision_detection import to_chw_float


def answers_of(boxes, labels, scores, settings, labels_list, size):
    """What a detection answer must be, from raw model outputs (independent of the task's code)."""
    width, height = size
    rows = [(float(s), int(c), b) for b, c, s in zip(np.asarray(boxes), np.asarray(labels), np.asarray(scores))
            if s > settings["score_threshold"] and c != settings["background_index"]]
    rows.sort(key=lambda row: -row[0])
    return [{"label": labels_list[c], "index": c, "score": s,
             "box": [round(float(v), 2) for v in np.clip(b, 0, [width, height, width, height])]}
            for s, c, b in rows[: settings["max_detections"]]]


def direct(folder: Path, backend: str, image: Image.Image):
    """The archived model file called directly on the decoded image: boxes, labels, scores."""
    array = to_chw_float(np.asarray(image))
    if backend == "torchscript":
        module = torch.jit.load(str(folder / "model.pt")).eval()
        with torch.no_grad():
            _, found = module([torch.from_numpy(array)])
        return [found[0][k].numpy() for k in ("boxes", "labels", "scores")]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["boxes", "labels", "scores"], {"images": array})
