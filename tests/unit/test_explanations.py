"""Explanations in-process (the handler through TorchServe's own ``Context``): the saliency maps of
the quadrant toy (tests/toy_models.py), whose classes each read one known region, on both backends;
the options, their limits, pictures, bad images inside a batch, a worker without captum. The same
over the session's TorchServe: tests/e2e/test_explanations.py."""

from __future__ import annotations

import base64
import io
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import png
from tests.scenes import quadrant_scene
from tests.toy_models import QUADRANT_SETTINGS
from tsvision.serving.handler import ImageClassifier
from tsvision.tools.archive.local_worker import LocalWorker

MODEL_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
PNG = {"body": {"content-type": "image/png"}}
EXPLAIN = {**PNG, "explain": "True"}


@pytest.fixture(scope="module", params=list(MODEL_FILES))
def worker(request, explain_toys):
    return LocalWorker(ImageClassifier, explain_toys / "classification", MODEL_FILES[request.param],
                       {"handler": QUADRANT_SETTINGS}, name="quadrants")


@pytest.fixture(scope="module")
def workers(explain_toys):
    return {backend: LocalWorker(ImageClassifier, explain_toys / "classification", name, {"handler": QUADRANT_SETTINGS})
            for backend, name in MODEL_FILES.items()}


def explain(worker, body, headers=None):
    """One explanation request: raw PNG bytes, or a JSON body (options beside the image)."""
    if isinstance(body, dict):
        return worker.predict([{"body": body}], [{"body": {"content-type": "application/json"}, "explain": "True",
                                                  **(headers or {})}])[0]
    return worker.predict([{"body": body}], [{**EXPLAIN, **(headers or {})}])[0]


def with_options(image: Image.Image, **options) -> dict:
    return {"data": base64.b64encode(png(image)).decode("ascii"), **options}


def share(grid: np.ndarray, rows: slice, columns: slice) -> float:
    return float(grid[rows, columns].sum() / grid.sum())


def test_the_map_points_at_the_region_the_explained_class_reads(worker):
    backend = "torchscript" if worker.handler.task.runtime.name == "torchscript" else "onnx"
    scene = quadrant_scene()
    answer = explain(worker, png(scene))
    assert answer.status == 200, answer.body
    body = answer.json()
    assert (body["label"], body["index"]) == ("red corner", 0) and body["score"] > 0.9
    assert body["method"] == {"torchscript": "integrated_gradients", "onnx": "occlusion"}[backend]
    heat = body["heatmap"]
    grid = np.array(heat["values"])
    assert (heat["width"], heat["height"]) == (32, 32) == grid.shape and body["image_size"] == [128, 128]
    assert body["region"] == [0, 0, 128, 128] and grid.max() == 1.0
    # The toy's class 0 reads the top-left quadrant only: cells 0..15 x 0..15 of the 32x32 grid.
    minimum = 0.999 if backend == "torchscript" else 0.9  # occlusion windows straddle the edge
    assert share(grid, slice(0, 16), slice(0, 16)) >= minimum
    # The requested class, by name or by index, moves the map to the region it reads.
    for target in ("green corner", 1, "1"):
        other = explain(worker, with_options(scene, target=target)).json()
        grid = np.array(other["heatmap"]["values"])
        assert (other["label"], other["index"]) == ("green corner", 1) and other["score"] < 0.1
        assert share(grid, slice(0, 16), slice(16, 32)) >= minimum
    # The PNG is the same grid, one grey level per cell.
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(heat["png"]))), dtype=np.float64) / 255
    assert picture.shape == (32, 32) and np.abs(picture - np.array(heat["values"])).max() <= 0.003


def test_integrated_gradients_and_occlusion_are_each_the_same_on_both_backends(workers):
    """Occlusion on TorchScript equals occlusion on ONNX Runtime (same forward passes), and the
    Integrated Gradients map of the linear toy is exactly its region, its completeness gap zero."""
    scene = png(quadrant_scene())
    onnx = explain(workers["onnx"], {"data": base64.b64encode(scene).decode(), "window": 16, "stride": 8}).json()
    script = explain(workers["torchscript"], {"data": base64.b64encode(scene).decode(), "method": "occlusion",
                                              "window": 16, "stride": 8}).json()
    assert onnx["parameters"] == script["parameters"] == {"window": 16, "stride": 8, "baseline": "mean colour",
                                                          "occlusions": 49}
    assert np.abs(np.array(onnx["heatmap"]["values"]) - np.array(script["heatmap"]["values"])).max() <= 0.002
    gradients = explain(workers["torchscript"], with_options(quadrant_scene(), steps=8)).json()
    assert gradients["parameters"] == {"steps": 8, "baseline": "mean colour"}
    assert gradients["convergence_delta"] < 1e-4
    grid = np.array(gradients["heatmap"]["values"])
    # Uniform inside the quadrant (its edge pixels are blended with the grey by the resize), zero outside.
    assert grid[:15, :15].min() > 0.99 and grid[16:].max() == grid[:, 16:].max() == 0


