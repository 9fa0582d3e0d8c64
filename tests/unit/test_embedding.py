"""The embedding task (issue 29, part 4) in-process: a small torchvision backbone exported with its head
dropped, answered equal to the eager backbone's pooled features (L2-normalised) on TorchScript and ONNX;
the answer formats (JSON list, base64 little-endian float32/float16), batching with a bad image, the
Open Inference Protocol FP32 tensor, and the export's refusals. Served live: tests/e2e/test_served_labels.py."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.conftest import EMBEDDER_ARCH, EMBEDDER_STATE
from tests.helpers import BACKENDS, jpeg, png
from tsvision.serving.geometry import normalize
from tsvision.serving.service import answer_requests
from tsvision.serving.tasks import load_export
from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.export.embedders import drop_head, head_name, load_embedder_checkpoint

TOLERANCE = 1e-5  # float32 TorchScript / ONNX Runtime against eager PyTorch, on unit vectors


def picture(seed: int, size=(120, 90)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def eager_embeddings(folder, task, images) -> np.ndarray:
    """The eager backbone's pooled features (torchvision's own modules: features, avgpool, flatten; no head),
    L2-normalised, for the images as the task prepares them."""
    model = torchvision.models.mobilenet_v3_small()
    model.classifier = torch.nn.Identity()
    model.load_state_dict(torch.load(folder / EMBEDDER_STATE, weights_only=True))
    model.eval()
    batch = normalize(np.stack([task.prepare(image)[0] for image in images]), task.settings.mean, task.settings.std)
    with torch.no_grad():
        features = torch.flatten(model.avgpool(model.features(torch.from_numpy(np.ascontiguousarray(batch)))), 1)
    features = features.numpy().astype(np.float64)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_answers_are_the_eager_backbone_s_normalised_features(embedder, backend):
    task = load_export(embedder, BACKENDS[backend])
    images = [picture(1), picture(2, (64, 200)), Image.new("RGB", (80, 80), (250, 240, 10))]
    answers = task.run(images)
    expected = eager_embeddings(embedder, task, images)
    assert expected.shape == (3, 576)  # mobilenet_v3_small's pooled features
    for answer, vector in zip(answers, expected):
        assert isinstance(answer, list) and len(answer) == 576
        assert np.linalg.norm(answer) == pytest.approx(1.0, abs=1e-6)
        assert np.abs(np.array(answer) - vector).max() < TOLERANCE
    assert np.abs(np.array(answers[0]) - np.array(answers[1])).max() > 0.01  # different images, different vectors


def test_base64_formats_are_little_endian_float32_and_float16(embedder):
    task = load_export(embedder, "model.onnx")
    data = png(picture(4))
    as_json, as_f32, as_f16 = answer_requests(task, [{"body": data}, {"data": data, "embedding_format":
                                                                      "base64_float32"},
                                                      {"data": data, "embedding_format": "BASE64_FLOAT16"}])
    vector = np.array(as_json.body, dtype=np.float32)
    for response, name, dtype, tolerance in ((as_f32, "float32", "<f4", 0.0), (as_f16, "float16", "<f2", 1e-3)):
        assert response.status == 200
        body = response.body
        assert body["dtype"] == name
        assert body["byte_order"] == "little" and body["dim"] == vector.size
        decoded = np.frombuffer(base64.b64decode(body["embedding"]), dtype=dtype)
        assert decoded.size == vector.size and np.abs(decoded.astype(np.float32) - vector).max() <= tolerance


def test_batching_keeps_each_image_s_answer_and_error(embedder):
    task = load_export(embedder, "model.onnx")
    good, other = jpeg(picture(5)), png(picture(6, (300, 100)))
    alone = [answer_requests(task, [{"body": b}])[0].body for b in (good, other)]
    together = answer_requests(task, [{"body": good}, {"body": b"not an image"}, {"body": other},
                                      {"data": good, "embedding_format": "base64_float64"},
                                      {"data": good, "format": "png"}])
    assert [r.status for r in together] == [200, 400, 200, 400, 400]
    assert np.abs(np.array(together[0].body) - alone[0]).max() < 1e-6
    assert np.abs(np.array(together[2].body) - alone[1]).max() < 1e-6
    assert "embedding_format" in together[3].body["message"]
    assert "draws no pictures" in together[4].body["message"]


def test_open_inference_protocol_answers_one_fp32_tensor(embedder):
    task = load_export(embedder, "model.onnx")
    images = [jpeg(picture(7)), jpeg(picture(8))]
    oip = {"id": "7", "inputs": [{"name": "images", "shape": [2], "datatype": "BYTES",
                                  "data": [base64.b64encode(i).decode() for i in images]}]}
    body = answer_requests(task, [{"body": oip}])[0].body  # JSON as TorchServe parsed it
    [output] = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embeddings", "FP32", [2, 576])
    rows = np.array(output["data"]).reshape(2, 576)
    for row, image in zip(rows, images):
        assert np.abs(row - answer_requests(task, [{"body": image}])[0].body).max() < 1e-6
    # a base64 format over OIP: the usual BYTES answers
    oip["parameters"] = {"embedding_format": "base64_float16"}
    body = answer_requests(task, [{"body": oip}])[0].body  # JSON as TorchServe parsed it
    assert [o["name"] for o in body["outputs"]] == ["answers"]
    assert json.loads(body["outputs"][0]["data"][0])["dtype"] == "float16"


def test_the_export_drops_the_head_of_any_torchvision_classifier(tmp_path):
    for architecture, head in (("resnet18", "fc"), ("mobilenet_v3_small", "classifier"), ("vit_b_16", "heads"),
                               ("swin_t", "head"), ("convnext_tiny", "classifier")):
        with torch.device("meta"):  # the structure only, no weights to initialise
            model = torchvision.models.get_model(architecture)
        assert head_name(model, architecture) == head
        assert isinstance(getattr(drop_head(model, architecture).model, head), torch.nn.Identity)
    with pytest.raises(ValueError, match="no classifier head"):
        drop_head(torch.nn.Conv2d(3, 8, 3), "a conv")
    # a checkpoint of the whole classifier (its head is dropped after loading) or of the backbone alone
    classifier = torchvision.models.mobilenet_v3_small(num_classes=7)
    torch.save(classifier.state_dict(), tmp_path / "whole.pt")
    whole = load_embedder_checkpoint(torchvision.models.mobilenet_v3_small(num_classes=7), tmp_path / "whole.pt")
    assert torch.equal(whole.model.features[0][0].weight, classifier.features[0][0].weight)
    torch.save(whole.model.state_dict(), tmp_path / "backbone.pt")
    alone = load_embedder_checkpoint(torchvision.models.mobilenet_v3_small(), tmp_path / "backbone.pt")
    assert torch.equal(alone.model.features[0][0].weight, classifier.features[0][0].weight)
    with pytest.raises(ValueError, match="fits neither"):
        load_embedder_checkpoint(torchvision.models.resnet18(), tmp_path / "backbone.pt", "resnet18")
    with pytest.raises(ValueError, match="torchvision classifier"):
        build_exportable("embedding", "ssdlite320_mobilenet_v3_large")
    with pytest.raises(ValueError, match="no classes"):
        build_exportable("embedding", EMBEDDER_ARCH, labels=["a", "b"])
