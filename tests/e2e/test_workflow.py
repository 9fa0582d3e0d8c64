"""The detect -> crop -> classify workflow of examples/workflows/ on the session's TorchServe: built by
``tsvision workflow`` with the session's detection_onnx and classification_onnx archives, registered through
the management API (``POST /workflows``), asked on ``/wfpredict``, unregistered (docs/workflows.md)."""

from __future__ import annotations

import base64
import io
import json
import math

import pytest
import requests
from PIL import Image, ImageOps

from tests.helpers import jpeg, photo
from tsvision.tools.archive.workflow_cli import main as workflow_main

pytestmark = pytest.mark.e2e
WORKFLOW = "detect_classify"
DETECTOR, CLASSIFIER = "detection_onnx", "classification_onnx"


@pytest.fixture(scope="module")
def workflow(served):
    """The workflow registered on the session's server (its detector and classifier nodes are registered
    again, as detect_classify__detector and __classifier); unregistered afterwards, also when a test fails."""
    assert workflow_main(["--name", WORKFLOW, "--store", str(served.model_store)]) == 0
    headers = served.headers("management")
    registered = requests.post(f"{served.management_url}/workflows", params={"url": f"{WORKFLOW}.war"},
                               headers=headers, timeout=600)
    try:
        assert registered.status_code == 200, registered.text
        yield served
    finally:
        requests.delete(f"{served.management_url}/workflows/{WORKFLOW}", headers=headers, timeout=120)


def post(server, path: str, body, content_type: str = "application/json") -> requests.Response:
    data = json.dumps(body) if content_type == "application/json" else body
    return requests.post(f"{server.inference_url}/{path}", data=data, timeout=120,
                         headers={"Content-Type": content_type, **server.headers("inference")})


def crops_of(image_bytes: bytes, detections: list) -> list:
    """Each detection's box cut out of the (EXIF-upright) image with PIL, as base64 PNG: the pixels from
    x1, y1 rounded down to x2, y2 rounded up."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes)))
    crops = []
    for detection in detections:
        x1, y1, x2, y2 = detection["box"]
        buffer = io.BytesIO()
        image.crop((math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))).save(buffer, format="PNG")
        crops.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return crops


def test_the_workflow_answers_what_the_detector_then_the_classifier_answer(workflow):
    image = jpeg(photo("astronaut"))
    request = {"data": base64.b64encode(image).decode("ascii"), "max_detections": 4}
    answer = post(workflow, f"wfpredict/{WORKFLOW}", request)
    assert answer.status_code == 200, answer.text

    detected = post(workflow, f"predictions/{DETECTOR}", request)
    assert detected.status_code == 200, detected.text
    detections = detected.json()
    assert 2 <= len(detections) <= 4, detections
    classified = post(workflow, f"predictions/{CLASSIFIER}", {"instances": crops_of(image, detections)})
    assert classified.status_code == 200, classified.text
    classes = classified.json()["predictions"]
    assert len(classes) == len(detections) and all(c and "label" in c[0] for c in classes), classes
    assert answer.json() == [{**d, "classification": c} for d, c in zip(detections, classes)]



def test_more_detections_than_the_classifier_takes_in_one_request_is_its_413(workflow):
    """The image itself: the detector archive's own max_detections (100 boxes on the astronaut), over
    the classifier's 64 images a request (docs/workflows.md, Limits)."""
    image = jpeg(photo("astronaut"))
    assert len(post(workflow, f"predictions/{DETECTOR}", image, "image/jpeg").json()) > 64
    answer = post(workflow, f"wfpredict/{WORKFLOW}", image, "image/jpeg").json()
    assert answer["code"] == 413 and answer["type"] == "TooManyImages" and answer["node"] == "classifier", answer


def test_a_bad_image_is_the_detectors_error_and_nothing_found_is_empty(workflow):
    bad = b"this is not an image"
    refused = post(workflow, f"predictions/{DETECTOR}", bad, "image/jpeg")
    assert refused.status_code == 400 and refused.json()["type"] == "UnreadableImage", refused.text
    answer = post(workflow, f"wfpredict/{WORKFLOW}", bad, "image/jpeg")
    # TorchServe 0.12 answers /wfpredict 200 whatever its nodes answer (docs/workflows.md, Limits): the
    # status travels in the body
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {**refused.json(), "node": "detector"}

    nothing = {"data": base64.b64encode(jpeg(photo("astronaut"))).decode("ascii"), "score_threshold": 0.99}
    assert post(workflow, f"predictions/{DETECTOR}", nothing).json() == []
    assert post(workflow, f"wfpredict/{WORKFLOW}", nothing).json() == []