def test_the_map_keeps_the_photos_aspect_and_is_empty_where_the_model_did_not_look(workers):
    """A 192x128 photo: the toy sees its centre 128x128 square (x 32..160); the grid is 32x21 over the
    whole photo, zero in the columns left and right of the square."""
    scene = quadrant_scene(192, 128)
    for worker in workers.values():
        body = explain(worker, png(scene)).json()
        grid = np.array(body["heatmap"]["values"])
        assert grid.shape == (21, 32) and (body["heatmap"]["width"], body["heatmap"]["height"]) == (32, 21)
        assert body["image_size"] == [192, 128] and body["region"] == [32, 0, 160, 128]
        assert grid[:, :5].max() == grid[:, 27:].max() == 0  # cells 6 px wide: columns 0..4 end at x 30
        row, column = np.unravel_index(np.argmax(grid), grid.shape)
        assert row < 10 and 5 <= column < 16, (row, column)


def test_a_picture_is_the_map_over_the_photo(worker):
    scene = quadrant_scene(192, 128)
    for headers, body in (({"Accept": "image/png"}, png(scene)), ({}, with_options(scene, format="png"))):
        answer = explain(worker, body, headers)
        assert answer.status == 200 and answer.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(answer.body))
        assert picture.size == scene.size
        change = np.abs(np.asarray(picture, dtype=np.float64) - np.asarray(scene, dtype=np.float64)).sum(axis=2)
        # The heat is drawn where the red corner is (x 32..96, y 0..64), the rest of the photo barely changes.
        assert change[8:56, 40:88].mean() > 100 and change[80:, :].mean() < 20 and change[:, 170:].mean() < 20


def test_options_over_their_limits_get_a_400_naming_them(workers):
    scene = quadrant_scene()
    cases = [
        ("torchscript", {"steps": 1000}, 400, "BadOption", "'steps'"),
        ("torchscript", {"steps": 0}, 400, "BadOption", "'steps'"),
        ("torchscript", {"window": 8}, 400, "BadOption", "'window'"),
        ("onnx", {"steps": 8}, 400, "BadOption", "integrated_gradients"),
        ("onnx", {"window": 1, "stride": 1}, 400, "BadOption", "at most 1024"),
        ("onnx", {"window": 65}, 400, "BadOption", "'window'"),
        ("onnx", {"stride": "fast"}, 400, "BadOption", "'stride'"),
        ("onnx", {"target": "purple"}, 400, "BadOption", "red corner"),
        ("onnx", {"target": 3}, 400, "BadOption", "'target'"),
        ("onnx", {"method": "lime"}, 400, "BadOption", "occlusion"),
        ("onnx", {"top_k": 2}, 400, "UnknownOption", "'top_k'"),
        ("onnx", {"method": "integrated_gradients"}, 501, "NotSupported", "TorchScript"),
    ]
    for backend, options, status, kind, words in cases:
        answer = explain(workers[backend], with_options(scene, **options))
        body = answer.json()
        assert (answer.status, body["type"]) == (status, kind) and words in body["message"], (backend, options, body)


def test_a_bad_image_is_its_own_4xx_beside_explanations_and_predictions(worker):
    scene = png(quadrant_scene())
    rows = [{"body": scene}, {"body": b"GIF89a cut"}, {"body": scene},
            {"body": {"instances": [base64.b64encode(scene).decode(), "bm90IGFuIGltYWdl"]}},
            {"body": {"instances": [base64.b64encode(scene).decode()] * 2}}]
    json_explain = {"body": {"content-type": "application/json"}, "explain": "True"}
    answers = worker.predict(rows, [EXPLAIN, EXPLAIN, PNG, json_explain, json_explain])
    assert [a.status for a in answers] == [200, 400, 200, 400, 200]
    assert answers[0].json()["label"] == "red corner" and answers[1].json()["type"] == "UnreadableImage"
    assert [p["label"] for p in answers[2].json()] == ["red corner", "blue floor", "green corner"]
    assert "image 1 of 2" in answers[3].json()["message"]
    both = answers[4].json()["explanations"]
    assert len(both) == 2 and both[0]["heatmap"] == both[1]["heatmap"]


def test_a_worker_without_captum_still_predicts_and_says_what_explanations_need(workers, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    scene = png(quadrant_scene())
    refused, predicted = workers["torchscript"].predict([{"body": scene}, {"body": scene}], [EXPLAIN, PNG])
    assert (refused.status, refused.json()["type"]) == (501, "NotSupported")
    assert "captum" in refused.json()["message"] and "occlusion" in refused.json()["message"]
    assert predicted.status == 200 and predicted.json()[0]["label"] == "red corner"
    occluded = explain(workers["torchscript"], with_options(quadrant_scene(), method="occlusion"))
    assert occluded.status == 200 and occluded.json()["label"] == "red corner"

