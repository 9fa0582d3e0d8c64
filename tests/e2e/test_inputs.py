"""Every input users send, over each transport (in-process and against the session's TorchServe):
the corpus's exact statuses alone and inside shared batches, several images in one request, a bad
image naming itself, EXIF rotation first, the request size limit. The in-process-only checks (the
corpus itself, a model failure) are in tests/unit/test_inputs.py."""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import pytest
import requests
from PIL import Image

from tests.checks import check_classification
from tests.corpus import build_corpus, encode, photo, with_orientation
from tests.helpers import BACKENDS
from tests.scenes import bright_box_scene
from tests.transports import CONTENT_TYPE, FORM, JSON_BODY, Request

MODEL = "classification_batched"  # batch size 8, batch delay 300 ms
CORPUS = build_corpus()


@pytest.fixture(scope="module")
def labels(exports):
    return json.loads((exports / "classification" / "labels.json").read_text())


@pytest.fixture(scope="module")
def alone(transport):
    """Each corpus case sent on its own (for the transports that carry a content type)."""
    transport.need(CONTENT_TYPE)
    return {case.name: transport.send(MODEL, case.body, case.content_type) for case in CORPUS}


def alive(transport, pids) -> None:
    """The served worker did not restart and the server is healthy."""
    if transport.server is not None:
        ping = requests.get(f"{transport.server.inference_url}/ping", headers=transport.server.headers(), timeout=10)
        assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
        assert transport.server.worker_pids(MODEL) == pids


def test_each_case_alone_gets_its_exact_status(alone, labels):
    for case in CORPUS:
        answer = alone[case.name]
        assert answer.status == case.status, (case.name, answer.body)
        if case.status == 200:
            check_classification(answer.body, labels)
        else:
            assert answer.body["code"] == case.status and answer.body["type"] == case.kind, (case.name, answer.body)
            assert len(answer.body["message"]) > 20, case.name


def test_corpus_in_shared_batches_answers_every_item_as_if_alone(transport, alone):
    pids = transport.server.worker_pids(MODEL) if transport.server is not None else None
    order = list(CORPUS)
    random.Random(5).shuffle(order)
    largest_batch = 0
    for start in range(0, len(order), 8):
        group = order[start:start + 8]
        answers = transport.together(MODEL, [Request(c.body, c.content_type) for c in group])
        for case, answer in zip(group, answers):
            assert answer.status == case.status, (case.name, answer.body)
            assert answer.body == alone[case.name].body, case.name
            largest_batch = max(largest_batch, int(answer.headers.get("X-Batch-Size", 0)))
    assert largest_batch >= 4, f"concurrent requests were not batched (largest batch {largest_batch})"
    alive(transport, pids)


def test_several_images_in_one_request_equal_separate_requests(transport):
    transport.need(JSON_BODY)
    images = [encode(photo(260 + 30 * i, 180 + 20 * i, seed=20 + i), "JPEG") for i in range(3)]
    texts = [base64.b64encode(d).decode() for d in images]
    separate = [transport.send(MODEL, d, "image/jpeg").body for d in images]
    assert transport.send(MODEL, {"instances": [{"data": t} for t in texts]}).body == {"predictions": separate}
    assert transport.send(MODEL, [{"data": t} for t in texts]).body == separate
    assert transport.send(MODEL, {"data": texts}).body == separate
    v2 = transport.send(MODEL, {"id": "req-7",
                                "inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "data": texts}]}).body
    assert v2["id"] == "req-7" and v2["model_name"] == MODEL and v2["model_version"] == "1.0"
    assert [json.loads(x) for x in v2["outputs"][0]["data"]] == separate
    # A many-image request batched with a single-image one: each gets its own answer.
    many, single = transport.together(MODEL, [Request({"data": texts}), Request(images[0], "image/jpeg")])
    assert many.status == 200 and many.body == separate and single.body == separate[0]
    if FORM in transport.carries:  # any field names; one file answers as a single image
        files = {f"photo{i}": (d, "image/jpeg") for i, d in enumerate(images)}
        multipart = transport.send(MODEL, files=files)
        assert multipart.status == 200 and multipart.body == separate
        assert transport.send(MODEL, files={"anything": (images[1], "image/jpeg")}).body == separate[1]


def test_a_bad_image_in_a_multi_image_request_names_it_and_fails_only_its_request(transport):
    transport.need(JSON_BODY)
    good = encode(photo(seed=1), "JPEG")
    text = base64.b64encode(good).decode()
    bad, fine = transport.together(MODEL, [Request({"instances": [text, "not base64 at all!"]}), Request(good)])
    assert bad.status == 400 and bad.body["type"] == "BadBase64" and bad.body["message"].startswith("image 1 of 2: ")
    assert fine.status == 200 and fine.body == transport.send(MODEL, good).body
    third = transport.send(MODEL, {"instances": [text, text, "%%%"]})
    assert third.status == 400
    assert third.body["type"] == "BadBase64" and third.body["message"].startswith("image 2 of 3: ")


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_exif_rotation_comes_first_and_boxes_refer_to_the_rotated_image(transport, backend):
    shown, truth = bright_box_scene(777, 333)  # what the viewer sees after rotation
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns this 90° clockwise
    answer = transport.send(f"toy_detection_{backend}", with_orientation(stored, 6))
    assert answer.status == 200
    assert np.abs(np.subtract(answer.body[0]["box"], truth)).max() <= 2.0, (answer.body, truth)
    segmented = transport.send(f"toy_segmentation_{backend}", with_orientation(stored, 6)).body
    assert (segmented["width"], segmented["height"]) == (777, 333)


def test_bodies_over_the_request_size_limit_are_refused(transport):
    """TorchServe's frontend refuses a body over ``max_request_size`` with 413. In-process there is
    no frontend; over gRPC the same limit resets the call instead of answering (GrpcClient's note)."""
    if transport.server is None or transport.name == "grpc":
        pytest.skip(f"{transport.name} has no frontend that answers the request size limit with a status")
    limit = int(transport.server.properties["max_request_size"])
    assert transport.send(MODEL, b"\xff" * (limit + 1024), "image/jpeg").status == 413

