"""``tsvision kserve`` (KServe's model server, its own process on free loopback ports, stopped by pid)
serving the small embedding backbone's archive (issue 29, part 4): the Open Inference Protocol answer is one
FP32 ``embeddings`` tensor over v2 REST and v2 gRPC (tritonclient), equal to the answers in-process."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import jpeg
from tsvision.serving.tasks import load_export
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.serve.kserve_server import KServeServer
from tsvision.tools.serve.server import free_port

pytestmark = pytest.mark.e2e
MODEL, DIM = "embedder", 576


@pytest.fixture(scope="module")
def kserve(embedder, tmp_path_factory):
    store = tmp_path_factory.mktemp("kserve_embedder_store")
    assert archive_main(["--model", str(embedder / "model.onnx"), "--settings", str(embedder / "settings.json"),
                         "--name", MODEL, "--store", str(store)]) == 0
    server = KServeServer(store, tmp_path_factory.mktemp("kserve_embedder"), free_port(), free_port(), models=[MODEL])
    with server:
        yield server


def test_tsvision_kserve_answers_the_fp32_tensor(kserve, embedder):
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    rng = np.random.default_rng(12)
    images = [jpeg(Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))) for _ in range(2)]
    expected = np.array(load_export(embedder, "model.onnx").run(images), dtype=np.float32)
    metadata = requests.get(f"{kserve.url}/v2/models/{MODEL}", timeout=30).json()
    assert metadata["outputs"][0] == {"name": "embeddings", "datatype": "FP32", "shape": [-1, -1]}
    http = triton_http.InferenceServerClient(kserve.url.removeprefix("http://"))
    tensor = triton_http.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([base64.b64encode(i) for i in images], dtype=object), binary_data=False)
    rows = http.infer(MODEL, [tensor]).as_numpy("embeddings")
    assert rows.shape == (2, DIM) and rows.dtype == np.float32 and np.abs(rows - expected).max() < 1e-6
    http.close()
    grpc = triton_grpc.InferenceServerClient(kserve.grpc_address)
    tensor = triton_grpc.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))  # raw_input_contents, as tritonclient sends
    rows = grpc.infer(MODEL, [tensor]).as_numpy("embeddings")
    assert rows.shape == (2, DIM) and np.abs(rows - expected).max() < 1e-6
    grpc.close()
