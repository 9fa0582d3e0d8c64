"""YOLOv8n end to end against ultralytics itself: ``tsvision export --arch yolov8n`` (ultralytics' own
ONNX exporter, random weights conditioned by ``condition_random_yolo`` so that classes 0, 2 and 16
give a few well-separated boxes), ``tsvision archive --task detection`` (format, size and names
from the ONNX metadata), the task in-process (served: tests/e2e/test_served_detectors.py), each compared with
ultralytics' own predictor, ``YOLO(model.onnx).predict``, on the same decoded pixels and thresholds.

Compared answers must be equal within the issue's tolerances: the same classes in the same order
(but for scores closer than SCORE_TOL), boxes within 0.01 px, scores within 1e-4. Both sides feed the
model the same pixels: the same letterbox and, for ``letterbox_center``, OpenCV's ``INTER_LINEAR``
resize as ultralytics' ``LetterBox`` (checked pixel for pixel in ``test_ultralytics_parity.py``). The
photos: two scaled to 640×640 and a wide and a tall crop with a 640 longer side (no resize on either
side), and real photos at 1280×720, 333×777 and 900×420 that both sides must resample.

ultralytics' predictor defaults to ``rect=True``, which for a dynamic ONNX pads only to the next
multiple of 32 (640×384 for a 16:9 image); tsvision always pads to the square so that images of any
size share one batch. The comparisons pass ``rect=False``; the difference is printed too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("YOLO_OFFLINE", "1")
pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402

from tests.helpers import photo, png  # noqa: E402
from tests.yolo_checks import (  # noqa: E402
    COCO_NAMES,
    CONF,
    IOU,
    MAX_DET,
    MAX_NMS,
    RESAMPLED,
    SAME_AS_ULTRALYTICS,
    UNRESAMPLED,
    as_answer,
    assert_equal_answers,
    ultralytics_direct,
    yolo_images,
)
from tsvision.serving.tasks import load_export  # noqa: E402
from tsvision.tools.archive.cli import main as archive_main  # noqa: E402
from tsvision.tools.export.cli import main as export_main  # noqa: E402


@pytest.fixture(scope="module")
def exported(yolov8n) -> Path:
    return yolov8n


@pytest.fixture(scope="module")
def images() -> Dict[str, Image.Image]:
    return yolo_images()


@pytest.fixture(scope="module")
def yolo(exported):
    return YOLO(str(exported / "model.onnx"), task="detect")


@pytest.fixture(scope="module")
def task(exported):
    loaded = load_export(exported, "model.onnx", **SAME_AS_ULTRALYTICS)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def archived(exported, tmp_path_factory):
    """The user's path for their own ultralytics export: only ``--task detection``, no settings, no labels."""
    store = tmp_path_factory.mktemp("yolo_store")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = archive_main(["--model", str(exported / "model.onnx"), "--task", "detection", "--name", "yolov8n",
                             "--store", str(store), "--set", f"max_detections={MAX_DET}",
                             "--set", f"pre_nms_top_k={MAX_NMS}"])
    return store, code, out.getvalue()


def test_export_report_labels_and_settings(exported, yolo):
    report = json.loads((exported / "report.json").read_text())
    assert report["ok"] and report["exporter"] == "ultralytics" and report["random_weights"], report
    assert report["outputs"] == [[1, 84, 8400]] and report["max_abs_diff"]["onnx_vs_eager"] <= 1e-3
    labels = json.loads((exported / "labels.json").read_text())
    assert len(labels) == 80 and labels == [yolo.names[i] for i in range(80)]  # what ultralytics itself reads
    settings = json.loads((exported / "settings.json").read_text())
    # the yolov8 format's settings: ultralytics' letterbox, /255, its predictor's conf and iou
    assert {k: settings[k] for k in ("task", "detection_format", "input_size", "resize_mode", "mean", "std",
                                     "score_threshold", "iou_threshold", "background_index", "random_weights")} == {
        "task": "detection", "detection_format": "yolov8", "input_size": 640, "resize_mode": "letterbox_center",
        "mean": [0, 0, 0], "std": [1, 1, 1], "score_threshold": CONF, "iou_threshold": IOU, "background_index": None,
        "random_weights": True}


def test_archive_reads_the_onnx_metadata(archived):
    store, code, out = archived
    print("\n" + out)
    assert code == 0
    assert "from the ONNX metadata (Ultralytics): detection_format=yolov8, input_size=640, 80 class names" in out
    with zipfile.ZipFile(store / "yolov8n.mar") as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
        labels = json.loads(mar.read("labels.json"))
    handler = config["handler"]
    assert handler["detection_format"] == "yolov8" and handler["input_size"] == 640
    assert handler["resize_mode"] == "letterbox_center" and handler["labels"] == "labels.json"
    assert handler["max_detections"] == MAX_DET and handler["pre_nms_top_k"] == MAX_NMS
    # the export names a yaml-built model with COCO's names, as ultralytics' coco.yaml has them
    assert labels == COCO_NAMES


@pytest.mark.parametrize("name", UNRESAMPLED + RESAMPLED)
def test_in_process_equals_ultralytics_predictor(task, yolo, images, name):
    image = images[name]
    ours = task.run([png(image)])[0]
    box, score, in_order = assert_equal_answers(ours, ultralytics_direct(yolo, image), name)
    print(f"\n{name} {image.size}: {len(ours)} boxes, classes {[d['index'] for d in ours]} (same order: {in_order}), "
          f"largest box difference {box:.4f} px, score {score:.1e}")


