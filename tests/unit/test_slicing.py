"""Sliced inference (tsvision/serving/slicing.py, tasks/slices.py) against sahi 0.12.8, its reference:
the slice grid, each merge on the same detections, and whole answers against
``sahi.predict.get_sliced_prediction`` around the same model; a toy whose answer is known (the
whole-image pass finds nothing, the sliced one every planted square), instance masks, the options'
400s in a batch whose other requests still answer."""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import torch

from tests.helpers import png
from tests.slice_toys import SQUARE_LABELS, BrightSquares, ModuleRuntime, scene
from tsvision.serving.masks import decode_mask
from tsvision.serving.service import answer_requests
from tsvision.serving.settings import Settings
from tsvision.serving.slicing import count_windows, merge, parse_slice_size, slice_windows
from tsvision.serving.tasks import task_class
from tsvision.serving.tasks.slices import PatchMasks

SIZE = 320  # the toy's input: slices of 320 are seen at scale 1
TOY = {"task": "detection", "detection_format": "yolov8", "input_size": SIZE, "score_threshold": 0.5,
       "iou_threshold": 0.5, "max_detections": 300}
SAHI_MERGES = {"greedy_nmm": "GREEDYNMM", "nmm": "NMM", "nms": "NMS"}


@pytest.fixture(scope="module")
def toy():
    settings = Settings.from_mapping(TOY)
    return task_class(settings)(ModuleRuntime(BrightSquares(SIZE)), settings, SQUARE_LABELS)


def sliced(task, **options) -> object:
    """The task's settings with the request's slicing options applied, as ``options.resolve`` does."""
    values = {**options}
    if "slice_size" in values:
        values["slice_size"] = parse_slice_size(values["slice_size"])
    return dataclasses.replace(task.settings, **values)


def answer(task, image, **options) -> list:
    row = {"body": png(image), **{k: str(v).encode() for k, v in options.items()}}
    response = answer_requests(task, [row])[0]
    assert response.status == 200, response.body
    return response.body


def same_detections(ours: Sequence[dict], theirs: Sequence[Tuple[List[float], int, float]], tolerance: float = 1.0):
    """Same count, and each of ours paired one to one with one of theirs of the same class, box within
    ``tolerance`` px and score within 1e-4."""
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    left = list(theirs)
    for entry in ours:
        match = next((t for t in left if t[1] == entry["index"] and abs(t[2] - entry["score"]) < 1e-4
                      and np.abs(np.subtract(t[0], entry["box"])).max() <= tolerance), None)
        assert match is not None, (entry, sorted(left, key=lambda t: -t[2])[:5])
        left.remove(match)


# -- the grid ------------------------------------------------------------------------------------
@pytest.mark.parametrize("width, height, slice_w, slice_h, overlap", [
    (4000, 3000, 640, 640, 0.2), (1600, 1200, 320, 320, 0.2), (1000, 700, 512, 384, 0.25), (300, 200, 640, 640, 0.2),
    (641, 640, 640, 640, 0.0), (5000, 333, 256, 128, 0.5), (1023, 999, 100, 77, 0.33), (640, 640, 640, 640, 0.9)])
def test_slice_grid_is_sahis(width, height, slice_w, slice_h, overlap):
    pytest.importorskip("sahi", reason="the sahi reference (pip install -e '.[test]')")
    from sahi.slicing import get_slice_bboxes

    theirs = get_slice_bboxes(height, width, slice_h, slice_w, False, overlap, overlap)
    ours = slice_windows(width, height, slice_w, slice_h, overlap)
    assert [list(w) for w in ours] == theirs
    assert count_windows(width, height, slice_w, slice_h, overlap) == len(theirs)


def test_slice_size_is_read_as_sahi_users_write_it():
    assert parse_slice_size(640) == parse_slice_size("640") == parse_slice_size([640, 640]) == (640, 640)
    assert parse_slice_size("640x480") == parse_slice_size(" 640 X 480 ".lower()) == (640, 480)
    assert parse_slice_size(0) is parse_slice_size("none") is parse_slice_size(None) is None
    for bad in ("abc", "640x", -5, 16, "10x640", True, 1.5, [640]):
        with pytest.raises(ValueError):
            parse_slice_size(bad)
    settings = Settings.from_mapping({"task": "detection", "slice_size": "640x480", "slice_merge": "nms"})
    assert settings.slice_size == (640, 480) and Settings.from_mapping(settings.to_mapping()) == settings
    with pytest.raises(ValueError, match="slice_size"):
        Settings.from_mapping({"task": "classification", "slice_size": 640})
    with pytest.raises(ValueError, match="oriented"):
        Settings.from_mapping({"task": "detection", "detection_format": "yolov8_obb", "slice_size": 640})
    with pytest.raises(ValueError, match="slice_merge"):
        Settings.from_mapping({"task": "detection", "slice_merge": "wbf"})
    with pytest.raises(ValueError, match="slice_overlap"):
        Settings.from_mapping({"task": "detection", "slice_overlap": 1.0})


