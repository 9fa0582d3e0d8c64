"""The session's archives under KServe's model server (``tsvision kserve``), against the session's TorchServe.

The KServe server runs as a process of its own (the ``kserve`` package, in ``.venv-kserve`` or
this Python) on free loopback ports, is waited for until ready and stopped by pid. Every default
archive answers one photo identically over v1 REST, v2 REST and v2 gRPC (tritonclient's HTTP and
gRPC clients for v2) to TorchServe's REST answer for the same archive; bad inputs get the status,
type and message TorchServe gives them.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests

from tests.corpus import png_declaring
from tests.helpers import BACKENDS, TASKS, all_at_once, jpeg
from tsvision.tools.clients.predict import predict_rest
from tsvision.tools.serve.kserve_server import KServeServer
from tsvision.tools.serve.server import free_port

pytestmark = pytest.mark.e2e
MODELS = [f"{task}_{backend}" for task in TASKS for backend in BACKENDS]
BATCHED = "classification_batched"  # batch size 8, delay 300 ms: concurrent requests share a call


@pytest.fixture(scope="module")
def kserve(model_store, tmp_path_factory):
    server = KServeServer(model_store, tmp_path_factory.mktemp("kserve"), free_port(), free_port(),
                          models=MODELS + [BATCHED])
    with server:
        yield server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def v1(server: KServeServer, model: str, body) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{model}:predict", json=body, timeout=120)


def torchserve_json(served, model: str, body) -> requests.Response:
    return requests.post(f"{served.inference_url}/predictions/{model}", json=body, headers=served.headers(),
                         timeout=120)


def test_every_default_archive_answers_as_torchserve_over_v1_v2_rest_and_grpc(kserve, served, photos):
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    http = triton_http.InferenceServerClient(kserve.url.removeprefix("http://"))
    grpc = triton_grpc.InferenceServerClient(kserve.grpc_address)
    photo = jpeg(photos["coffee"])
    for model in MODELS:
        expected = predict_rest(served.inference_url, model, photo, served.key())
        assert expected, model
        answer = v1(kserve, model, {"instances": [b64(photo)]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [expected]}, f"{model}: v1 differs from TorchServe"

        tensor = triton_http.InferInput("images", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b64(photo)], dtype=object), binary_data=False)
        result = http.infer(model, [tensor], outputs=[triton_http.InferRequestedOutput("answers", binary_data=False)])
        assert [json.loads(t) for t in result.as_numpy("answers")] == [expected], f"{model}: v2 REST differs"

        tensor = triton_grpc.InferInput("images", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photo], dtype=object))  # raw_input_contents, as tritonclient sends
        result = grpc.infer(model, [tensor])
        assert [json.loads(t) for t in result.as_numpy("answers")] == [expected], f"{model}: v2 gRPC differs"
    # Several images in one request, each answered as TorchServe answers it alone.
    images = [jpeg(photos["chelsea"]), jpeg(photos["rocket"])]
    expected = [predict_rest(served.inference_url, "detection_onnx", i, served.key()) for i in images]
    assert v1(kserve, "detection_onnx", {"instances": [b64(i) for i in images]}).json() == {"predictions": expected}
    tensor = triton_grpc.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    assert [json.loads(t) for t in grpc.infer("detection_onnx", [tensor]).as_numpy("answers")] == expected
    # A per-request option travels as the v2 request's parameters, as on TorchServe.
    tensor = triton_http.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b64(photo)], dtype=object), binary_data=False)
    top2 = http.infer("classification_onnx", [tensor], parameters={"top_k": 2})
    assert json.loads(top2.as_numpy("answers")[0]) == \
        torchserve_json(served, "classification_onnx", {"data": b64(photo), "top_k": 2}).json()
    grpc.close()
    http.close()


def test_bad_inputs_keep_their_status_and_message(kserve, served, photos):
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    good = b64(jpeg(photos["chelsea"]))
    bodies = {"not an image": {"instances": [b64(b"not an image")]},
              "bomb": {"instances": [b64(png_declaring(100_000, 100_000))]},
              "second of two": {"instances": [good, "%%% not base64"]},
              "no image field": {"instances": [{"nothing": 1}]},
              "bad option": {"instances": [good], "top_k": "many"}}
    for case, body in bodies.items():
        ours, theirs = v1(kserve, "classification_onnx", body), torchserve_json(served, "classification_onnx", body)
        assert 400 <= theirs.status_code < 500, (case, theirs.text)
        assert ours.status_code == theirs.status_code, (case, ours.text)
        expected = theirs.json()
        assert {k: ours.json()[k] for k in expected} == expected, case
    assert v1(kserve, "classification_onnx", bodies["bomb"]).status_code == 413
    # v2 REST: TorchServe's status and error; gRPC: the status as a gRPC code, "<code> <type>: <message>".
    v2 = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(b"not an image")]}]}
    ours = requests.post(f"{kserve.url}/v2/models/classification_onnx/infer", json=v2, timeout=60)
    theirs = requests.post(f"{served.inference_url}/v2/models/classification_onnx/infer", json=v2,
                           headers=served.headers(), timeout=60)
    assert (ours.status_code, ours.json()["error"]) == (theirs.status_code, theirs.json()["error"]) == \
        (400, theirs.json()["error"])
    assert "UnreadableImage" in ours.json()["error"]
    client = triton_grpc.InferenceServerClient(kserve.grpc_address)
    for data, status, code in ((b"not an image", "StatusCode.INVALID_ARGUMENT", "400 UnreadableImage"),
                               (png_declaring(100_000, 100_000), "StatusCode.RESOURCE_EXHAUSTED", "413 ImageTooLarge")):
        tensor = triton_grpc.InferInput("images", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        with pytest.raises(InferenceServerException, match=code) as caught:
            client.infer("classification_onnx", [tensor])
        assert caught.value.status() == status
    tensor = triton_grpc.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg(photos["rocket"])], dtype=object))
    assert json.loads(client.infer("classification_onnx", [tensor]).as_numpy("answers")[0])  # unharmed
    client.close()
    assert v1(kserve, "no_such_model", {"instances": [good]}).status_code == 404


def test_v1_explain_answers_as_torchserves_explanations(kserve, served, photos):
    """``:explain`` runs the archive's explanation (docs/explanations.md) as ``/explanations`` does."""
    body = {"instances": [b64(jpeg(photos["chelsea"]))], "window": 56, "stride": 28}
    ours = requests.post(f"{kserve.url}/v1/models/classification_onnx:explain", json=body, timeout=120)
    theirs = requests.post(f"{served.inference_url}/explanations/classification_onnx", json=body,
                           headers=served.headers(), timeout=120)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    [explained] = ours.json()["explanations"]
    assert ours.json() == theirs.json() and explained["method"] == "occlusion"
    assert explained["parameters"]["occlusions"] == 49
    refused = requests.post(f"{kserve.url}/v1/models/detection_onnx:explain", json=body, timeout=120)
    assert refused.status_code == 501 and refused.json()["type"] == "NotSupported"


