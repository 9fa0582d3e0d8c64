"""``yolov8_obb`` on hand-built model outputs whose right answer is known exactly: corners and angle
in original pixels, rotated NMS (a rotated duplicate goes, a crossing box whose axis-aligned box is
the same stays), class-aware and agnostic, the format's settings, class count, export map and drawing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tests.helpers import FixedOutputs
from tsvision.serving import formats
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import task_class

LABELS = ["plane", "ship", "tank"]
ANCHORS = 16
# Each box in model-input pixels: (cx, cy, w, h, angle, class, score). The image is 1280×640, letterboxed
# (centred) into 640: scale 1/2, the content 640×320 from y = 160. Original = (x * 2, (y - 160) * 2).
BOXES = {
    "diagonal": (200, 300, 200, 10, math.pi / 4, 1, 0.9),
    "duplicate": (202, 301, 200, 10, math.pi / 4 + 0.01, 1, 0.8),   # the diagonal, nudged: suppressed
    "crossing": (200, 300, 200, 10, -math.pi / 4, 1, 0.85),         # same axis-aligned box, rotated apart: kept
    "level": (450, 350, 80, 40, 0.0, 2, 0.7),
    "level_other_class": (452, 350, 80, 40, 0.0, 0, 0.6),           # kept per class, suppressed agnostic
    "faint": (500, 200, 30, 30, 0.3, 0, 0.2),                       # under the 0.25 default threshold
}


def raw_output() -> np.ndarray:
    """(4 + 3 + 1)×16 in the yolov8_obb layout: the boxes above, every other score 0.01."""
    raw = np.zeros((4 + len(LABELS) + 1, ANCHORS), dtype=np.float32)
    raw[4:4 + len(LABELS)] = 0.01
    for anchor, (cx, cy, w, h, angle, cls, score) in enumerate(BOXES.values()):
        raw[:4, anchor] = cx, cy, w, h
        raw[4 + cls, anchor] = score
        raw[-1, anchor] = angle
    return raw


def expected_corners(cx, cy, w, h, angle):
    """The rectangle's corners in original pixels: the centre plus the half-sides rotated by ``angle``,
    in the order (+w, +h), (+w, -h), (-w, -h), (-w, +h) of the box's own axes."""
    ox, oy, ow, oh = cx * 2, (cy - 160) * 2, w * 2, h * 2
    cos, sin = math.cos(angle), math.sin(angle)
    return [[ox + sw * ow / 2 * cos - sh * oh / 2 * sin, oy + sw * ow / 2 * sin + sh * oh / 2 * cos]
            for sw, sh in ((1, 1), (1, -1), (-1, -1), (-1, 1))]


def run(**overrides) -> list:
    settings = Settings.from_mapping({"task": "detection", "detection_format": "yolov8_obb", **overrides})
    task = task_class(settings)(FixedOutputs(raw_output()), settings, LABELS)
    return task.run([Image.new("RGB", (1280, 640))])[0]


def test_corners_angle_and_box_in_original_pixels():
    answer = run()
    assert [(d["label"], d["index"]) for d in answer] == [("ship", 1), ("ship", 1), ("tank", 2), ("plane", 0)]
    assert [d["score"] for d in answer] == pytest.approx([0.9, 0.85, 0.7, 0.6])
    for entry, name in zip(answer, ("diagonal", "crossing", "level", "level_other_class")):
        cx, cy, w, h, angle, _, _ = BOXES[name]
        corners = expected_corners(cx, cy, w, h, angle)
        assert np.allclose(entry["corners"], corners, atol=0.01), (name, entry["corners"], corners)
        assert entry["angle"] == pytest.approx(angle, abs=1e-4)
        xs, ys = [x for x, _ in corners], [y for _, y in corners]
        assert np.allclose(entry["box"], [min(xs), min(ys), max(xs), max(ys)], atol=0.01), name
    # the level box, written out: centre (900, 380), 160×80
    assert answer[2]["corners"] == [[980, 420], [980, 340], [820, 340], [820, 420]]
    assert answer[2]["box"] == [820, 340, 980, 420]