# -- the merge, on the same detections -------------------------------------------------------------
def crowded(seed: int, count: int = 120) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes in clusters (many overlaps, some nested, some equal scores), three classes."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(50, 950, size=(12, 2))
    picked = centres[rng.integers(0, len(centres), count)] + rng.normal(0, 12, size=(count, 2))
    sizes = rng.uniform(8, 60, size=(count, 2))
    boxes = np.clip(np.concatenate([picked - sizes / 2, picked + sizes / 2], axis=1), 0, 1000).astype(np.float32)
    scores = np.round(rng.uniform(0.3, 1.0, count), 2).astype(np.float32)  # rounded: ties happen
    return boxes, scores, rng.integers(0, 3, count)


@pytest.mark.parametrize("method", ["greedy_nmm", "nmm", "nms"])
@pytest.mark.parametrize("metric", ["ios", "iou"])
@pytest.mark.parametrize("agnostic", [False, True])
def test_merge_is_sahis_postprocess(method, metric, agnostic):
    pytest.importorskip("sahi", reason="the sahi reference (pip install -e '.[test]')")
    from sahi.postprocess.combine import GreedyNMMPostprocess, NMMPostprocess, NMSPostprocess
    from sahi.prediction import ObjectPrediction

    postprocess = {"greedy_nmm": GreedyNMMPostprocess, "nmm": NMMPostprocess, "nms": NMSPostprocess}[method]
    for seed in range(3):
        boxes, scores, classes = crowded(seed)
        found = merge(boxes, scores, classes, method, metric, 0.5, agnostic)
        predictions = [ObjectPrediction(bbox=[float(v) for v in b], category_id=int(c), score=float(s),
                                        category_name=str(c)) for b, s, c in zip(boxes, scores, classes)]
        theirs = postprocess(0.5, metric.upper(), agnostic)(predictions)
        assert len(found.scores) < len(scores)  # the case merges something
        same_detections([{"index": int(c), "score": float(s), "box": list(b)}
                         for b, s, c in zip(found.boxes, found.scores, found.classes)],
                        [(p.bbox.to_xyxy(), p.category.id, p.score.value) for p in theirs], tolerance=1e-3)


# -- whole answers against sahi.predict.get_sliced_prediction ---------------------------------------
def sahi_model(task):
    """A sahi ``DetectionModel`` whose prediction for an image (a slice) is the task's answer for it."""
    from PIL import Image
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class TaskModel(DetectionModel):
        def set_model(self, model, **kwargs) -> None:
            self.model = model

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self.model.run([Image.fromarray(image)])[0]

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=None,
                                                                     full_shape_list=None) -> None:
            from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

            shift = fix_shift_amount_list(shift_amount_list or [[0, 0]])[0]  # one image: [x, y] or [[x, y]]
            full = fix_full_shape_list(full_shape_list)[0] if full_shape_list else None
            self._object_prediction_list_per_image = [[
                ObjectPrediction(bbox=entry["box"], category_id=entry["index"], score=entry["score"],
                                 category_name=entry["label"], shift_amount=list(shift), full_shape=full)
                for entry in self._original_predictions]]

    return TaskModel(model=task, confidence_threshold=task.settings.score_threshold)


@pytest.mark.parametrize("merge_method, metric, threshold, whole", [
    ("greedy_nmm", "ios", 0.5, True), ("nmm", "iou", 0.5, True), ("nms", "iou", 0.3, False)])
