"""The speed-ups keep the answers: the edge-only mask upsampling equals resizing every class, a
batch prepared on several threads equals one prepared serially (the AOTInductor (.pt2) backend,
whose export compiles with g++: tests/slow/test_pt2.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TOY_SETTINGS, jpeg, load_task
from tsvision.serving.geometry import Placement
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task
from tsvision.serving.tasks.segmentation import upsample_argmax


def reference_upsample(logits: np.ndarray, placement: Placement) -> np.ndarray:
    """The previous implementation: every class resized bilinearly (C×H×W); the argmax follows."""
    import math

    _, out_h, out_w = logits.shape
    rows = min(out_h, math.ceil(placement.content_height * out_h / placement.input_height))
    cols = min(out_w, math.ceil(placement.content_width * out_w / placement.input_width))
    region = torch.from_numpy(np.ascontiguousarray(logits[:, :rows, :cols]))[None]
    full = F.interpolate(region, size=(placement.height, placement.width), mode="bilinear", align_corners=False)
    return full[0].numpy()


def assert_same_mask(fast: np.ndarray, full: np.ndarray) -> None:
    """Equal to the argmax of ``full``, except where its two best classes tie within float rounding."""
    reference = full.argmax(0)
    assert fast.shape == reference.shape
    ys, xs = np.nonzero(fast != reference)
    if ys.size:
        top2 = np.sort(full[:, ys, xs], axis=0)[-2:]
        assert np.all(top2[1] - top2[0] <= 1e-5 * np.maximum(1, np.abs(top2[1]))), (ys.size, (top2[1] - top2[0]).max())
    assert ys.size <= fast.size * 1e-4


@pytest.mark.parametrize("width,height,stretch", [(1280, 720, False), (333, 777, False), (300, 451, True),
                                                  (521, 520, True)])
def test_edge_only_upsampling_equals_resizing_every_class(width, height, stretch):
    size, classes = 520, 21
    generator = torch.Generator().manual_seed(width)
    # smooth blobs, like a real segmenter's logits: noise at 1/8 resolution, resized up
    coarse = torch.randn(1, classes, size // 8, size // 8, generator=generator) * 4
    logits = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    if stretch:
        placement = Placement(width, height, size, size, size)
    else:
        scale = size / max(width, height)
        placement = Placement(width, height, round(width * scale), round(height * scale), size)
    fast = upsample_argmax(logits, placement)
    assert fast.shape == (height, width)
    assert_same_mask(fast, reference_upsample(logits, placement))


def test_segmentation_answers_equal_the_reference_on_photos(exports, photos):
    task = load_task(exports / "segmentation", "onnx")
    for _name, photo in photos.items():
        array, placement = task.prepare(photo)
        logits = task.runtime.run(np.ascontiguousarray(
            ((array[None].astype(np.float32) / 255 - task.settings.mean) / task.settings.std).transpose(0, 3, 1, 2),
            dtype=np.float32))[0][0]
        assert_same_mask(upsample_argmax(logits, placement), reference_upsample(logits, placement))


@pytest.mark.parametrize("task_name", ["classification", "segmentation", "detection"])
def test_threaded_preparation_equals_serial(exports, photos, task_name):
    images = [jpeg(photo) for photo in photos.values()] * 2
    serial = load_task(exports / task_name, "onnx", preprocess_threads=1).run(images)
    threaded = load_task(exports / task_name, "onnx", preprocess_threads=4).run(images)
    assert threaded == serial


def test_several_workers_split_the_cores_between_their_runtimes(toy_exports):
    """threads: 0 means the runtime's default for one worker, each worker's share of the cores for several."""
    from tsvision.serving.tasks import runtime_threads

    assert runtime_threads(0, 1, cores=8) == 0 and runtime_threads(3, 4, cores=8) == 3
    assert runtime_threads(0, 2, cores=8) == 4 and runtime_threads(0, 3, cores=2) == 1
    folder = toy_exports / "segmentation"
    values = {"task": "segmentation", "labels": "labels.json", **TOY_SETTINGS["segmentation"], "streams": 1}
    from tsvision.serving.runtimes import available_cores

    for workers, expected in ((1, 0), (2, max(1, available_cores() // 2))):
        task = build_task(folder / "model.onnx", Settings.from_mapping(values), folder, workers)
        assert task.runtime._session.get_session_options().intra_op_num_threads == expected
        task.close()


def test_normalize_equals_the_previous_implementation_bit_for_bit():
    """``normalize`` moves the bytes into N×3×H×W order before converting them (3-4× faster); the
    float32 operations are the previous ones, so every value is the same to the bit."""
    from tsvision.serving.geometry import normalize

    def previous(batch, mean, std):
        scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32)))
        offset = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
        chw = batch.transpose(0, 3, 1, 2).astype(np.float32)
        chw *= scale[None, :, None, None]
        chw -= offset[None, :, None, None]
        return np.ascontiguousarray(chw)

    generator = np.random.default_rng(0)
    for batch in (generator.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8),
                  generator.random((2, 40, 30, 3), dtype=np.float32) * 255):  # bilinear_float's float input
        for mean, std in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0, 0, 0), (1, 1, 1))):
            fast = normalize(batch, mean, std)
            assert fast.flags.c_contiguous and fast.dtype == np.float32
            assert np.array_equal(fast, previous(batch, mean, std))


@pytest.mark.parametrize("classes", [1, 2, 21, 300])
def test_channel_argmax_equals_numpys(classes):
    from tsvision.serving.tasks.segmentation import channel_argmax

    rng = np.random.default_rng(classes)
    logits = rng.integers(-3, 4, size=(classes, 37, 53)).astype(np.float32)  # many ties between classes
    logits[:, 0, :5] = np.inf
    logits[min(1, classes - 1), 1, :7] = -np.inf
    assert np.array_equal(channel_argmax(logits), logits.argmax(0))
    logits[classes // 2, 2, 3] = np.nan  # NumPy's rule: the first NaN wins
    logits[0, 4, 4] = np.nan
    assert np.array_equal(channel_argmax(logits), logits.argmax(0))


@pytest.mark.parametrize("threshold", [-1.0, 0.25, 0.9, 2.0])
def test_best_class_equals_the_argmax_of_every_row(threshold):
    from tsvision.serving.ops import best_class

    rng = np.random.default_rng(7)
    raw = rng.integers(0, 5, size=(84, 500)).astype(np.float32) / 4  # YOLOv8's C×A layout, many ties
    raw[10, 3] = np.nan
    scores = raw[4:].T  # the transposed view decode_yolov8 passes
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), classes]
    expected_keep = np.nonzero(best > threshold)[0]
    keep, kept_scores, kept_classes = best_class(scores, threshold)
    assert np.array_equal(keep, expected_keep)
    assert np.array_equal(kept_classes, classes[expected_keep]) and kept_classes.dtype == np.int64
    assert np.array_equal(kept_scores, best[expected_keep].astype(np.float32)) and kept_scores.dtype == np.float32
