"""Multi-label classification and embeddings (issue 29, parts 3 and 4) served live on the run's
TorchServe: the colour toy with a threshold of its own for "blue", and the small embedding backbone,
archived with ``tsvision archive`` from their exports and registered; the embeddings over REST, the Open
Inference Protocol (REST, and gRPC through ``tsvision gateway``) as an FP32 tensor, equal to the answers
in-process (``tsvision kserve``: tests/e2e/test_kserve_embeddings.py). In-process tests: tests/unit/test_multi_label.py,
tests/unit/test_embedding.py."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from PIL import Image

from tests.e2e.conftest import registered
from tests.helpers import jpeg, png
from tsvision.serving.tasks import load_export
from tsvision.tools.clients.oip_gateway import OipGateway
from tsvision.tools.clients.predict import main as predict_main
from tsvision.tools.serve.server import free_port

pytestmark = pytest.mark.e2e
TAGGER, EMBEDDER = "colour_tagger", "embedder_torchscript"
DIM = 576  # mobilenet_v3_small's pooled features


@pytest.fixture(scope="module", autouse=True)
def archives(served, tagger, embedder):
    with registered(served, {
        TAGGER: ["--model", str(tagger / "model.onnx"), "--settings", str(tagger / "settings.json"),
                 "--set", 'class_thresholds={"blue": 0.999}'],
        EMBEDDER: ["--model", str(embedder / "model.pt"), "--settings", str(embedder / "settings.json")],
    }) as names:
        yield names


def flat(colour) -> bytes:
    return png(Image.new("RGB", (64, 48), colour))


def pictures(count: int):
    rng = np.random.default_rng(11)
    return [jpeg(Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))) for _ in range(count)]


def post(served, model: str, body) -> requests.Response:
    return requests.post(f"{served.inference_url}/predictions/{model}", json=body, headers=served.headers(),
                         timeout=120)


def test_the_tagger_answers_every_colour_above_its_threshold(served):
    pids = served.worker_pids(TAGGER)
    # red+blue: exactly red and blue (both 0.99995, above blue's own 0.999); green is 0.00005
    answer = served.predict(TAGGER, flat((255, 0, 255)), content_type="image/png")
    assert answer.status_code == 200, answer.text
    assert {e["label"] for e in answer.json()} == {"red", "blue"}
    # blue at 200/255 scores 0.9966: under its own threshold, so red alone; a request's score_threshold of 0
    # lets green through (it changes the default threshold) but not blue (its threshold is the archive's)
    assert [e["label"] for e in served.predict(TAGGER, flat((255, 0, 200)), content_type="image/png").json()] == \
        ["red"]
    loose = post(served, TAGGER, {"data": base64.b64encode(flat((255, 0, 200))).decode(), "score_threshold": 0})
    assert [e["label"] for e in loose.json()] == ["red", "green"]
    for bad in ("high", 1.5, -0.1, "nan"):
        refused = post(served, TAGGER, {"data": base64.b64encode(flat((255, 0, 255))).decode(),
                                        "score_threshold": bad})
        assert refused.status_code == 400 and refused.json()["type"] == "BadOption", refused.text
        assert "score_threshold" in refused.json()["message"]
    assert served.worker_pids(TAGGER) == pids


def test_embeddings_over_rest_equal_the_in_process_answers(served, embedder):
    task = load_export(embedder, "model.pt")
    images = pictures(2)
    expected = task.run(images)
    for image, vector in zip(images, expected):
        answer = served.predict(EMBEDDER, image, content_type="image/jpeg")
        assert answer.status_code == 200, answer.text
        assert len(answer.json()) == DIM and np.abs(np.array(answer.json()) - vector).max() < 1e-6
    half = post(served, EMBEDDER, {"data": base64.b64encode(images[0]).decode(), "embedding_format": "base64_float16"})
    decoded = np.frombuffer(base64.b64decode(half.json()["embedding"]), dtype="<f2")
    assert np.abs(decoded.astype(np.float32) - np.array(expected[0])).max() < 1e-3
    # a list of images, one bad: that request's 400, naming the image
    bad = post(served, EMBEDDER, {"instances": [base64.b64encode(images[0]).decode(), "bm90IGFuIGltYWdl"]})
    assert bad.status_code == 400 and "image 1 of 2" in bad.json()["message"], bad.text


@pytest.fixture(scope="module")
def gateway(served):
    gateway = OipGateway(f"127.0.0.1:{free_port()}", f"127.0.0.1:{served.properties['grpc_inference_port']}").start()
    yield gateway
    gateway.stop()


def test_embeddings_over_the_open_inference_protocol_are_one_fp32_tensor(served, embedder, gateway, tmp_path,
                                                                         capsys):
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    images = pictures(2)
    expected = np.array(load_export(embedder, "model.pt").run(images), dtype=np.float32)
    http = triton_http.InferenceServerClient(served.inference_url.removeprefix("http://"))
    tensor = triton_http.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([base64.b64encode(i) for i in images], dtype=object), binary_data=False)
    rows = http.infer(EMBEDDER, [tensor], headers=served.headers()).as_numpy("embeddings")
    assert rows.shape == (2, DIM) and rows.dtype == np.float32 and np.abs(rows - expected).max() < 1e-6
    http.close()
    # gRPC through the gateway, tritonclient as its documentation shows (raw tensors in, typed FP32 out)
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{gateway.port}")
    tensor = triton_grpc.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    rows = client.infer(EMBEDDER, [tensor], headers={"authorization": f"Bearer {served.key('inference')}"}) \
        .as_numpy("embeddings")
    assert rows.shape == (2, DIM) and np.abs(rows - expected).max() < 1e-6
    client.close()
    # tsvision predict prints the vector, over REST and both Open Inference Protocol transports
    (tmp_path / "one.jpg").write_bytes(images[0])
    common = ["--model", EMBEDDER, "--image", str(tmp_path / "one.jpg"), "--url", served.inference_url,
              "--grpc", f"127.0.0.1:{served.properties['grpc_inference_port']}",
              "--key-file", str(served.workdir / "key_file.json")]
    for protocol in ("rest", "oip-rest", "oip-grpc"):
        assert predict_main(common + ["--protocol", protocol]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert np.abs(np.array(printed) - expected[0]).max() < 1e-6, protocol