def test_sliced_answer_is_sahis_get_sliced_prediction(toy, merge_method, metric, threshold, whole):
    """A scene of touching and clustered squares, so that slices cut objects and the merge has work.
    Slices of the toy's input size keep every box on whole pixels: sahi gets our per-slice answers
    as JSON (boxes to 0.01 px), and a cut square's half box is exactly at IoU 0.5 of the whole one,
    where a rounding would decide."""
    pytest.importorskip("sahi", reason="the sahi reference (pip install -e '.[test]')")
    from sahi.predict import get_sliced_prediction

    image, _ = scene(760, 600, 50, seed=3, spread=False)
    ours = answer(toy, image, slice_size=SIZE, slice_overlap=0.25, slice_merge=merge_method, slice_match_metric=metric,
                  slice_match_threshold=threshold, slice_whole_image=whole)
    theirs = get_sliced_prediction(image, sahi_model(toy), SIZE, SIZE, 0.25, 0.25, perform_standard_pred=whole,
                                   postprocess_type=SAHI_MERGES[merge_method], postprocess_match_metric=metric.upper(),
                                   postprocess_match_threshold=threshold, verbose=0).object_prediction_list
    assert len(ours) > 20
    same_detections(ours, [(p.bbox.to_xyxy(), p.category.id, p.score.value) for p in theirs])


# -- the known answer -------------------------------------------------------------------------------
def test_the_whole_image_misses_small_squares_the_slices_find_each(toy):
    image, planted = scene(1280, 960, 12, seed=7)
    assert answer(toy, image) == []  # shrunk four times, each square is ~3 px: the toy sees nothing
    found = answer(toy, image, slice_size=SIZE)
    assert len(found) == len(planted)
    for box, label in planted:
        near = [e for e in found if np.abs(np.subtract(e["box"], box)).max() <= 1.0]
        assert len(near) == 1 and near[0]["label"] == SQUARE_LABELS[label], (box, label, found)
    rectangular = answer(toy, image, slice_size="320x256", slice_overlap=0.3, slice_whole_image="false")
    assert sorted(e["box"] for e in rectangular) == sorted(e["box"] for e in found)


def test_sliced_instance_masks_are_in_original_pixels_and_built_one_at_a_time():
    settings = Settings.from_mapping({**TOY, "task": "instance_segmentation", "detection_format": "yolov8_seg",
                                      "slice_size": [SIZE, SIZE], "mask_format": "rle"})
    task = task_class(settings)(ModuleRuntime(BrightSquares(SIZE, masks=32)), settings, SQUARE_LABELS)
    image, planted = scene(1200, 900, 10, seed=11, sides=(14, 16))
    result = task.finish_batch(task.infer(task.prepare_batch([png(image)])))[0]
    assert isinstance(result.masks, PatchMasks)  # patches of each instance, not K full-size masks
    assert max(p.mask.size for p in result.masks.patches) <= 20 * 20
    found = result.to_json()
    assert len(found) == len(planted)
    for box, label in planted:
        entry = next(e for e in found if np.abs(np.subtract(e["box"], box)).max() <= 1.0)
        mask = decode_mask(entry["mask"], 900, 1200)
        x1, y1, x2, y2 = (int(v) for v in box)
        truth = np.zeros_like(mask)
        truth[y1:y2, x1:x2] = True
        assert (mask & truth).sum() / (mask | truth).sum() > 0.6, (box, mask.sum(), truth.sum())
        assert entry["label"] == SQUARE_LABELS[label]


class LargerScoresHigher(torch.nn.Module):
    """``BrightMaskRCNN`` with each detection scored 0.5 + its box's area / 10^6: a slice's piece of an
    object scores below the whole of it (a real detector's scores seldom tie; sahi's merges order ties
    by coordinates, so a small piece could keep the others apart)."""

    def __init__(self) -> None:
        super().__init__()
        from tests.instance_toys import BrightMaskRCNN

        self.toy = BrightMaskRCNN()

    def forward(self, images):
        detections = self.toy(images)
        for found in detections:
            x1, y1, x2, y2 = found["boxes"].unbind(-1)
            found["scores"] = found["scores"] * (0.5 + (x2 - x1) * (y2 - y1) / 1e6)
        return detections


@pytest.mark.parametrize("merge_method, whole", [("greedy_nmm", "true"), ("nmm", "false")])
def test_a_whole_torchvision_detector_answers_sliced_in_original_pixels(merge_method, whole):
    """The ``torchvision`` contract (images at their own size, one call per size): a Mask R-CNN toy
    that boxes all the bright pixels of what it sees; a rectangle across slice borders comes back as
    one instance, its box and mask exact: with the whole image its detection absorbs the pieces, without
    it the pieces merge in a chain (``nmm``)."""
    from PIL import Image

    from tests.instance_toys import TOY_INSTANCE_LABELS

    settings = Settings.from_mapping({"task": "instance_segmentation", "detection_format": "torchvision",
                                      "slice_size": 256, "mask_format": "rle"})
    task = task_class(settings)(ModuleRuntime(LargerScoresHigher()), settings, TOY_INSTANCE_LABELS)
    pixels = np.zeros((500, 700, 3), dtype=np.uint8)
    pixels[180:260, 190:420] = 255  # across the slices' borders (x 205, 256, 410; y 205, 244, 256)
    found = answer(task, Image.fromarray(pixels), slice_whole_image=whole, slice_merge=merge_method)
    assert len(found) == 1 and found[0]["box"] == [190.0, 180.0, 420.0, 260.0], found
    assert (decode_mask(found[0]["mask"], 500, 700) == (pixels[..., 0] > 0)).all()


