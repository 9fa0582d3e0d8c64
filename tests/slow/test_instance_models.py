"""Instance segmentation (issue 15) on real models: the default Mask R-CNN (random, conditioned)
against the archived model file called directly, scripted against eager measured, and YOLOv8n-seg
exported by ultralytics against ultralytics' predictor; both exported once per session
(tests/conftest.py). Figures print with ``-s``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import png
from tests.instance_checks import (
    BACKENDS,
    assert_close,
    compare_instances,
    compare_with_mask_rcnn_file,
    compare_with_ultralytics,
    expected_instances,
    mask_rcnn_photos,
    rle_mask,
    yolo_photos,
)
from tests.scenes import OBJECT_PHOTOS
from tsvision.serving.tasks import load_export
from tsvision.serving.tasks.instance_segmentation import YoloInstanceSegmentationTask
from tsvision.serving.tasks.torchvision_detection import to_chw_float
from tsvision.tools.export.mask_rcnn import OUTPUT_NAMES


@pytest.fixture(scope="module")
def photos():
    return mask_rcnn_photos()


def test_mask_rcnn_export_report(mrcnn):
    folder, exportable, report = mrcnn
    shown = ("architecture", "files", "outputs", "parameters", "flops_per_image", "parity_detections", "max_abs_diff",
             "torchscript_seconds", "onnx_seconds")
    print("\nexport report:", json.dumps({k: report[k] for k in shown}))
    assert report["ok"] and report["files"] == ["model.pt", "model.onnx"] and report["outputs"] == OUTPUT_NAMES
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["task"] == "instance_segmentation" and settings["detection_format"] == "torchvision"
    assert settings["random_weights"] and settings["background_index"] == 0
    assert settings["mask_format"] is None  # None: the task's default, RLE
    assert json.loads((folder / "labels.json").read_text())[1] == "person"


@pytest.fixture(scope="module")
def mrcnn_tasks(mrcnn):
    loaded = {backend: load_export(mrcnn[0], filename, threads=1) for backend, filename in BACKENDS.items()}
    yield loaded
    for task in loaded.values():
        task.close()


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_mask_rcnn_task_equals_archived_model(mrcnn, mrcnn_tasks, backend):
    task = mrcnn_tasks[backend]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        answers = compare_with_mask_rcnn_file(lambda image: task.run([png(image)])[0], mrcnn[0], backend,
                                              task.settings.to_mapping(), backend)
        assert sum(len(answer) for answer in answers), "the conditioned Mask R-CNN should find instances on some photo"
    finally:
        torch.set_num_threads(threads)


def test_mask_rcnn_mixed_sizes_equal_one_by_one(mrcnn_tasks, photos):
    task = mrcnn_tasks["torchscript"]
    bodies = [png(image) for image in photos.values()] + [png(photos["coffee"].resize((300, 200)))]
    assert task.run(bodies) == [task.run([body])[0] for body in bodies]


def test_measured_scripted_vs_eager(mrcnn, mrcnn_tasks, photos):
    """Measured, not hidden: the eager model against the scripted file (and ONNX against scripted) on
    each photo: instances matched in order, largest box/score difference, worst mask agreement."""
    folder, exportable, _ = mrcnn
    eager = exportable.module.eval()
    settings = mrcnn_tasks["torchscript"].settings.to_mapping()
    figures = {}
    for name, image in photos.items():
        tensor = torch.from_numpy(to_chw_float(np.asarray(image)))
        with torch.no_grad():
            found = {k: v.numpy() for k, v in eager([tensor])[0].items()}
            sizes = (list(eager.transform([tensor])[0].image_sizes[0]),)
        scripted = mrcnn_tasks["torchscript"].run([png(image)])[0]
        onnx = mrcnn_tasks["onnx"].run([png(image)])[0]
        row = {"size": [image.height, image.width], "eager_resized": sizes[0]}
        for label, a, b in (("scripted_vs_eager", scripted, expected_instances(found, settings, image.size)),
                            ("onnx_vs_scripted", onnx, [{**d, "mask": rle_mask(d["mask"])} for d in scripted])):
            try:
                row[label] = compare_instances(a, b)
            except AssertionError:
                row[label] = f"different instances: {len(a)} vs {len(b)}"
        figures[name] = row
    print("\nmeasured:", json.dumps(figures, indent=1))
    # square photos resize identically in both (docs/models.md): there scripted equals eager
    for name in ("astronaut", "camera"):
        assert_close(figures[name]["scripted_vs_eager"])


def test_yolo_seg_equals_ultralytics_predictor(yolo_seg):
    """Photos with a 640 longer side and, resampled by both sides (OpenCV's resize, as ultralytics'
    LetterBox), real photos at 1280×720, 333×777 and 900×420."""
    task = load_export(yolo_seg)
    assert isinstance(task, YoloInstanceSegmentationTask)
    compared = compare_with_ultralytics(lambda image: task.run([png(image)])[0], yolo_seg, task.settings, "yolov8n-seg")
    for name, image, answer in compared:
        assert answer or image.size not in OBJECT_PHOTOS, f"no instance on {name}: the comparison would be empty"
    total = sum(len(answer) for _, _, answer in compared)
    assert total >= 3, "the conditioned YOLOv8n-seg should find instances on the photos"
    task.close()


def test_yolo_seg_mixed_sizes_equal_one_by_one(yolo_seg):
    task = load_export(yolo_seg)
    bodies = [png(image) for image in yolo_photos().values()]
    assert task.run(bodies) == [task.run([body])[0] for body in bodies]
    task.close()
