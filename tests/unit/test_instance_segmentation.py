"""Instance segmentation (issue 15) in-process: the toys whose masks are known to the pixel (RLE,
polygons, PNG), their picture, mixed-size batches, ``mask_threshold`` and the settings. The real Mask
R-CNN and YOLOv8n-seg: tests/slow/test_instance_models.py; served: tests/e2e/test_served_instances.py.
Figures print with ``-s``."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import SCENES, png
from tests.instance_checks import BACKENDS, TOY_SETTINGS, check_toy_answer, rle_mask, toy_task, toy_truth
from tests.scenes import bright_box_scene
from tsvision.serving.drawing import box_colour
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.instance_segmentation import (
    TorchvisionInstanceSegmentationTask,
    YoloInstanceSegmentationTask,
)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("fmt", list(TOY_SETTINGS))
def test_toy_masks_are_known_to_the_pixel(instance_toys, fmt, backend):
    task = toy_task(instance_toys, fmt, backend)
    expected = TorchvisionInstanceSegmentationTask if fmt == "torchvision" else YoloInstanceSegmentationTask
    assert isinstance(task, expected)
    polygon_task = toy_task(instance_toys, fmt, backend, mask_format="polygon")
    png_task = toy_task(instance_toys, fmt, backend, mask_format="png")
    for width, height in SCENES:
        image = bright_box_scene(width, height)[0]
        rle_agreement = check_toy_answer(task.run([png(image)])[0], fmt, width, height)
        polygon_agreement = check_toy_answer(polygon_task.run([png(image)])[0], fmt, width, height, "polygon")
        png_agreement = check_toy_answer(png_task.run([png(image)])[0], fmt, width, height, "png")
        print(f"\n{fmt} {backend} {width}x{height}: mask agreement RLE {rle_agreement:.5f}, "
              f"polygon {polygon_agreement:.5f}")
        assert rle_agreement >= 0.99 and polygon_agreement >= 0.99
        assert png_agreement == rle_agreement  # the same mask, written another way
        if fmt == "torchvision":  # the model's own mask at the original size: nothing to map, so exact
            assert rle_agreement == polygon_agreement == 1.0
    for each in (task, polygon_task, png_task):
        each.close()


@pytest.mark.parametrize("mask_format", ["rle", "polygon", "png"])
def test_toy_picture_tints_the_mask_in_the_class_colour(instance_toys, mask_format):
    """The picture (``Accept: image/png``) at the original size: inside the true mask, away from the
    box outline and label, each pixel is the photo blended 0.45 with class 1's colour; far from the
    box the photo is untouched."""
    task = toy_task(instance_toys, "torchvision", "onnx", mask_format=mask_format)
    image, truth, box = toy_truth("torchvision", 333, 777)
    answer = task.run([png(image)])[0]
    picture = np.asarray(task.draw(image, answer)).astype(np.float64)
    photo = np.asarray(image.convert("RGB")).astype(np.float64)
    assert picture.shape == photo.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    margin = 40  # the outline and the label inside the top of the box
    inside = np.zeros_like(truth)
    inside[y1 + margin:y2 - 8, x1 + 8:x2 - 8] = True
    assert inside.sum() > 1000
    expected = np.round(0.55 * photo + 0.45 * np.asarray(box_colour(1), dtype=np.float64))
    assert np.abs(picture[inside] - expected[inside]).max() <= 1
    far = np.ones_like(truth)
    far[max(0, y1 - 60):y2 + 20, max(0, x1 - 20):x2 + 200] = False
    assert np.array_equal(picture[far], photo[far])
    task.close()


@pytest.mark.parametrize("fmt", list(TOY_SETTINGS))
def test_toy_mixed_sizes_in_one_batch_equal_one_by_one(instance_toys, fmt):
    task = toy_task(instance_toys, fmt, "onnx")
    data = [png(bright_box_scene(w, h)[0]) for w, h in SCENES + [(777, 333), (41, 333)]]
    batched = task.run(data + [b"not an image"])
    assert batched[:-1] == [task.run([item])[0] for item in data]
    assert getattr(batched[-1], "status", None) == 400


def test_mask_threshold_and_settings(instance_toys):
    """The toy's soft mask is sigmoid(40 (b - 0.5)): at mask_threshold 0.999 the rectangle's pixels
    (b = 0.98, 0.99999999) stay in and nothing else comes in; settings are checked."""
    task = toy_task(instance_toys, "torchvision", "torchscript", mask_threshold=0.999, max_detections=1)
    image, truth, _ = toy_truth("torchvision", 333, 777)
    answer = task.run([png(image)])[0]
    assert len(answer) == 1 and np.array_equal(rle_mask(answer[0]["mask"]), truth)
    with pytest.raises(ValueError, match="mask_threshold must lie between 0 and 1"):
        Settings.from_mapping({"task": "instance_segmentation", "detection_format": "torchvision",
                               "mask_threshold": 1.0})
    with pytest.raises(ValueError, match="instance_segmentation serves detection_format"):
        toy_task(instance_toys, "torchvision", "onnx", detection_format="yolov8", background_index=None)