def test_an_images_slices_fail_together():
    """Images of several sizes go to the model one call per size: when the call of a sliced image's
    whole-image pass fails, the image is that request's 500, not an answer from its other slices;
    another request, whose call worked, is answered."""
    from PIL import Image

    from tests.instance_toys import TOY_INSTANCE_LABELS
    from tsvision.serving.batching import BySize

    class FailsOnLargeImages(ModuleRuntime):
        def run_images(self, images):
            if max(image.shape[-1] for image in images) > 300:
                raise RuntimeError("out of memory")
            return super().run_images(images)

    settings = Settings.from_mapping({"task": "instance_segmentation", "detection_format": "torchvision"})
    task = task_class(settings)(FailsOnLargeImages(LargerScoresHigher()), settings, TOY_INSTANCE_LABELS)
    task.batching = BySize(images=True, whole_batch=False)  # a failing call fails only its own images
    pixels = np.zeros((500, 700, 3), dtype=np.uint8)
    pixels[180:260, 190:420] = 255
    small = np.zeros((200, 200, 3), dtype=np.uint8)
    small[50:80, 60:90] = 255
    responses = answer_requests(task, [{"body": png(Image.fromarray(pixels)), "slice_size": b"256"},
                                       {"body": png(Image.fromarray(small))}])
    assert [r.status for r in responses] == [500, 200], [r.body for r in responses]
    assert responses[0].body["type"] == "InferenceError" and responses[1].body[0]["box"] == [60.0, 50.0, 90.0, 80.0]


def test_sliced_keypoints_come_back_in_original_pixels():
    """The yolov8_pose toy (the bright rectangle's corners and centre) on slices: the rectangle lies in
    one slice only, off its origin, so its keypoints are right only if moved by that slice's offset."""
    from PIL import Image

    from tests.keypoint_checks import TOY_LABELS, TOY_SETTINGS
    from tests.keypoint_toys import BrightRectanglePose, true_keypoints

    settings = Settings.from_mapping({**TOY_SETTINGS["toy_pose"], "input_size": SIZE, "slice_size": SIZE,
                                      "slice_whole_image": False})
    task = task_class(settings)(ModuleRuntime(BrightRectanglePose(SIZE)), settings, TOY_LABELS["toy_pose"])
    pixels = np.zeros((700, 900, 3), dtype=np.uint8)
    box = [400.0, 100.0, 440.0, 130.0]  # only the slice at (256, 0) holds it
    pixels[100:130, 400:440] = 255
    found = answer(task, Image.fromarray(pixels))
    assert len(found) == 1 and found[0]["box"] == box, found
    assert np.abs(np.array(found[0]["keypoints"])[:, :2] - true_keypoints(box)).max() <= 1e-6


# -- options: 400s per request, the others answer ----------------------------------------------------
def test_bad_slicing_options_are_400s_of_their_own_request(toy):
    image, planted = scene(1280, 960, 6, seed=5)
    data = png(image)
    rows = [{"body": data, "slice_size": b"320"}, {"body": data, "slice_size": b"abc"},
            {"body": data, "slice_overlap": b"1.0"}, {"body": data, "slice_merge": b"wbf"},
            {"body": data, "slice_size": b"32", "slice_overlap": b"0.5"}, {"body": data, "slice_whole_image": b"maybe"},
            {"body": data}, {"body": data, "slice_size": b"320", "slice_match_metric": b"iou"}]
    responses = answer_requests(toy, rows)
    assert [r.status for r in responses] == [200, 400, 400, 400, 400, 400, 200, 200]
    kinds = [r.body.get("type") for r in responses if r.status == 400]
    assert kinds == ["BadOption", "BadOption", "BadOption", "TooManySlices", "BadOption"]
    assert "slice_size" in responses[1].body["message"] and "640x480" in responses[1].body["message"]
    assert "max_slices" in responses[4].body["message"]
    assert len(responses[0].body) == len(planted) and responses[6].body == []
    assert responses[7].body == responses[0].body  # far-apart squares: IoU and IoS merge them alike
