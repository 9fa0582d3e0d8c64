"""The same models over REST, gRPC and the Open Inference Protocol (KServe v2), live."""

from __future__ import annotations

import io
import json

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.helpers import AB_MODEL, BACKENDS, TASKS, jpeg
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.clients.grpc_client import GrpcClient, PredictionError
from tsvision.tools.clients.oip_gateway import OipGateway
from tsvision.tools.clients.predict import main as predict_main
from tsvision.tools.clients.predict import predict_oip_rest, predict_rest
from tsvision.tools.serve.server import free_port

pytestmark = pytest.mark.e2e
MODELS = [f"{task}_{backend}" for task in TASKS for backend in BACKENDS]


def client_for(server) -> GrpcClient:
    return GrpcClient(f"127.0.0.1:{server.properties['grpc_inference_port']}",
                      f"127.0.0.1:{server.properties['grpc_management_port']}", server.workdir / "key_file.json")


@pytest.fixture(scope="module")
def grpc_client(served):
    client = client_for(served)
    yield client
    client.close()


def test_one_photo_gives_identical_answers_over_every_protocol(served, grpc_client, photos):
    assert grpc_client.ping() == "Healthy"
    key = served.key("inference")
    data = jpeg(photos["coffee"])
    for model in MODELS:
        rest = predict_rest(served.inference_url, model, data, key)
        assert rest, model
        assert grpc_client.predict(model, data) == rest, f"{model}: gRPC differs from REST"
        assert predict_oip_rest(served.inference_url, model, [data], key) == [rest], f"{model}: OIP REST differs"
        assert grpc_client.infer_v2(model, [data]) == [rest], f"{model}: OIP gRPC differs"


def test_tritonclient_http_calls_our_models(served, photos):
    """An independent KServe v2 client, tritonclient, gets the documented answers."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served.inference_url.removeprefix("http://"))
    images = [jpeg(photos["chelsea"]), jpeg(photos["rocket"])]
    for task in TASKS:
        model = f"{task}_onnx"
        tensor = triton.InferInput("images", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array([__import__("base64").b64encode(i) for i in images], dtype=object), binary_data=False)
        result = client.infer(model, [tensor], headers=served.headers(),
                              outputs=[triton.InferRequestedOutput("answers", binary_data=False)])
        answers = [json.loads(text) for text in result.as_numpy("answers")]
        assert answers == [predict_rest(served.inference_url, model, i, served.key("inference")) for i in images]
    bad = triton.InferInput("images", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"bm90IGFuIGltYWdl"], dtype=object), binary_data=False)
    with pytest.raises(Exception, match="UnreadableImage"):
        client.infer("classification_onnx", [bad], headers=served.headers())


@pytest.fixture(scope="module")
def gateway(served):
    gateway = OipGateway(f"127.0.0.1:{free_port()}", f"127.0.0.1:{served.properties['grpc_inference_port']}").start()
    yield gateway
    gateway.stop()


def test_tritonclient_grpc_calls_our_models_through_the_gateway(served, gateway, photos):
    """tritonclient's gRPC client, used as its documentation shows (raw tensors), through the gateway."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    token = {"authorization": f"Bearer {served.key('inference')}"}
    client = triton.InferenceServerClient(f"127.0.0.1:{gateway.port}")
    assert client.is_server_live(headers=token)
    assert client.is_model_ready("detection_torchscript", headers=token)
    assert client.get_model_metadata("segmentation_onnx", headers=token).name == "segmentation_onnx"

    def infer(model, images, **options):
        tensor = triton.InferInput("images", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object))  # sent as raw_input_contents
        return [json.loads(text) for text in client.infer(model, [tensor], **options).as_numpy("answers")]

    photo = jpeg(photos["coffee"])
    for model in MODELS:
        assert infer(model, [photo], headers=token) == [predict_rest(served.inference_url, model, photo, served.key())], model
    images = [jpeg(photos["chelsea"]), jpeg(photos["rocket"])]  # two images in one tensor
    assert infer("detection_onnx", images, headers=token) == [predict_rest(served.inference_url, "detection_onnx", i, served.key())
                                                              for i in images]
    pids = served.worker_pids("classification_onnx")
    bad = triton.InferInput("images", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException, match="400 UnreadableImage") as caught:
        client.infer("classification_onnx", [bad], headers=token)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="(?i)token"):  # TorchServe's refusal, passed through
        infer("classification_onnx", [photo])
    assert served.worker_pids("classification_onnx") == pids
    client.close()


