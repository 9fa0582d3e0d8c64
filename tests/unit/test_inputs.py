"""Every input users send, in-process: the corpus, mixed batches, multi-image requests, EXIF."""

from __future__ import annotations

import base64
import random

import numpy as np
import pytest
from PIL import Image

from tests.checks import check_classification
from tests.corpus import build_corpus, encode, photo, with_orientation
from tests.helpers import jpeg, load_task
from tests.scenes import bright_box_scene
from tsvision.serving.service import answer_requests

CORPUS = build_corpus()


@pytest.fixture(scope="module")
def classifier(exports):
    return load_task(exports / "classification", "onnx")


@pytest.fixture(scope="module")
def alone(classifier):
    """Each corpus case sent on its own: (status, body)."""
    return {case.name: answer_requests(classifier, [case.row], [case.headers])[0] for case in CORPUS}


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 25 and len({c.name for c in CORPUS}) == len(CORPUS)
    assert {c.status for c in CORPUS} == {200, 400, 413, 415}


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_each_case_gets_its_exact_status(case, alone, classifier):
    response = alone[case.name]
    assert response.status == case.status, response.body
    if case.status == 200:
        check_classification(response.body, classifier.labels)
    else:
        assert response.body["code"] == case.status and response.body["type"] == case.kind
        assert len(response.body["message"]) > 20


def test_mixed_batches_answer_every_item_as_if_alone(classifier, alone):
    order = list(CORPUS)
    random.Random(3).shuffle(order)
    for start in range(0, len(order), 8):
        batch = order[start:start + 8]
        responses = answer_requests(classifier, [c.row for c in batch], [c.headers for c in batch])
        for case, response in zip(batch, responses):
            assert response.status == case.status, case.name
            assert response.body == alone[case.name].body, case.name


def test_several_images_in_one_request_equal_separate_requests(classifier):
    images = [encode(photo(200 + 40 * i, 150 + 30 * i, seed=i), "JPEG") for i in range(3)]
    texts = [base64.b64encode(d).decode() for d in images]
    separate = [answer_requests(classifier, [{"body": d}])[0].body for d in images]
    requests = [
        ({"body": {"instances": [{"data": t} for t in texts]}}, lambda body: body["predictions"]),
        ({"body": [{"data": t} for t in texts]}, lambda body: body),
        ({"body": {"data": texts}}, lambda body: body),
        ({"f1": images[0], "f2": images[1], "f3": images[2]}, lambda body: body),
        ({"body": {"inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "data": texts}]}},
         lambda body: [__import__("json").loads(x) for x in body["outputs"][0]["data"]]),
    ]
    for row, unwrap in requests:
        response = answer_requests(classifier, [row, {"body": images[0]}])
        assert response[0].status == 200 and unwrap(response[0].body) == separate
        assert response[1].body == separate[0]


def test_one_bad_image_fails_only_its_own_request(classifier):
    good = encode(photo(seed=1), "JPEG")
    rows = [{"body": {"instances": [base64.b64encode(good).decode(), "not base64 at all!"]}}, {"body": good}]
    bad, fine = answer_requests(classifier, rows)
    assert bad.status == 400 and bad.body["type"] == "BadBase64" and bad.body["message"].startswith("image 1 of 2: ")
    assert fine.status == 200 and fine.body == answer_requests(classifier, [{"body": good}])[0].body


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_exif_rotation_comes_first_and_boxes_refer_to_the_rotated_image(toy_exports, backend):
    detector = load_task(toy_exports / "detection", backend)
    shown, truth = bright_box_scene(777, 333)  # what the viewer sees after rotation
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns this 90° clockwise
    response = answer_requests(detector, [{"body": with_orientation(stored, 6)}])[0]
    assert response.status == 200
    assert np.abs(np.subtract(response.body[0]["box"], truth)).max() <= 2.0, (response.body, truth)
    segmenter = load_task(toy_exports / "segmentation", backend)
    answer = answer_requests(segmenter, [{"body": with_orientation(stored, 6)}])[0].body
    assert (answer["width"], answer["height"]) == (777, 333)


def test_a_model_failure_answers_every_request_with_500(classifier, monkeypatch, caplog):
    def broken(batch):
        raise RuntimeError("out of memory at 0x7f3a")
    monkeypatch.setattr(classifier.runtime, "run", broken)
    responses = answer_requests(classifier, [{"body": jpeg(photo())}, {"body": b""}])
    assert [r.status for r in responses] == [500, 400]
    assert responses[0].body["type"] == "InferenceError"
    # The answer names an error id, never the exception's own text; the log has both.
    message = responses[0].body["message"]
    assert "0x7f3a" not in message and "error id" in message
    error_id = message.rsplit(" ", 1)[-1]
    assert any(error_id in r.getMessage() and "0x7f3a" in (r.exc_text or "") for r in caplog.records)
