"""Keypoints (pose): each person is a detection plus ``"keypoints": [[x, y, score], ...]`` in the
pixels of the original image, in the order of the model's keypoint names.

Two model contracts (``detection_format``, docs/models.md "Keypoints"):

- ``yolov8_pose`` (ultralytics YOLOv8/YOLO11-pose ONNX): one output N×(4+1+3K)×A: box cx, cy,
  w, h and the person score (sigmoid), then K × (x, y, visibility) with x, y in model-input
  pixels and the visibility already a sigmoid. Decoded and suppressed like ``yolov8``
  (``DetectionTask``), the kept persons' keypoints mapped back through the letterbox as
  ultralytics' ``scale_coords`` does. A keypoint's score is its visibility.
- ``torchvision`` (Keypoint R-CNN, scripted, or its one-image ONNX export): per image
  ``boxes``, ``labels``, ``scores``, ``keypoints`` N×K×3 (x, y, visibility=1, original pixels)
  and ``keypoints_scores`` N×K, in any order; as ``TorchvisionDetectionTask`` (images at their
  own size, one model call per group of equal sizes). A keypoint's score is torchvision's
  ``keypoints_scores``: the heatmap logit at the point (unbounded, not a probability).

The keypoint names (``keypoint_names``, default COCO's 17) and the skeleton's edges
(``skeleton``, 0-based index pairs, default COCO's 19) are the model's metadata: the handler's
describe answer and the archive's settings carry them (``keypoint_metadata``), not each answer.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from tsvision.serving.drawing import draw_keypoints
from tsvision.serving.formats import Candidates
from tsvision.serving.geometry import Placement, normalize
from tsvision.serving.results import Keypoints, keypoint_rows  # noqa: F401 (keypoint_rows: its old home)
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.detection import DetectionTask
from tsvision.serving.tasks.torchvision_detection import TorchvisionDetectionTask, run_by_size

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO's person skeleton (annotations' "skeleton", there 1-based), 0-based here.
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))


def keypoint_names(settings: Settings) -> Tuple[str, ...]:
    return settings.keypoint_names if settings.keypoint_names is not None else COCO_KEYPOINT_NAMES


def keypoint_metadata(settings: Settings) -> dict:
    """What a client needs to read and draw the keypoints: their names by index and the edges."""
    edges = (settings.skeleton if settings.skeleton is not None
             else (COCO_SKELETON if settings.keypoint_names is None else ()))
    return {"names": list(keypoint_names(settings)), "skeleton": [list(edge) for edge in edges]}


def named_keypoints(count: int) -> dict:
    """``keypoint_names`` and ``skeleton`` settings written at export for a model of ``count``
    keypoints: COCO's for 17, else the indices as names and no edges."""
    if count == len(COCO_KEYPOINT_NAMES):
        return {"keypoint_names": list(COCO_KEYPOINT_NAMES), "skeleton": [list(edge) for edge in COCO_SKELETON]}
    return {"keypoint_names": [str(i) for i in range(count)], "skeleton": []}


def check_keypoint_count(settings: Settings, count: int) -> None:
    """The model gives ``count`` keypoints per person: the names and skeleton must fit."""
    names = keypoint_names(settings)
    if count != len(names):
        given = "COCO's, the default" if settings.keypoint_names is None else "keypoint_names"
        raise ValueError(f"the model gives {count} keypoints per person but there are {len(names)} keypoint names "
                         f"({given}); set keypoint_names to {count} names (and skeleton to pairs of their indices)")
    bad = [edge for edge in keypoint_metadata(settings)["skeleton"] if not all(0 <= i < count for i in edge)]
    if bad:
        raise ValueError(f"skeleton edges {bad} name keypoints outside 0..{count - 1}")