def test_errors_over_grpc_are_clear_and_harmless(served, grpc_client, photos):
    pids = served.worker_pids("classification_onnx")
    with pytest.raises(PredictionError) as caught:
        grpc_client.predict("classification_onnx", b"not an image")
    assert (caught.value.code, caught.value.kind) == (400, "UnreadableImage")
    with pytest.raises(PredictionError, match="UnreadableImage"):
        grpc_client.infer_v2("classification_onnx", [b"not an image"])
    assert grpc_client.infer_v2("classification_onnx", [jpeg(photos["chelsea"])])  # the worker is fine
    assert served.worker_pids("classification_onnx") == pids


def test_grpc_streaming_gives_the_answer_in_one_message(served, grpc_client, photos):
    data = jpeg(photos["rocket"])
    for model in ("segmentation_onnx", "detection_torchscript"):
        assert list(grpc_client.stream_predict(model, data)) == [predict_rest(served.inference_url, model, data, served.key())]
    with pytest.raises(PredictionError, match="UnreadableImage"):
        list(grpc_client.stream_predict("classification_onnx", b"not an image"))
    # The stream marker never reaches REST: a plain request right after is answered whole.
    assert predict_rest(served.inference_url, "classification_onnx", data, served.key())


def test_a_10_mb_image_over_grpc_and_the_limit(served, grpc_client):
    noise = np.random.default_rng(0).integers(0, 256, (1900, 1800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    big = buffer.getvalue()
    assert len(big) > 10_000_000
    assert grpc_client.predict("classification_onnx", big) == predict_rest(served.inference_url, "classification_onnx", big, served.key())
    oversized = big * 3
    with pytest.raises(PredictionError, match="over the server's limit"):
        grpc_client.predict("classification_onnx", oversized)
    raw = grpc_client.stubs.inference_pb2.PredictionsRequest(model_name="classification_onnx", input={"data": oversized})
    with pytest.raises(grpc.RpcError):  # the server enforces max_request_size on gRPC as well
        grpc_client.inference.Predictions(raw, metadata=grpc_client._metadata["inference"], timeout=60)


def test_management_over_grpc(served, exports, photos):
    client = client_for(served)
    assert archive_main(["--model", str(exports / "classification" / "model.onnx"), "--settings",
                         str(exports / "classification" / "settings.json"), "--name", AB_MODEL, "--version", "4.0",
                         "--archive-file", f"{AB_MODEL}-4.0", "--store", str(served.model_store), "--set", "top_k=2"]) == 0
    data = jpeg(photos["chelsea"])
    try:
        client.register(f"{AB_MODEL}-4.0.mar")
        assert "4.0" in {d["modelVersion"] for d in client.describe(AB_MODEL, "all")}
        client.set_default(AB_MODEL, "4.0")
        assert len(client.predict(AB_MODEL, data)) == 2  # unversioned: the new default answers
        client.scale(AB_MODEL, "4.0", 2)
        assert len(client.describe(AB_MODEL, "4.0")[0]["workers"]) == 2
        assert {m["modelName"] for m in client.list_models()["models"]} >= {AB_MODEL}
    finally:
        client.set_default(AB_MODEL, "1.0")
        client.unregister(AB_MODEL, "4.0")
    assert "4.0" not in {d["modelVersion"] for d in client.describe(AB_MODEL, "all")}
    assert len(client.predict(AB_MODEL, data)) == 5
    client.close()


def test_predict_cli_prints_the_same_answer_for_every_protocol(served, photos, tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    image.write_bytes(jpeg(photos["astronaut"]))
    common = ["--model", "detection_onnx", "--image", str(image), "--url", served.inference_url,
              "--grpc", f"127.0.0.1:{served.properties['grpc_inference_port']}", "--key-file", str(served.workdir / "key_file.json")]
    answers = []
    for protocol in ("rest", "grpc", "grpc-stream", "oip-rest", "oip-grpc"):
        assert predict_main(common + ["--protocol", protocol]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0] and all(a == answers[0] for a in answers)
    assert predict_main(common[:2] + ["--image", str(image), "--url", "http://127.0.0.1:9", "--protocol", "rest"]) == 1
    assert "error:" in capsys.readouterr().err
