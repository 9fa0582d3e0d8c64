"""``/explanations/NAME`` on the session's TorchServe: the quadrant toy (tests/toy_models.py) archived
for TorchScript (Integrated Gradients) and ONNX Runtime (occlusion), registered on the server; the
maps point at the region the explained class reads, a picture comes back for ``Accept: image/png``,
the limits are 400s with JSON, and a bad image is its own 400 inside a batch. In-process details:
tests/unit/test_explanations.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from PIL import Image

from tests.e2e.conftest import registered
from tests.helpers import BACKENDS, all_at_once, png
from tests.scenes import quadrant_scene

METHODS = {"torchscript": "integrated_gradients", "onnx": "occlusion"}


@pytest.fixture(scope="module")
def quadrants(served, explain_toys):
    """The server, with ``quadrants_torchscript`` and ``quadrants_onnx`` registered (300 ms batch delay)."""
    folder = explain_toys / "classification"
    archives = {f"quadrants_{backend}": ["--model", str(folder / filename), "--settings", str(folder / "settings.json"),
                                         "--labels", str(folder / "labels.json"), "--max-batch-delay", "300"]
                for backend, filename in BACKENDS.items()}
    with registered(served, archives):
        yield served


def post(server, path: str, **kwargs) -> requests.Response:
    headers = {**server.headers("inference"), **kwargs.pop("headers", {})}
    return requests.post(f"{server.inference_url}/{path}", headers=headers, timeout=120, **kwargs)


def share(values, rows: slice, columns: slice) -> float:
    grid = np.array(values)
    return float(grid[rows, columns].sum() / grid.sum())


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_the_served_map_points_at_the_region_the_class_reads(quadrants, backend):
    scene = png(quadrant_scene())
    top = post(quadrants, f"explanations/quadrants_{backend}", data=scene, headers={"Content-Type": "image/png"})
    assert top.status_code == 200 and top.headers["content-type"].startswith("application/json"), top.text
    body = top.json()
    assert (body["label"], body["method"]) == ("red corner", METHODS[backend])
    assert (body["heatmap"]["width"], body["heatmap"]["height"]) == (32, 32)
    assert share(body["heatmap"]["values"], slice(0, 16), slice(0, 16)) >= 0.9
    # A class by name in a JSON body, by index in a form field: the map moves to the top-right quadrant.
    by_name = post(quadrants, f"explanations/quadrants_{backend}",
                   json={"data": base64.b64encode(scene).decode("ascii"), "target": "green corner"})
    by_index = post(quadrants, f"explanations/quadrants_{backend}", files={"data": ("scene.png", scene, "image/png")},
                    data={"target": "1"})
    for answer in (by_name, by_index):
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] == "green corner"
        assert share(answer.json()["heatmap"]["values"], slice(0, 16), slice(16, 32)) >= 0.9
    # The same model still predicts.
    predicted = post(quadrants, f"predictions/quadrants_{backend}", data=scene, headers={"Content-Type": "image/png"})
    assert predicted.status_code == 200 and predicted.json()[0]["label"] == "red corner"


def test_a_served_explanation_as_a_picture(quadrants):
    scene = quadrant_scene(192, 128)
    answer = post(quadrants, "explanations/quadrants_onnx", data=png(scene),
                  headers={"Content-Type": "image/png", "Accept": "image/png"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text
    picture = Image.open(io.BytesIO(answer.content))
    assert picture.size == (192, 128)
    change = np.abs(np.asarray(picture.convert("RGB"), dtype=np.float64) - np.asarray(scene, dtype=np.float64))
    assert change.sum(axis=2)[8:56, 40:88].mean() > 100 and change.sum(axis=2)[80:].mean() < 20


def test_served_limits_and_a_bad_image_inside_a_batch(quadrants):
    scene = png(quadrant_scene())
    data = base64.b64encode(scene).decode("ascii")
    for model, options, words in (("quadrants_torchscript", {"steps": 100000}, "'steps'"),
                                  ("quadrants_onnx", {"window": 2, "stride": 1}, "at most 1024"),
                                  ("quadrants_onnx", {"method": "integrated_gradients"}, "TorchScript")):
        answer = post(quadrants, f"explanations/{model}", json={"data": data, **options})
        assert answer.status_code in (400, 501) and words in answer.json()["message"], answer.text
    # Released together (300 ms batch delay): explanations, a broken image and a prediction.
    sends = [("explanations", scene), ("explanations", b"\x89PNG\r\n cut short"), ("predictions", scene),
             ("explanations", scene)]
    answers = all_at_once(lambda s: post(quadrants, f"{s[0]}/quadrants_onnx", data=s[1],
                                         headers={"Content-Type": "image/png"}), sends)
    assert [a.status_code for a in answers] == [200, 400, 200, 200], [a.text for a in answers]
    assert answers[1].json()["type"] == "UnreadableImage"
    assert answers[0].json() == answers[3].json() and answers[2].json()[0]["label"] == "red corner"
    assert max(int(a.headers["X-Batch-Size"]) for a in answers) >= 2  # at least two shared a batch
