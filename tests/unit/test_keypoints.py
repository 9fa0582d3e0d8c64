"""Keypoints (issue 15) in-process: toy models whose keypoints are known to the pixel in both contracts
(``torchvision`` Keypoint R-CNN, ``yolov8_pose``), the settings and the handler entry file, and the
``yolov8_pose`` decoding against ultralytics' own post-processing on the same raw output. The real
Keypoint R-CNN and YOLOv8n-pose: tests/slow/test_keypoint_models.py; served: tests/e2e/test_served_keypoints.py.
Figures print with ``-s``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import SCENES, png
from tests.keypoint_checks import FILES, TOY_SETTINGS, assert_toy_truth
from tests.keypoint_toys import TOY_SKELETON, true_keypoints
from tests.scenes import bright_box_scene
from tsvision.serving.drawing import box_colour, draw_keypoints
from tsvision.serving.geometry import YOLO_FILL, fit_square
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import load_export
from tsvision.serving.tasks.keypoints import KeypointsTask, TorchvisionKeypointsTask


@pytest.mark.parametrize("backend", list(FILES))
@pytest.mark.parametrize("toy", list(TOY_SETTINGS))
def test_toy_keypoints_land_on_the_corners(keypoint_toys, toy, backend):
    task = load_export(keypoint_toys / toy, FILES[backend])
    assert isinstance(task, TorchvisionKeypointsTask if toy == "toy_rcnn" else KeypointsTask)
    task.warm_up()
    scenes = [bright_box_scene(w, h) for w, h in SCENES]
    answers = task.run([png(image) for image, _ in scenes])
    errors = [assert_toy_truth(answer, truth, toy) for (_, truth), answer in zip(scenes, answers)]
    print(f"\n{toy} {backend}: largest box/point error {max(errors):.2f} px")


@pytest.mark.parametrize("toy", list(TOY_SETTINGS))
def test_toy_picture_draws_the_skeleton_on_the_keypoints(keypoint_toys, toy):
    """The picture at the original size: keypoint k's dot in colour k where the truth puts it,
    limb 0 (top-left to top-right) in colour 0 along the top edge; a keypoint whose score is not
    above the visibility cut is not drawn, nor its limbs."""
    task = load_export(keypoint_toys / toy, "model.onnx")
    image, truth = bright_box_scene(1280, 720)
    answer = task.run([png(image)])[0]
    picture = task.draw(image, answer)
    assert picture.size == image.size
    pixels = np.asarray(picture)
    points = true_keypoints(truth)
    for k, (x, y) in enumerate(points):
        assert tuple(pixels[int(y), int(x)]) == box_colour(k), (k, x, y)
    (x0, y0), (x1, _) = points[0], points[1]
    assert tuple(pixels[int(y0), int((x0 + x1) / 2)]) == box_colour(0)
    scores = [p[2] for p in answer[0]["keypoints"]]
    cut = sorted(scores)[2]  # hides the two lowest-scoring keypoints
    hidden = [k for k, score in enumerate(scores) if score <= cut]
    partial = np.asarray(draw_keypoints(image, answer, TOY_SKELETON, cut))
    for k in range(len(points)):
        x, y = points[k]
        assert (tuple(partial[int(y), int(x)]) == box_colour(k)) == (k not in hidden), (k, hidden)
    task.close()


@pytest.mark.parametrize("toy", list(TOY_SETTINGS))
def test_toy_mixed_sizes_in_one_batch_equal_one_by_one(keypoint_toys, toy):
    task = load_export(keypoint_toys / toy, "model.onnx")
    data = [png(bright_box_scene(w, h)[0]) for w, h in SCENES + [(777, 333), (41, 333)]] + [b"not an image"]
    batched = task.run(data)
    assert batched[:4] == [task.run([item])[0] for item in data[:4]]
    assert getattr(batched[4], "status", None) == 400


@pytest.mark.parametrize("toy", list(TOY_SETTINGS))
def test_a_keypoint_count_that_does_not_fit_the_names_is_refused_at_load(keypoint_toys, toy):
    # COCO's 17 for a 5-point model
    task = load_export(keypoint_toys / toy, "model.onnx", keypoint_names=None, skeleton=None)
    with pytest.raises(ValueError, match="the model gives 5 keypoints per person but there are 17 keypoint names"):
        task.warm_up()


def test_the_entry_file_defines_the_keypoint_detector(tmp_path):
    from tsvision.tools.archive.local_worker import load_handler_class
    from tsvision.tools.archive.package import default_handler

    handler = default_handler("keypoints", tmp_path)
    assert handler.name == "keypoint_detector.py" and handler.parent.name == "handlers"
    loaded = load_handler_class(handler)
    assert loaded.__name__ == "KeypointDetector" and loaded.task_name == "keypoints"


def test_settings_need_a_keypoint_format():
    with pytest.raises(ValueError, match="task keypoints needs detection_format torchvision or yolov8_pose"):
        Settings.from_mapping({"task": "keypoints", "detection_format": "yolov8"})
    settings = Settings.from_mapping({"task": "keypoints", "detection_format": "yolov8_pose"})
    assert settings.resize_mode == "letterbox_center"
    assert settings.iou_threshold == 0.7 and settings.score_threshold == 0.25


def synthetic_pose_output(seed: int, anchors: int = 8400, keypoints: int = 17) -> np.ndarray:
    """1×(5+3K)×A in the yolov8_pose layout: random boxes and keypoints, a few hundred confident anchors."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((1, 5 + 3 * keypoints, anchors), np.float32)
    raw[0, 0:2] = rng.uniform(0, 640, (2, anchors))
    raw[0, 2:4] = rng.uniform(8, 320, (2, anchors))
    raw[0, 4] = rng.uniform(0, 0.2, anchors)
    raw[0, 4, rng.choice(anchors, 250, replace=False)] = rng.permutation(np.linspace(0.26, 0.99, 250))
    raw[0, 5::3] = rng.uniform(-20, 660, (keypoints, anchors))  # some outside the image: clipped
    raw[0, 6::3] = rng.uniform(-20, 660, (keypoints, anchors))
    raw[0, 7::3] = rng.uniform(0, 1, (keypoints, anchors))
    return raw