def test_the_real_export_runs_with_its_head_split(task, exported, images):
    """``split_head`` (the default) cuts ultralytics' real graph at the head's raw outputs; the answers are the
    whole graph's (above: also ultralytics' predictor's)."""
    batch = np.zeros((1, 3, 640, 640), dtype=np.float32)
    assert [o.shape for o in task.runtime.run(batch)] == [(1, 64, 8400), (1, 80, 8400)]
    whole = load_export(exported, "model.onnx", split_head=False, **SAME_AS_ULTRALYTICS)
    try:
        assert [o.shape for o in whole.runtime.run(batch)] == [(1, 84, 8400)]
        for name in UNRESAMPLED + RESAMPLED:
            box, score, _ = assert_equal_answers(task.run([png(images[name])])[0],
                                                 whole.run([png(images[name])])[0], name)
            assert box <= 1e-3 and score <= 1e-5, (name, box, score)
    finally:
        whole.close()


def test_predictor_default_rect_is_another_input(task, yolo, images):
    """Not hidden: ultralytics' default ``rect=True`` pads a dynamic ONNX's input only to a multiple of
    32 (640×384 for the 640×360 crop), another input than the 640 square, so other answers."""
    wide = images["wide 640x360"]
    rect = yolo.predict(wide, conf=CONF, iou=IOU, max_det=MAX_DET, imgsz=640, verbose=False)[0]  # rect=True
    ours = task.run([png(wide)])[0]
    print(f"\nwide 640x360: {len(ours)} boxes here, {len(rect.boxes)} with rect=True")
    with pytest.raises(AssertionError):
        assert_equal_answers(ours, as_answer(rect.boxes.cls, rect.boxes.conf, rect.boxes.xyxy), "rect=True")


def test_mixed_size_batch_equals_one_by_one(task, images):
    bodies = [png(images[name]) for name in ("astronaut", "tall 274x640", "1280x720", "333x777", "900x420")] \
        + [png(photo("coffee"))]
    together = task.run(bodies)
    alone = [task.run([body])[0] for body in bodies]
    assert sum(len(a) for a in alone[:5]) >= 5
    for one, both in zip(alone, together):
        assert [d["index"] for d in one] == [d["index"] for d in both]
        assert all(np.abs(np.subtract(a["box"], b["box"])).max() <= 0.01 and abs(a["score"] - b["score"]) <= 1e-5
                   for a, b in zip(one, both))


def test_nms_export_is_archived_as_yolo_nms(tmp_path, monkeypatch, images):
    """ultralytics ``export(nms=True)``: N×300×6 with the suppression inside the graph. The archive takes
    ``yolo_nms`` from the metadata (``'nms': True`` in its args), and the task equals the predictor."""
    from tsvision.tools.export.ultralytics_models import build_yolo, quiet_ultralytics

    monkeypatch.chdir(tmp_path)  # ultralytics writes yolov8n.onnx into the working directory
    with quiet_ultralytics():
        model = Path(build_yolo("yolov8n", None, 0).export(format="onnx", dynamic=True, nms=True, simplify=False,
                                                           verbose=False, batch=8)).resolve()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert archive_main(["--model", str(model), "--task", "detection", "--name", "yolov8n_nms",
                             "--store", str(tmp_path / "store")]) == 0
    print("\n" + out.getvalue())
    assert "detection_format=yolo_nms" in out.getvalue()
    with zipfile.ZipFile(tmp_path / "store" / "yolov8n_nms.mar") as mar:
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["detection_format"] == "yolo_nms"
    (tmp_path / "settings.json").write_text(json.dumps({"task": "detection", "detection_format": "yolo_nms"}))
    nms_task = load_export(tmp_path, model.name, **SAME_AS_ULTRALYTICS)
    try:
        predictor = YOLO(str(model), task="detect")
        for name in ("astronaut", "camera"):
            box, score, _ = assert_equal_answers(nms_task.run([png(images[name])])[0],
                                                 ultralytics_direct(predictor, images[name]), name)
            print(f"yolo_nms {name}: largest box difference {box:.3f} px, score {score:.1e}")
    finally:
        nms_task.close()


def test_checkpoint_export_keeps_the_users_files(tmp_path):
    """``--checkpoint best.pt``: trained weights and names from the checkpoint, and the user's own
    ``best.onnx`` beside it untouched (ultralytics writes its export beside the .pt)."""
    from tsvision.tools.export.ultralytics_models import quiet_ultralytics

    with quiet_ultralytics():
        model = YOLO("yolov8n.yaml")
    model.model.names = {i: f"thing{i}" for i in range(80)}
    model.save(str(tmp_path / "best.pt"))
    (tmp_path / "best.onnx").write_text("the user's own file")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert export_main(["--task", "detection", "--arch", "yolov8n", "--checkpoint", str(tmp_path / "best.pt"),
                            "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "best.onnx").read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.pt", "out"]
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == [f"thing{i}" for i in range(80)]
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["random_weights"] is False


def test_metadata_names_only_when_no_labels_are_given(exported):
    """A labels file (or settings.json naming one) wins over the metadata's names, and the archive
    does not claim to have taken them."""
    from tsvision.tools.archive.inspection import read_onnx
    from tsvision.tools.archive.resolve import from_metadata

    metadata = read_onnx(exported / "model.onnx").metadata
    taken, names, note = from_metadata(metadata, {"task": "detection"})
    assert names == COCO_NAMES and note.endswith("80 class names")
    assert taken["detection_format"] == "yolov8" and taken["input_size"] == 640
    taken, names, note = from_metadata(metadata, {"task": "detection", "detection_format": "yolov8", "input_size": 640},
                                       labels_given=True)
    assert names is None and note is None and taken == {}
