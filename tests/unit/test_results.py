"""Answers as result objects: drawn from their arrays on the image decoded once, settings passed per
image (no thread-local), and the micro-batching wrapper answering as the plain steps."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
from PIL import Image, ImageDraw

from tests.checks import assert_same_answer
from tests.helpers import load_task, png
from tests.scenes import bright_box_scene
from tsvision.serving.batching import MicroBatching, PendingBatch
from tsvision.serving.drawing import box_colour
from tsvision.serving.errors import RequestError
from tsvision.serving.masks import decode_mask
from tsvision.serving.results import Detections, Instances
from tsvision.serving.service import answer_requests

GREY = (100, 100, 100)


def ring(height: int = 60, width: int = 80) -> np.ndarray:
    """A square ring: 40×40 with a 20×20 hole, at (20, 10)."""
    mask = np.zeros((height, width), dtype=bool)
    mask[10:50, 20:60] = True
    mask[20:40, 30:50] = False
    return mask


def test_a_polygon_answer_keeps_its_hole_when_drawn():
    """The polygon answer writes outer rings only (docs/options.md), but the picture is drawn from
    the mask itself: the hole shows the photo, the ring is tinted."""
    mask = ring()
    result = Instances(["thing", "ring"], np.array([[20.0, 10.0, 60.0, 50.0]]), np.array([0.9]), np.array([1]),
                       mask[None], "polygon")
    answer = result.to_json()
    assert answer[0]["mask"] == [[20, 10, 60, 10, 60, 50, 20, 50]]  # the outer ring, as documented
    assert decode_mask(answer[0]["mask"], *mask.shape)[30, 40]  # so a client decoding it fills the hole
    photo = Image.new("RGB", (80, 60), GREY)
    pixels = np.asarray(result.draw(photo)).astype(int)
    assert tuple(pixels[30, 40]) == GREY  # the middle of the hole: the photo
    tinted = np.round(0.55 * np.array(GREY) + 0.45 * np.array(box_colour(1))).astype(int)
    assert np.abs(pixels[45, 25] - tinted).max() <= 1  # inside the ring, away from the box outline


def test_a_segmentation_picture_keeps_the_hole_of_a_polygon_answer(toy_exports):
    """The toy segmenter on a red ring around a black hole, answered as polygons and drawn: the
    hole is background (the photo shows), the ring is class 1's colour over the photo."""
    task = load_task(toy_exports / "segmentation", "onnx")
    image = Image.new("RGB", (200, 160), (0, 0, 0))
    pen = ImageDraw.Draw(image)
    pen.rectangle([40, 30, 159, 129], fill=(230, 20, 20))
    pen.rectangle([80, 60, 119, 99], fill=(0, 0, 0))
    json_answer, drawn = answer_requests(task, [{"body": png(image), "mask_format": "polygon"},
                                                {"body": png(image), "mask_format": "polygon", "format": "png"}])
    assert json_answer.status == 200 and drawn.status == 200, (json_answer.body, drawn.body)
    assert "mask" not in json_answer.body and {c["index"] for c in json_answer.body["classes"]} == {0, 1}
    picture = np.asarray(Image.open(io.BytesIO(drawn.body)).convert("RGB"))
    assert tuple(picture[80, 100]) == (0, 0, 0)  # the hole: background keeps the photo
    assert tuple(picture[45, 50]) != (230, 20, 20) and tuple(picture[45, 50]) != (0, 0, 0)  # the ring: blended


@pytest.fixture(scope="module")
def toy_detector(toy_exports):
    task = load_task(toy_exports / "detection", "onnx", preprocess_threads=2, micro_batch=0)  # plain steps
    yield task
    task.close()


def test_a_picture_request_decodes_its_image_once(toy_detector, monkeypatch):
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    data = png(bright_box_scene(333, 777)[0])
    response = answer_requests(toy_detector, [{"body": data, "format": "png"}])[0]
    assert response.status == 200 and response.content_type == "image/png"
    assert len(opened) == 1  # prepare's decoding; the picture is drawn on that image
    (found,) = answer_requests(toy_detector, [{"body": data}])[0].body
    picture = np.asarray(real_open(io.BytesIO(response.body)).convert("RGB"))
    x1, y1 = (round(v) for v in found["box"][:2])
    edge = [tuple(p) for p in picture[y1 + 60, x1 - 1:x1 + 3]]
    assert box_colour(found["index"]) in edge  # the box's left edge, below its label


def test_each_request_of_a_batch_is_finished_with_its_own_settings(toy_detector):
    """No thread-local: the images of one batch are finished on the pool's threads at once, each
    with its request's settings, and each answer is the one its request gets alone."""
    assert not any(isinstance(value, threading.local) for value in vars(toy_detector).values())
    scenes = [png(bright_box_scene(w, h)[0]) for w, h in ((333, 777), (640, 480), (777, 333), (500, 500))]
    rows = [{"body": scenes[0]}, {"body": scenes[1], "score_threshold": "1"},
            {"body": scenes[2], "classes": "background"}, {"body": scenes[3], "max_detections": "1"},
            {"body": scenes[0], "score_threshold": "1"}, {"body": scenes[1]}]
    together = answer_requests(toy_detector, rows)
    alone = [answer_requests(toy_detector, [row])[0] for row in rows]
    assert [r.status for r in together] == [200] * len(rows)
    assert [len(r.body) for r in together] == [1, 0, 0, 1, 0, 1]
    for a, b in zip(together, alone):
        assert_same_answer("detection", a.body, b.body)


def test_the_micro_batching_wrapper_answers_as_the_plain_steps(toy_detector):
    data = [png(bright_box_scene(w, h)[0]) for w, h in ((333, 777), (640, 480), (777, 333))]
    items = [data[0], b"not an image", data[1], data[2], b"", data[0]]
    plain = toy_detector.run(items)
    with ThreadPoolExecutor(2) as pool:
        wrapper = MicroBatching(toy_detector, 2, pool)
        batch = wrapper.prepare_batch(items, [], [])
        assert isinstance(batch, PendingBatch) and len(batch.pending) == len(items)
        results = wrapper.finish_batch(wrapper.infer(batch))
    assert all(isinstance(r, (Detections, RequestError)) for r in results)
    wrapped = toy_detector.answers(results)
    assert [getattr(a, "status", 200) for a in wrapped] == [200, 400, 200, 200, 400, 200]
    for a, b in zip(plain, wrapped):
        if isinstance(a, RequestError):
            assert (a.status, a.kind) == (b.status, b.kind)
        else:
            assert_same_answer("detection", a, b)
            assert len(a) == 1


def test_a_pipelined_batch_waited_for_runs_as_one_plain_pass(toy_exports, toy_detector):
    """``task.prepared`` (for callers that read ``inputs``) turns a pipelined batch into the plain
    one: one forward pass over every live image, the plain answers."""
    data = [png(bright_box_scene(w, h)[0]) for w, h in ((333, 777), (640, 480), (777, 333))]
    items = [data[0], b"", data[1], data[2], data[0]]
    task = load_task(toy_exports / "detection", "onnx", preprocess_threads=2, micro_batch=2)
    try:
        batch = task.prepare_batch(items)
        assert isinstance(batch, PendingBatch)
        batch = task.prepared(batch)
        assert batch.inputs.shape[0] == 4 and not batch.pending
        got = task.answers(task.finish_batch(task.infer(batch)))
    finally:
        task.close()
    for a, b in zip(toy_detector.run(items), got):
        if isinstance(a, RequestError):
            assert (a.status, a.kind) == (b.status, b.kind)
        else:
            assert_same_answer("detection", a, b)
            assert len(a) == 1
