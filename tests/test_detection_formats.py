"""Detector output layouts (``detection_format``): toy models whose answer is known exactly,
in each family's layout, exported by the project's export code, run in-process and served live
by a real TorchServe (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tsvision.serving.geometry import Placement, fit_square
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task
from tsvision.serving.tasks.detection import DetectionTask
from tsvision.serving.tasks.detection_formats import guess_format
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.export.model_files import export_files
from tests.conftest import BACKENDS, png
from tests.scenes import bright_box_scene
from tests.toy_models import TOY_FORMAT_LABELS, BrightestBoxInFormat

SIZE = 640  # 1280×720 -> scale 1/2: one input pixel is two original pixels
SCENES = [(333, 777), (1280, 720)]
OUTPUT_NAMES = {"yolov8": ["output0"], "yolov5": ["output0"], "yolo_nms": ["output0"], "rtdetr": ["output0"],
                "detr": ["pred_logits", "pred_boxes"]}
# What a user sets for each family (the rest are the format's defaults).
FORMAT_SETTINGS = {fmt: {"input_size": SIZE, "score_threshold": 0.5} for fmt in OUTPUT_NAMES}
FORMAT_SETTINGS["detr"].update(mean=[0, 0, 0], std=[1, 1, 1])  # the toy thresholds raw pixels in [0, 1]


@pytest.fixture(scope="module")
def format_exports(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    for fmt, names in OUTPUT_NAMES.items():
        module = BrightestBoxInFormat(fmt, SIZE).eval()
        exportable = Exportable("detection", f"toy-{fmt}", module, {"input_size": SIZE}, TOY_FORMAT_LABELS, False, names)
        report = export_files(exportable, root / fmt)
        assert report["ok"], report
        (root / fmt / "labels.json").write_text(json.dumps(TOY_FORMAT_LABELS))
    return root


def format_task(root: Path, fmt: str, backend: str = "onnx", **overrides) -> DetectionTask:
    values = {"task": "detection", "detection_format": fmt, "labels": "labels.json", **FORMAT_SETTINGS[fmt], **overrides}
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
        assert len(answer) == 1, (fmt, image.size, answer)
        assert answer[0]["label"] == "bright rectangle" and answer[0]["index"] == 1 and answer[0]["score"] > 0.9
        error = np.abs(np.subtract(answer[0]["box"], truth)).max()
        assert error <= 1.0, (fmt, image.size, answer[0]["box"], truth)


@pytest.mark.parametrize("fmt", list(OUTPUT_NAMES))
def test_mixed_sizes_in_one_batch_equal_one_by_one(format_exports, fmt):
    task = format_task(format_exports, fmt)
    data = [png(bright_box_scene(w, h)[0]) for w, h in SCENES + [(777, 333), (41, 333)]]
    batched = task.run(data)
    assert batched == [task.run([item])[0] for item in data]


def test_letterbox_center_matches_ultralytics_arithmetic():
    """ultralytics LetterBox(auto=False): new size round(side × r); pads round(pad/2 ∓ 0.1)."""
    array, placement = fit_square(Image.new("RGB", (1280, 720), (255, 255, 255)), 640, "letterbox_center", (114, 114, 114))
    assert placement == Placement(1280, 720, 640, 360, 640, 0, 140)
    assert (array[:140] == 114).all() and (array[500:] == 114).all() and (array[140:500] == 255).all()
    mapped = placement.boxes_to_original(np.array([[0, 140, 640, 500]], dtype=np.float32))
    assert mapped.tolist() == [[0, 0, 1280, 720]]
    _, odd = fit_square(Image.new("RGB", (333, 777)), 320, "letterbox_center", (114, 114, 114))
    assert (odd.content_width, odd.offset_x, odd.offset_y) == (137, 91, 0)  # pad 183: 91 left, 92 right


class FixedOutputs:
    """A runtime that answers every image with the same outputs (for the NMS cases)."""
    name, device, fixed_batch = "fixed", "cpu", None

    def __init__(self, *outputs: np.ndarray) -> None:
        self.outputs = outputs

    def run(self, batch):
        return [np.repeat(o[None], len(batch), axis=0) for o in self.outputs]


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


@pytest.fixture(scope="module")
def format_server(format_exports, tmp_path_factory):
    """One real TorchServe with every toy format on both backends, archived as a user would: the
    model file, its labels and the format's settings (``--set``), no settings.json."""
    from tsvision.tools.serve.server import TorchServe

    store = tmp_path_factory.mktemp("format_store")
    for fmt in OUTPUT_NAMES:
        sets = [f"--set={key}={json.dumps(value)}" for key, value in {"detection_format": fmt, **FORMAT_SETTINGS[fmt]}.items()]
        for backend, filename in BACKENDS.items():
            assert archive_main(["--model", str(format_exports / fmt / filename), "--task", "detection",
                                 "--labels", str(format_exports / fmt / "labels.json"), "--name", f"toy_{fmt}_{backend}",
                                 "--store", str(store), "--workers", "1", *sets]) == 0
    server = TorchServe(store, tmp_path_factory.mktemp("format_torchserve"))
    try:
        server.start(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("fmt", list(OUTPUT_NAMES))
def test_served_box_lands_on_the_rectangle(format_server, fmt, backend):
    """Served live: the box of each format's toy lies within 1 px of the drawn rectangle on
    333×777 and 1280×720 images (through the format's letterbox or stretch and back)."""
    for width, height in SCENES:
        image, truth = bright_box_scene(width, height)
        response = format_server.predict(f"toy_{fmt}_{backend}", png(image), content_type="image/png")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert len(answer) == 1 and answer[0]["label"] == "bright rectangle", (fmt, backend, image.size, answer)
        error = np.abs(np.subtract(answer[0]["box"], truth)).max()
        assert error <= 1.0, (fmt, backend, image.size, answer[0]["box"], truth)
