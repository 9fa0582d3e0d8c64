"""Detector output layouts (``detection_format``): toy models whose answer is known exactly,
in each family's layout, exported by the project's export code (once per session: tests/conftest.py
``format_exports``), run in-process (issue 14); served live: tests/e2e/test_served_formats.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import BACKENDS, FORMAT_SETTINGS, SCENES, FixedOutputs, assert_box_on_rectangle, png
from tests.helpers import FORMAT_OUTPUTS as OUTPUT_NAMES
from tests.helpers import FORMAT_SIZE as SIZE
from tests.scenes import bright_box_scene
from tests.toy_models import TOY_FORMAT_LABELS
from tsvision.serving.formats import guess_format
from tsvision.serving.geometry import Placement, fit_square
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task
from tsvision.serving.tasks.detection import DetectionTask
from tsvision.tools.archive.cli import main as archive_main


def format_task(root: Path, fmt: str, backend: str = "onnx", **overrides) -> DetectionTask:
    values = {"task": "detection", "detection_format": fmt, "labels": "labels.json", **FORMAT_SETTINGS[fmt],
              **overrides}
    return build_task(root / fmt / BACKENDS[backend], Settings.from_mapping(values), root / fmt)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("fmt", list(OUTPUT_NAMES))
def test_box_lands_on_the_rectangle(format_exports, fmt, backend):
    task = format_task(format_exports, fmt, backend)
    expected_mode = "stretch" if fmt == "detr" else "letterbox_center"
    assert task.settings.resize_mode == expected_mode and task.settings.background_index is None
    scenes = [bright_box_scene(w, h) for w, h in SCENES]
    answers = task.run([png(image) for image, _ in scenes])  # lossless: the truth is exact
    for (image, truth), answer in zip(scenes, answers):
        assert_box_on_rectangle(answer, truth, fmt, image.size)
        assert answer[0]["index"] == 1 and answer[0]["score"] > 0.9


@pytest.mark.parametrize("fmt", list(OUTPUT_NAMES))
def test_mixed_sizes_in_one_batch_equal_one_by_one(format_exports, fmt):
    task = format_task(format_exports, fmt)
    data = [png(bright_box_scene(w, h)[0]) for w, h in SCENES + [(777, 333), (41, 333)]]
    batched = task.run(data)
    assert batched == [task.run([item])[0] for item in data]


def test_letterbox_center_matches_ultralytics_arithmetic():
    """ultralytics LetterBox(auto=False): new size round(side × r); pads round(pad/2 ∓ 0.1)."""
    array, placement = fit_square(Image.new("RGB", (1280, 720), (255, 255, 255)), 640, "letterbox_center",
                                  (114, 114, 114))
    assert placement == Placement(1280, 720, 640, 360, 640, 0, 140)
    assert (array[:140] == 114).all() and (array[500:] == 114).all() and (array[140:500] == 255).all()
    mapped = placement.boxes_to_original(np.array([[0, 140, 640, 500]], dtype=np.float32))
    assert mapped.tolist() == [[0, 0, 1280, 720]]
    _, odd = fit_square(Image.new("RGB", (333, 777)), 320, "letterbox_center", (114, 114, 114))
    assert (odd.content_width, odd.offset_x, odd.offset_y) == (137, 91, 0)  # pad 183: 91 left, 92 right


def two_overlapping_boxes_of_different_classes() -> np.ndarray:
    """yolov8 layout, (4+3)×16: a box of class 0 (0.9) and one of class 2 (0.8) overlapping at IoU 0.90."""
    raw = np.zeros((7, 16), dtype=np.float32)
    raw[:, 0] = [100, 100, 100, 100, 0.9, 0.0, 0.0]
    raw[:, 1] = [105, 100, 100, 100, 0.0, 0.0, 0.8]
    return raw


@pytest.mark.parametrize("agnostic, expected", [(False, [0, 2]), (True, [0])])
def test_agnostic_nms_suppresses_across_classes(agnostic, expected):
    settings = Settings.from_mapping({"task": "detection", "detection_format": "yolov8", "input_size": 320,
                                      "agnostic_nms": agnostic})
    task = DetectionTask(FixedOutputs(two_overlapping_boxes_of_different_classes()), settings, TOY_FORMAT_LABELS)
    answer = task.run([Image.new("RGB", (320, 320))])[0]
    assert [d["index"] for d in answer] == expected


def test_yolo_nms_output_is_not_suppressed_again():
    rows = np.zeros((5, 6), dtype=np.float32)
    rows[0] = [10, 10, 110, 110, 0.9, 0]
    rows[1] = [12, 10, 112, 110, 0.8, 0]    # overlaps row 0, same class: the model kept both
    rows[2] = [0, 0, 50, 50, 0.3, 1]        # under the threshold
    settings = Settings.from_mapping({"task": "detection", "detection_format": "yolo_nms", "input_size": 320,
                                      "score_threshold": 0.5, "max_detections": 5})
    answer = DetectionTask(FixedOutputs(rows), settings).run([Image.new("RGB", (320, 320))])[0]
    assert [d["score"] for d in answer] == pytest.approx([0.9, 0.8])


def test_settings_are_validated():
    with pytest.raises(ValueError, match="detection_format must be one of"):
        Settings.from_mapping({"task": "detection", "detection_format": "yolov9000"})
    with pytest.raises(ValueError, match="background_index applies to detection_formats .'ssd', 'torchvision'. only"):
        Settings.from_mapping({"task": "detection", "detection_format": "yolov8", "background_index": 0})
    with pytest.raises(ValueError, match="letterbox_center"):
        Settings.from_mapping({"task": "segmentation", "resize_mode": "letterbox_center"})


@pytest.mark.parametrize("shapes, expected", [
    ([(1, 84, 8400)], "yolov8"), ([(1, 300, 6)], "yolo_nms"), ([(1, 25200, 85)], None), ([(1, 300, 84)], None),
    ([(1, 3234, 4), (1, 3234, 91)], "ssd"), ([(1, 100, 92), (1, 100, 4)], "detr"), ([(1, 100, 4), (1, 100, 4)], None),
])
def test_format_is_guessed_only_where_unambiguous(shapes, expected):
    assert guess_format(shapes) == expected


def archive(model: Path, store: Path, *extra: str) -> int:
    return archive_main(["--model", str(model), "--task", "detection", "--labels", str(model.parent / "labels.json"),
                         "--name", "toy", "--store", str(store), "--set", f"input_size={SIZE}", *extra])


def test_archive_detects_an_unambiguous_format(format_exports, tmp_path, capsys):
    assert archive(format_exports / "yolov8" / "model.onnx", tmp_path) == 0
    assert "detection_format yolov8 (from the output shapes 1×7×8" in capsys.readouterr().out


def test_archive_refuses_an_ambiguous_format(format_exports, tmp_path, capsys):
    assert archive(format_exports / "yolov5" / "model.onnx", tmp_path) == 2
    assert "they fit yolov5 and rtdetr; pass --set detection_format=FORMAT" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.mar"))


@pytest.mark.parametrize("model, fmt", [("yolov8", "detr"), ("detr", "yolov8"), ("yolo_nms", "ssd")])
def test_archive_shows_a_format_mismatch(format_exports, tmp_path, capsys, model, fmt):
    assert archive(format_exports / model / "model.onnx", tmp_path, "--set", f"detection_format={fmt}") == 2
    err = capsys.readouterr().err
    assert "does not meet the detection contract" in err and f"detection_format {fmt!r} expects" in err, err
    assert "the model's outputs are" in err
