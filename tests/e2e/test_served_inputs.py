"""Every input users send, against a real TorchServe: per-request status inside shared batches."""

from __future__ import annotations

import base64
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.corpus import build_corpus, encode, photo

pytestmark = pytest.mark.e2e
MODEL = "classification_batched"  # batch size 8, batch delay 300 ms
CORPUS = build_corpus()


def post(served, case, model=MODEL):
    response = served.predict(model, case.body, content_type=case.content_type)
    return response.status_code, response.json(), int(response.headers.get("X-Batch-Size", 0))


def send_together(served, cases):
    barrier = threading.Barrier(len(cases))

    def send(case):
        barrier.wait()
        return post(served, case)

    with ThreadPoolExecutor(len(cases)) as pool:
        return list(pool.map(send, cases))


def test_corpus_in_shared_batches_gets_exact_statuses_and_leaves_the_worker_alive(served):
    pids = served.worker_pids(MODEL)
    alone = {case.name: post(served, case) for case in CORPUS}
    for case in CORPUS:
        status, body, _ = alone[case.name]
        assert status == case.status, (case.name, body)
        if status != 200:
            assert body["code"] == case.status and body["type"] == case.kind, (case.name, body)

    order = list(CORPUS)
    random.Random(5).shuffle(order)
    largest_batch = 0
    for start in range(0, len(order), 8):
        group = order[start:start + 8]
        for case, (status, body, batch_size) in zip(group, send_together(served, group)):
            assert status == case.status, (case.name, body)
            assert body == alone[case.name][1], case.name
            largest_batch = max(largest_batch, batch_size)
    assert largest_batch >= 4, f"concurrent requests were not batched (largest batch {largest_batch})"

    ping = requests.get(f"{served.inference_url}/ping", headers=served.headers(), timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
    assert served.worker_pids(MODEL) == pids


def test_several_images_in_one_request_equal_separate_requests(served):
    images = [encode(photo(260 + 30 * i, 180 + 20 * i, seed=20 + i), "JPEG") for i in range(3)]
    texts = [base64.b64encode(d).decode() for d in images]
    separate = [served.predict(MODEL, d, content_type="image/jpeg").json() for d in images]

    def as_json(body):
        return served.predict(MODEL, json.dumps(body).encode(), content_type="application/json")

    assert as_json({"instances": [{"data": t} for t in texts]}).json() == {"predictions": separate}
    assert as_json([{"data": t} for t in texts]).json() == separate
    assert as_json({"data": texts}).json() == separate
    v2 = as_json({"id": "req-7", "inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "data": texts}]}).json()
    assert v2["id"] == "req-7" and v2["model_name"] == MODEL and v2["model_version"] == "1.0"
    assert [json.loads(x) for x in v2["outputs"][0]["data"]] == separate
    url = f"{served.inference_url}/predictions/{MODEL}"
    multipart = requests.post(url, files={f"photo{i}": (f"p{i}.jpg", d, "image/jpeg") for i, d in enumerate(images)},
                              headers=served.headers(), timeout=60)
    assert multipart.status_code == 200 and multipart.json() == separate
    single_part = requests.post(url, files={"anything": ("p.jpg", images[1], "image/jpeg")}, headers=served.headers(), timeout=60)
    assert single_part.json() == separate[1]


def test_a_bad_image_in_a_multi_image_request_names_it(served):
    good = base64.b64encode(encode(photo(seed=30), "JPEG")).decode()
    response = served.predict(MODEL, json.dumps({"instances": [good, good, "%%%"]}).encode(), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["type"] == "BadBase64" and response.json()["message"].startswith("image 2 of 3: ")


def test_bodies_over_the_request_size_limit_are_refused(served):
    limit = int(served.properties["max_request_size"])
    response = served.predict(MODEL, b"\xff" * (limit + 1024), content_type="image/jpeg")
    assert response.status_code == 413