def test_rotated_nms_as_ultralytics():
    """The duplicate (ProbIoU 0.89 with the diagonal) is suppressed; the crossing box (0.05) stays
    although its axis-aligned box is the diagonal's; the two level boxes (0.97) suppress each other
    only when agnostic; ``classes`` filters before NMS."""
    assert [d["score"] for d in run()] == pytest.approx([0.9, 0.85, 0.7, 0.6])
    assert [d["score"] for d in run(agnostic_nms=True)] == pytest.approx([0.9, 0.85, 0.7])
    assert [d["score"] for d in run(agnostic_nms=True, classes=[0])] == pytest.approx([0.6])
    assert [d["score"] for d in run(iou_threshold=0.9)] == pytest.approx([0.9, 0.85, 0.8, 0.7, 0.6])
    assert [d["score"] for d in run(iou_threshold=0.9, agnostic_nms=True, classes=[0, 2])] == pytest.approx([0.7])
    assert [d["score"] for d in run(max_detections=2)] == pytest.approx([0.9, 0.85])


def test_probiou_of_known_boxes():
    """ProbIoU: 1 for the same box, 0 far apart, and low for two thin boxes crossing at right angles."""
    import torch

    from tsvision.serving.formats.yolo_obb import probiou

    boxes = torch.tensor([[0, 0, 200, 10, math.pi / 4], [0, 0, 200, 10, -math.pi / 4], [0, 0, 200, 10, math.pi / 4],
                          [5000, 0, 200, 10, 0.0]])
    iou = probiou(boxes, boxes)
    assert float(iou[0, 2]) == pytest.approx(1.0, abs=1e-3)
    assert float(iou[0, 3]) == pytest.approx(0.0, abs=1e-3)
    # crossing: covariances sum to (a + b)·I, so the distance is ½ ln((a + b)² / 4ab) with a = w²/12, b = h²/12
    a, b = 200 ** 2 / 12, 10 ** 2 / 12
    distance = 0.5 * math.log((a + b) ** 2 / (4 * a * b))
    assert float(iou[0, 1]) == pytest.approx(1 - math.sqrt(1 - math.exp(-distance)), abs=1e-3)


def test_settings_class_count_and_export_map():
    settings = Settings.from_mapping({"task": "detection", "detection_format": "yolov8_obb"})
    assert (settings.input_size, settings.resize_mode, settings.score_threshold, settings.iou_threshold) == \
        (640, "letterbox_center", 0.25, 0.7)
    assert settings.mean == (0.0, 0.0, 0.0) and settings.std == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="background_index applies"):
        Settings.from_mapping({"task": "detection", "detection_format": "yolov8_obb", "background_index": 0})
    with pytest.raises(ValueError, match="task keypoints needs detection_format"):
        Settings.from_mapping({"task": "keypoints", "detection_format": "yolov8_obb"})
    assert formats.class_count("yolov8_obb", [np.zeros((4 + 15 + 1, 8400))])[0] == 15
    assert formats.guess_format([(1, 20, 8400)]) == "yolov8"  # the same shapes as yolov8's: never guessed
    assert formats.ultralytics_tasks()["obb"] == ("detection", "yolov8_obb")
    from tsvision.tools.export.ultralytics_models import settings_from_metadata

    assert settings_from_metadata({"task": "obb", "imgsz": "[640, 640]"}) == \
        {"task": "detection", "detection_format": "yolov8_obb", "input_size": 640}


def test_labels_must_fit_the_class_count():
    from tsvision.serving.tasks.base import LabelCountError

    settings = Settings.from_mapping({"task": "detection", "detection_format": "yolov8_obb", "input_size": 64})
    task = task_class(settings)(FixedOutputs(np.zeros((4 + 3 + 1, 100), np.float32)), settings, ["a", "b"])
    with pytest.raises(LabelCountError, match="names 2 classes, but the model has 3"):
        task.warm_up()


def test_drawn_as_rotated_boxes():
    """A diamond's edges are drawn, not the axis-aligned box around it."""
    settings = Settings.from_mapping({"task": "detection", "detection_format": "yolov8_obb"})
    task = task_class(settings)(FixedOutputs(raw_output()), settings, LABELS)
    diamond = {"label": "ship", "index": 1, "score": 0.9, "box": [50, 50, 150, 150], "angle": math.pi / 4,
               "corners": [[100, 50], [150, 100], [100, 150], [50, 100]]}
    picture = np.asarray(task.draw(Image.new("RGB", (200, 200)), [diamond]))
    assert picture[75, 125].any() and picture[125, 75].any()  # on two edges (row, column)
    assert not picture[52, 52].any() and not picture[148, 148].any()  # the enclosing box's corners
    assert not picture[100, 100].any()  # inside: outlined, not filled