@pytest.mark.parametrize("width, height", [(333, 777), (1280, 720)])
def test_yolov8_pose_answers_equal_ultralytics_postprocessing(width, height):
    """On the same raw output: ultralytics' non_max_suppression, scale_boxes and scale_coords
    (what PosePredictor.construct_result does)."""
    pytest.importorskip("ultralytics")
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    raw = synthetic_pose_output(width + height)
    _, placement = fit_square(Image.new("RGB", (width, height)), 640, "letterbox_center", YOLO_FILL)
    settings = Settings.from_mapping({"task": "keypoints", "detection_format": "yolov8_pose", "max_detections": 300,
                                      "pre_nms_top_k": 30000})
    ours = KeypointsTask(None, settings, ["person"]).finish([raw[0]], placement).to_json()
    theirs = non_max_suppression(torch.from_numpy(raw), settings.score_threshold, settings.iou_threshold, max_det=300,
                                 nc=1)[0]
    boxes = ops.scale_boxes((640, 640), theirs[:, :4].clone(), (height, width)).numpy()
    points = ops.scale_coords((640, 640), theirs[:, 6:].reshape(-1, 17, 3).clone(), (height, width)).numpy()
    assert 20 < len(ours) == len(theirs) < 250
    assert np.allclose([d["score"] for d in ours], theirs[:, 4].numpy(), atol=1e-6)
    assert np.abs(np.array([d["box"] for d in ours]) - boxes).max() <= 0.01
    ours_points = np.array([d["keypoints"] for d in ours])
    assert np.abs(ours_points[..., :2] - points[..., :2]).max() <= 0.01
    assert np.abs(ours_points[..., 2] - points[..., 2]).max() <= 1e-4