class KeypointsTask(DetectionTask):
    """YOLOv8-pose (``detection_format: yolov8_pose``): letterboxed batches, NMS here."""

    name = "keypoints"
    default_micro_batch = 0  # not measured for this task: serial unless set
    default_streams = 1  # not measured either: one run at a time unless set
    visible_score = 0.5  # a keypoint is drawn when its visibility (a probability) is above this

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_keypoints(image, answer, keypoint_metadata(self.settings)["skeleton"], self.visible_score)

    def decode(self, outputs: List[np.ndarray], placement: Placement, settings: Settings) -> Candidates:
        """The format's candidates, ``extra`` their K×3 keypoints; K must fit the keypoint names."""
        found = super().decode(outputs, placement, settings)
        check_keypoint_count(settings, found.extra.shape[1])
        return found

    def finish(self, outputs: List[np.ndarray], placement: Placement, settings: Optional[Settings] = None) -> Keypoints:
        s = settings or self.settings
        found, boxes = self.detect(outputs, placement, s)
        points = placement.points_to_original(found.extra) if len(boxes) else np.zeros((0, 0, 3))
        return Keypoints(self.labels, boxes, found.scores, found.classes, points,
                         keypoint_metadata(s)["skeleton"], self.visible_score)

    def warm_up(self, batch_size: int = 2, rounds: int = 2) -> None:
        """As ``DetectionTask``, and refuse to load when the keypoint count does not fit the names."""
        s = self.settings
        blank = normalize(np.zeros((batch_size, s.input_size, s.input_size, 3), dtype=np.uint8), s.mean, s.std)
        for _ in range(rounds):
            outputs = self.runtime.run(blank)
        side = s.input_size
        self.decode([o[0] for o in outputs], Placement(side, side, side, side, side), s)
        self.check_labels([o[0] for o in outputs])


def split_torchvision_outputs(outputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    """Keypoint R-CNN's five outputs by what they are, whatever their order (TorchScript gives them
    sorted by name, an ONNX export in its own order): labels are the 1-d integers, scores the 1-d
    floats, keypoints the 3-d array; of the 2-d ones, boxes come first (in every order torchvision
    and tsvision write), then keypoints_scores."""
    arrays = [np.asarray(o) for o in outputs]
    found: Dict[str, np.ndarray] = {}
    for array in arrays:
        if array.ndim == 1:
            found["labels" if np.issubdtype(array.dtype, np.integer) else "scores"] = array
        elif array.ndim == 3:
            found["keypoints"] = array
        elif array.ndim == 2:
            found["keypoints_scores" if "boxes" in found else "boxes"] = array
    expected = ("boxes", "labels", "scores", "keypoints", "keypoints_scores")
    if len(arrays) != 5 or sorted(found) != sorted(expected) or found["boxes"].shape[-1] != 4 \
            or found["keypoints"].shape[-1] != 3 or found["keypoints"].shape[:2] != found["keypoints_scores"].shape:
        shapes = ", ".join(f"{a.dtype}[{'×'.join(str(d) for d in a.shape)}]" for a in arrays)
        raise ValueError(f"detection_format 'torchvision' for keypoints expects per image boxes N×4, labels N "
                         f"(integers), scores N, keypoints N×K×3 and keypoints_scores N×K; the model gives {shapes}")
    return found


class TorchvisionKeypointsTask(TorchvisionDetectionTask):
    """Keypoint R-CNN (``detection_format: torchvision``): each image at its own size."""

    name = "keypoints"
    visible_score = 0.0  # torchvision's keypoint scores are logits: above 0 is a probability above 0.5

    def draw_answer(self, image: Image.Image, answer: list) -> Image.Image:
        return draw_keypoints(image, answer, keypoint_metadata(self.settings)["skeleton"], self.visible_score)

    def finish(self, outputs: List[np.ndarray], size: Tuple[int, int],
               settings: Optional[Settings] = None) -> Keypoints:
        s = settings or self.settings
        found = split_torchvision_outputs(outputs)
        check_keypoint_count(s, found["keypoints"].shape[1])
        kept, boxes = self.select(found["boxes"], found["labels"], found["scores"], size, s)
        width, height = size
        points = found["keypoints"][kept].astype(np.float64)
        points[..., 0] = np.clip(points[..., 0], 0, width)
        points[..., 1] = np.clip(points[..., 1], 0, height)
        points[..., 2] = found["keypoints_scores"][kept]
        return Keypoints(self.labels, boxes, found["scores"][kept], found["labels"][kept], points,
                         keypoint_metadata(s)["skeleton"], self.visible_score)

    def warm_up(self, batch_size: int = 2, rounds: int = 2) -> None:
        """As ``TorchvisionDetectionTask``, and refuse to load when the keypoint count does not fit the names."""
        blank = [np.zeros((3, 240, 320), dtype=np.float32), np.zeros((3, 320, 240), dtype=np.float32)]
        for _ in range(rounds):
            outputs = run_by_size(self.runtime, blank[:batch_size])[0]
        check_keypoint_count(self.settings, split_torchvision_outputs(outputs)["keypoints"].shape[1])