def test_liveness_readiness_and_metadata_as_kserve_defines_them(kserve):
    import tritonclient.grpc as triton_grpc

    assert requests.get(f"{kserve.url}/", timeout=10).json() == {"status": "alive"}
    assert requests.get(f"{kserve.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{kserve.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{kserve.url}/v1/models/detection_onnx", timeout=10).json() == \
        {"name": "detection_onnx", "ready": True}
    assert requests.get(f"{kserve.url}/v2/models/segmentation_torchscript/ready", timeout=10).json()["ready"] is True
    assert requests.get(f"{kserve.url}/v1/models/no_such_model", timeout=10).status_code == 404
    assert set(requests.get(f"{kserve.url}/v1/models", timeout=10).json()["models"]) == set(MODELS + [BATCHED])
    client = triton_grpc.InferenceServerClient(kserve.grpc_address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("classification_onnx")
    metadata = client.get_model_metadata("classification_onnx")
    assert [(t.name, t.datatype) for t in metadata.inputs] == [("images", "BYTES")]
    assert [(t.name, t.datatype) for t in metadata.outputs] == [("answers", "BYTES")]
    client.close()


def test_concurrent_requests_share_a_handler_call_and_keep_their_answers(kserve, served, photos):
    images = [jpeg(photos[name].resize((200 + 40 * i, 180 + 30 * i))) for i, name in
              enumerate(["astronaut", "chelsea", "coffee", "rocket"] * 2)]
    bodies = [{"instances": [b64(image)]} for image in images]
    bodies[3] = {"instances": [b64(b"broken")]}
    responses = all_at_once(lambda body: v1(kserve, BATCHED, body), bodies)
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1  # the archive's batching, on KServe
    for index, (image, response) in enumerate(zip(images, responses)):
        if index == 3:
            assert (response.status_code, response.json()["type"]) == (400, "UnreadableImage")
        else:
            assert response.json() == {"predictions": [predict_rest(served.inference_url, BATCHED, image,
                                                                     served.key())]}
