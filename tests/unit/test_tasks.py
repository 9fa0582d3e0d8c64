"""The three tasks in-process, on both backends: schema, backend agreement, geometry, batches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.checks import (
    assert_same_answer,
    assert_same_classification,
    assert_same_detections,
    check_classification,
    check_detection,
    check_segmentation,
    mask_agreement,
)
from tests.helpers import BACKENDS, jpeg, load_task
from tests.scenes import GEOMETRY_SIZES, bright_box_scene, colour_scene
from tsvision.serving.errors import RequestError
from tsvision.serving.tasks.segmentation import decode_png


@pytest.fixture(scope="module")
def tasks(exports):
    return {(task, backend): load_task(exports / task, backend)
            for task in ("classification", "segmentation", "detection") for backend in BACKENDS}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_classification_top_k(tasks, photos, backend):
    task = tasks["classification", backend]
    for answer in task.run([jpeg(p) for p in photos.values()]):
        check_classification(answer, task.labels)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_segmentation_mask_at_original_resolution(tasks, photos, backend):
    task = tasks["segmentation", backend]
    images = list(photos.values())
    for image, answer in zip(images, task.run([jpeg(p) for p in images])):
        check_segmentation(answer, image.width, image.height, len(task.labels))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_detection_boxes_inside_original_image(tasks, photos, backend):
    task = tasks["detection", backend]
    images = list(photos.values())
    answers = task.run([jpeg(p) for p in images])
    assert any(answers), "random-weights archives are set up to show some boxes"
    for image, answer in zip(images, answers):
        check_detection(answer, image.width, image.height, task.settings.score_threshold, task.settings.max_detections)


def test_backends_agree_in_process(tasks, photos):
    data = [jpeg(p) for p in photos.values()]
    for a, b in zip(tasks["classification", "torchscript"].run(data), tasks["classification", "onnx"].run(data)):
        assert_same_classification(a, b)
    for a, b in zip(tasks["detection", "torchscript"].run(data), tasks["detection", "onnx"].run(data)):
        assert_same_detections(a, b)
    for a, b in zip(tasks["segmentation", "torchscript"].run(data), tasks["segmentation", "onnx"].run(data)):
        assert mask_agreement(a, b) >= 0.995


def test_bad_items_do_not_disturb_the_batch(tasks, photos):
    task = tasks["classification", "onnx"]
    good = [jpeg(photos["chelsea"]), jpeg(photos["rocket"])]
    alone = [task.run([item])[0] for item in good]
    mixed = task.run([b"", good[0], b"not an image", RequestError(415, "UnsupportedMediaType", "x"), good[1]])
    assert [r.status for r in (mixed[0], mixed[2], mixed[3])] == [400, 400, 415]
    assert mixed[1] == alone[0] and mixed[4] == alone[1]


@pytest.mark.parametrize("task_name", ["classification", "segmentation", "detection"])
def test_mixed_sizes_in_one_batch_equal_one_by_one(tasks, exports, photos, task_name):
    task = tasks[task_name, "onnx"]
    data = [jpeg(p) for p in photos.values()] + [jpeg(Image.fromarray(np.full((41, 333, 3), 128, np.uint8)))]
    if task_name == "segmentation":  # shorter_side: 520×520, 780×520 (twice), 779×520, 1040×128: one pass per shape
        serial = load_task(exports / "segmentation", "onnx", micro_batch=0)  # the default pipelines (micro_batch 4)
        assert isinstance(serial.prepare_batch(data).inputs, list)
    batched = task.run(data)
    for item, answer in zip(data, batched):
        assert_same_answer(task_name, answer, task.run([item])[0])


# -- geometry with models whose answer is known ----------------------------------------
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_toy_detector_boxes_land_on_the_rectangle(toy_exports, backend, mode):
    task = load_task(toy_exports / "detection", backend, resize_mode=mode)
    scenes = [bright_box_scene(w, h) for w, h in GEOMETRY_SIZES]
    answers = task.run([jpeg(image, quality=95) for image, _ in scenes])
    for (image, truth), answer in zip(scenes, answers):
        assert len(answer) == 1 and answer[0]["label"] == "bright rectangle"
        error = np.abs(np.subtract(answer[0]["box"], truth)).max()
        assert error <= 2.0, (image.size, mode, answer[0]["box"], truth)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("mode", ["letterbox", "stretch", "shorter_side"])
def test_toy_segmenter_masks_match_at_original_resolution(toy_exports, backend, mode):
    task = load_task(toy_exports / "segmentation", backend, resize_mode=mode)
    scenes = [colour_scene(w, h) for w, h in GEOMETRY_SIZES]
    answers = task.run([image for image, _ in scenes])  # lossless: the truth is exact
    for (image, truth), answer in zip(scenes, answers):
        mask = decode_png(answer["mask"])
        assert mask.shape == truth.shape
        assert (mask == truth).mean() >= 0.99, (image.size, mode, (mask == truth).mean())


def test_one_forward_pass_per_shape_and_a_failing_shape_fails_only_its_images(toy_exports, monkeypatch):
    """``shorter_side`` keeps each image's aspect ratio: a batch runs once per shape (two images of one
    shape share a pass), every image answers as alone, and a pass that fails is a 500 for its images only."""
    task = load_task(toy_exports / "segmentation", "onnx", resize_mode="shorter_side")
    scenes = [colour_scene(w, h)[0] for w, h in GEOMETRY_SIZES + [(666, 1554)]]  # 333×777 and 666×1554: one shape
    alone = [task.run([image])[0] for image in scenes]
    run, passes = task.runtime.run, []

    def failing_on_tall(batch):
        passes.append(batch.shape)
        if batch.shape[2] > batch.shape[3]:
            raise RuntimeError("this shape is not supported")
        return run(batch)

    monkeypatch.setattr(task.runtime, "run", failing_on_tall)
    answers = task.run(scenes)
    assert sorted(passes) == sorted([(2, 3, 1280, 548), (1, 3, 548, 1280), (1, 3, 640, 1137)])
    assert [getattr(a, "status", 200) for a in answers] == [500, 200, 200, 500]
    assert answers[0].kind == "InferenceError" and answers[1:3] == alone[1:3]
