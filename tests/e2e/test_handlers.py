"""The handler classes over each transport (in-process through TorchServe's own ``Context``, and
served): per-request statuses, content types and batch sizes in a mixed batch, a user's handler
file changing one step, explanations (a classifier's answered, a detector's refused), describe,
and the handler's metrics. What exists in-process only (handler files refused at load, a hook
that raises, gRPC's stream marker on the rows, devices) is in tests/unit/test_handlers.py."""

from __future__ import annotations

import pytest

from tests.helpers import jpeg, png
from tests.scenes import bright_box_scene
from tests.transports import CONTENT_TYPE, DESCRIBE, EXPLAIN, HEADERS, ONE_BATCH, Request

TOY = "toy_detection_onnx"


def test_a_mixed_batch_gets_a_status_content_type_and_body_per_request(transport):
    transport.need(CONTENT_TYPE)
    scene, truth = bright_box_scene(333, 777)
    answers = transport.together(TOY, [Request(png(scene), "image/png"), Request(b"GIF89a truncated", "image/gif"),
                                       Request(b"<html>", "text/html"),
                                       Request(png(scene), "application/octet-stream")])
    assert [a.status for a in answers] == [200, 400, 415, 200]
    if HEADERS in transport.carries:
        assert all(a.headers["content-type"] == "application/json" and int(a.headers["X-Batch-Size"]) >= 1
                   for a in answers)
        assert "X-Top-Label" not in answers[0].headers  # off unless the archive asks (the A/B router does)
    if ONE_BATCH in transport.carries:
        assert all(a.headers["X-Batch-Size"] == "4" for a in answers)
    good, bad, unsupported, again = (a.body for a in answers)
    assert good == again and len(good) == 1 and good[0]["label"] == "bright rectangle"
    assert max(abs(a - b) for a, b in zip(good[0]["box"], truth)) <= 2
    assert bad["type"] == "UnreadableImage" and unsupported["type"] == "UnsupportedMediaType"


def test_a_users_handler_file_changes_only_its_step(transport):
    scene, truth = bright_box_scene(1280, 720)
    body = jpeg(scene, quality=95)
    plain = transport.send(TOY, body).body
    people, cats = transport.send("person_counter", body), transport.send("cat_counter", body)
    assert people.status == cats.status == 200
    people, cats = people.body, cats.body
    assert people["count"] == 1 and cats == {"count": 0, "detections": []}
    [person] = people["detections"]
    assert person["box"] == plain[0]["box"] and person["score"] == plain[0]["score"] and person["label"] == "person"
    x1, y1, x2, y2 = person["box"]
    assert person["area"] == pytest.approx((x2 - x1) * (y2 - y1), abs=0.01)
    assert max(abs(a - b) for a, b in zip(person["box"], truth)) <= 2
    # Everything else is still ObjectDetector's: a bad image is that request's 400, also inside a batch.
    bad = transport.send("person_counter", b"\xff\xd8\xff\xe0 cut short")
    assert bad.status == 400 and bad.body["type"] == "UnreadableImage"
    for model, answer in (("person_counter", people), ("cat_counter", cats)):
        good, empty = transport.together(model, [Request(body, "image/jpeg"), Request(b"", "image/jpeg")])
        assert (good.status, empty.status) == (200, 400) and good.body == answer


def test_a_classifier_explains_and_other_tasks_say_they_do_not(transport):
    """The default classifier answers a saliency map of its top class (Integrated Gradients on
    TorchScript, occlusion on ONNX: the maps' known answers are tests/unit/test_explanations.py);
    a detector answers a clear 501 and still predicts."""
    transport.need(EXPLAIN)
    scene, _ = bright_box_scene(333, 777)
    for backend, method in (("torchscript", "integrated_gradients"), ("onnx", "occlusion")):
        explained = transport.explain(f"classification_{backend}", jpeg(scene))
        assert explained.status == 200, explained.body
        top = transport.send(f"classification_{backend}", jpeg(scene)).body[0]
        assert (explained.body["index"], explained.body["method"]) == (top["index"], method)
        assert explained.body["score"] == pytest.approx(top["score"], abs=1e-4)
        heat = explained.body["heatmap"]
        assert (heat["width"], heat["height"]) == (14, 32) and max(map(max, heat["values"])) == 1.0
    refused = transport.explain(TOY, jpeg(scene))
    assert refused.status == 501, refused.body
    assert refused.body["type"] == "NotSupported" and "classification" in refused.body["message"]
    answered = transport.send(TOY, jpeg(scene))
    assert answered.status == 200 and len(answered.body) == 1


def test_describe_answers_what_the_model_is(transport):
    transport.need(DESCRIBE)
    about = transport.describe("person_counter")
    assert about["handler"] == "PeopleCounter" and about["task"] == "detection" and about["runtime"] == "onnx"
    assert about["labels"] == ["background", "person"] and about["device"] == "cpu" \
        and about["settings"]["profile"] is True
    about = transport.describe(TOY)
    assert about["handler"] == "ObjectDetector" and about["task"] == "detection" and about["runtime"] == "onnx"
    assert about["labels"] == ["background", "bright rectangle"] and about["device"] == "cpu"


def test_the_handlers_metrics_and_per_step_timings_are_recorded(transport):
    scene, _ = bright_box_scene(640, 480)
    for _ in range(3):
        assert transport.send("person_counter", jpeg(scene)).status == 200
    assert transport.send("person_counter", b"").status == 400
    names = transport.metric_names("person_counter")
    assert {"ts_handler_preprocess", "ts_handler_inference", "ts_handler_postprocess", "DecodeTime",
            "ImagesPerRequest", "RequestErrors"} <= names, names
    if transport.server is not None:  # Prometheus' lines carry the error type
        errors = [line for line in transport.metric_lines("person_counter") if line.startswith("RequestErrors")]
        assert any('ErrorType="EmptyInput"' in line for line in errors), errors
