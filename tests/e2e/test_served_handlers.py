"""The handler classes served by a real TorchServe: a user's handler file, describe,
explanations refused, and the handler's metrics at the Prometheus endpoint."""

from __future__ import annotations

import json

import pytest
import requests

from tests.helpers import jpeg
from tests.scenes import bright_box_scene

pytestmark = pytest.mark.e2e


def post(served, path: str, body: bytes, content_type: str = "image/jpeg") -> requests.Response:
    return requests.post(f"{served.inference_url}/{path}", data=body, timeout=60,
                         headers={"Content-Type": content_type, **served.headers("inference")})


def test_a_users_handler_file_is_archived_served_and_changes_only_its_step(served):
    scene, truth = bright_box_scene(1280, 720)
    body = jpeg(scene, quality=95)
    plain = post(served, "predictions/toy_detection_onnx", body).json()
    people = post(served, "predictions/person_counter", body)
    cats = post(served, "predictions/cat_counter", body)
    assert people.status_code == cats.status_code == 200
    people, cats = people.json(), cats.json()
    assert people["count"] == 1 and cats == {"count": 0, "detections": []}
    [person] = people["detections"]
    assert person["box"] == plain[0]["box"] and person["score"] == plain[0]["score"] and person["label"] == "person"
    x1, y1, x2, y2 = person["box"]
    assert person["area"] == pytest.approx((x2 - x1) * (y2 - y1), abs=0.01)
    assert max(abs(a - b) for a, b in zip(person["box"], truth)) <= 2
    # Everything else is still ObjectDetector's: a bad image is that request's JSON 400.
    bad = post(served, "predictions/person_counter", b"\xff\xd8\xff\xe0 cut short", "application/octet-stream")
    assert bad.status_code == 400 and bad.json()["type"] == "UnreadableImage"


def test_describe_answers_what_the_model_is(served):
    response = requests.get(f"{served.management_url}/models/person_counter?customized=true",
                            headers=served.headers("management"), timeout=60)
    assert response.status_code == 200, response.text
    about = response.json()[0]["customizedMetadata"]
    about = json.loads(about) if isinstance(about, str) else about  # the frontend parses JSON text
    assert about["handler"] == "PeopleCounter" and about["task"] == "detection" and about["runtime"] == "onnx"
    assert about["labels"] == ["background", "person"] and about["device"] == "cpu" and about["settings"]["profile"] is True


def test_explanations_get_a_clear_not_supported_answer(served):
    scene, _ = bright_box_scene(333, 777)
    response = post(served, "explanations/toy_detection_onnx", jpeg(scene))
    assert response.status_code == 501, response.text
    assert response.json()["type"] == "NotSupported"
    assert post(served, "predictions/toy_detection_onnx", jpeg(scene)).status_code == 200


def test_the_handlers_metrics_and_per_step_timings_reach_prometheus(served):
    scene, _ = bright_box_scene(640, 480)
    for _ in range(3):
        assert post(served, "predictions/person_counter", jpeg(scene)).status_code == 200
    assert post(served, "predictions/person_counter", b"", "application/octet-stream").status_code == 400
    text = requests.get(f"{served.metrics_url}/metrics", timeout=30, verify=served.verify).text
    lines = [line for line in text.splitlines() if 'ModelName="person_counter"' in line]
    for metric in ("ts_handler_preprocess", "ts_handler_inference", "ts_handler_postprocess", "DecodeTime",
                   "ImagesPerRequest", "RequestErrors"):
        assert any(line.startswith(metric) for line in lines), (metric, lines)
    errors = [line for line in lines if line.startswith("RequestErrors")]
    assert any('ErrorType="EmptyInput"' in line for line in errors), errors
