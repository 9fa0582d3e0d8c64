"""Per-request options and picture answers against the session's real TorchServe (issue 16)."""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.helpers import jpeg, png
from tests.scenes import bright_box_scene, colour_scene
from tsvision.serving.drawing import box_colour, voc_palette

pytestmark = pytest.mark.e2e
BATCHED = "classification_batched"  # batch size 8, batch delay 300 ms


def post(served, model, body, params=None, headers=None, content_type="application/octet-stream", files=None):
    """POST to ``/invocations?model_name=MODEL&<params>`` (TorchServe 0.12 drops the query string
    of ``/predictions/MODEL``; it hands ``/invocations``' query parameters to the handler); with
    ``files``, ``params`` go as multipart form fields to ``/predictions/MODEL`` instead."""
    headers = {**served.headers("inference"), **(headers or {})}
    if files is not None:
        return requests.post(f"{served.inference_url}/predictions/{model}", data=params, files=files, headers=headers, timeout=60)
    headers["Content-Type"] = content_type
    return requests.post(f"{served.inference_url}/invocations", params={"model_name": model, **(params or {})}, data=body,
                         headers=headers, timeout=60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def picture(response) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def key(detection) -> tuple:
    return detection["index"], round(detection["score"], 6), tuple(detection["box"])


# -- options ---------------------------------------------------------------------------------
def test_top_k_from_query_json_and_form_with_one_precedence(served, photos):
    data = jpeg(photos["chelsea"])
    full = post(served, "classification_onnx", data).json()
    assert len(full) == 5  # the archive's top_k
    by_query = post(served, "classification_onnx", data, params={"top_k": "2"})
    assert by_query.status_code == 200, by_query.text
    assert by_query.json() == full[:2]
    by_json = post(served, "classification_onnx", json.dumps({"data": b64(data), "top_k": 3}), content_type="application/json")
    assert by_json.json() == full[:3]
    by_form = post(served, "classification_onnx", None, params={"top_k": "1"}, files={"image": ("cat.jpg", data, "image/jpeg")})
    assert by_form.status_code == 200, by_form.text
    assert by_form.json() == full[:1]
    longer = post(served, "classification_onnx", None, params={"top_k": "8"}, files={"image": ("cat.jpg", data, "image/jpeg")}).json()
    assert len(longer) == 8 and longer[:5] == full
    # TorchServe 0.12 drops /predictions' query string (documented): the archive's top_k answers
    dropped = requests.post(f"{served.inference_url}/predictions/classification_onnx", params={"top_k": "2"}, data=data,
                            headers=served.headers("inference"), timeout=60)
    assert dropped.json() == full
    # Documented precedence: a JSON body field over a query parameter.
    both = post(served, "classification_onnx", json.dumps({"data": b64(data), "top_k": 4}), params={"top_k": "2"},
                content_type="application/json")
    assert both.json() == full[:4]


def test_a_lower_score_threshold_returns_a_superset_and_the_other_detection_options(served, photos):
    data = jpeg(photos["astronaut"])
    many = {"max_detections": "10000"}  # the archive's 100 would cap both answers

    def ask(**params):
        response = post(served, "detection_onnx", data, params={**many, **params})
        assert response.status_code == 200, response.text
        return response.json()

    default = ask()
    lower, higher = ask(score_threshold="0.01"), ask(score_threshold="0.034")
    assert {key(d) for d in default} < {key(d) for d in lower} and len(default) > 0, (len(default), len(lower))
    assert {key(d) for d in higher} < {key(d) for d in default}
    assert all(d["score"] > 0.01 for d in lower) and all(d["score"] > 0.034 for d in higher)
    assert post(served, "detection_onnx", data).json() == default[:100]  # the archive's max_detections
    # max_detections: the best ones, in order
    assert ask(score_threshold="0.01", max_detections="3") == lower[:3]
    # classes: by name and by index, exactly the unfiltered answer's boxes of those classes
    # (NMS is per class, so removing other classes frees nothing)
    wanted = sorted({d["label"] for d in default} - {"N/A"})[:2]  # COCO names several classes "N/A": by name it means them all
    by_name = ask(classes=",".join(wanted))
    assert by_name == [d for d in default if d["label"] in wanted] and by_name
    indices = sorted({d["index"] for d in by_name})
    by_index = post(served, "detection_onnx", json.dumps({"data": b64(data), "classes": indices, "max_detections": 10000}),
                    content_type="application/json").json()
    assert by_index == by_name
    # iou_threshold: a stricter one keeps fewer boxes (not a subset: greedy NMS is not monotone in
    # it), and no two boxes of one class overlap more than it
    strict = ask(score_threshold="0.01", iou_threshold="0.1")
    assert len(strict) < len(lower) and any(a["index"] == b["index"] and iou(a["box"], b["box"]) > 0.1
                                            for i, a in enumerate(lower) for b in lower[i + 1:])
    # (pairwise IoU is not re-checked here: the answer's boxes are clipped to the image after NMS,
    # which changes overlaps at the border; test_detection_formats checks NMS on exact boxes)
    # agnostic_nms: no two boxes overlap more than the threshold, whatever their class
    aware = ask(score_threshold="0.01", iou_threshold="0.3")
    agnostic = ask(score_threshold="0.01", iou_threshold="0.3", agnostic_nms="true")
    assert any(iou(a["box"], b["box"]) > 0.3 for i, a in enumerate(aware) for b in aware[i + 1:]), \
        "the class-aware answer has cross-class overlaps, so agnostic NMS must change it"
    assert len(agnostic) < len(aware) and {key(d) for d in agnostic} != {key(d) for d in aware}


def test_classes_filter_the_toy_detector_exactly(served):
    scene, truth = bright_box_scene(333, 777)
    data = png(scene)
    found = post(served, "toy_detection_onnx", data).json()
    assert [d["label"] for d in found] == ["bright rectangle"]
    assert post(served, "toy_detection_onnx", data, params={"classes": "bright rectangle"}).json() == found
    assert post(served, "toy_detection_onnx", data, params={"classes": "1"}).json() == found
    assert post(served, "toy_detection_onnx", data, params={"classes": "background"}).json() == []
    unknown = post(served, "toy_detection_onnx", data, params={"classes": "cat"})
    assert unknown.status_code == 400
    assert unknown.json()["type"] == "BadOption" and "'classes'" in unknown.json()["message"] and "bright rectangle" in unknown.json()["message"]


BAD = [
    ({"top_k": "0"}, "'top_k'", "integer >= 1"),
    ({"top_k": "three"}, "'top_k'", "integer >= 1"),
    ({"score_threshold": "0.5"}, "'score_threshold'", "'top_k'"),   # a detection option on a classifier
    ({"topk": "3"}, "'topk'", "'top_k'"),
    ({"format": "gif"}, "'format'", "'png'"),
]


def test_bad_options_are_their_own_400_inside_a_mixed_batch(served, photos):
    data = {name: jpeg(photos[name]) for name in ("chelsea", "coffee", "astronaut")}
    alone = {name: post(served, BATCHED, d).json() for name, d in data.items()}
    good = [(name, {}) for name in data] + [("coffee", {"top_k": "2"}), ("chelsea", {"format": "png"})]
    bad = [("astronaut", params) for params, _, _ in BAD]
    cases = good + bad
    barrier = threading.Barrier(len(cases))

    def send(case):
        name, params = case
        barrier.wait()
        return post(served, BATCHED, data[name], params=params)

    with ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(send, cases))
    batch_sizes = [int(r.headers.get("X-Batch-Size", 0)) for r in responses]
    assert max(batch_sizes) > 1, batch_sizes  # requests shared batches
    for (name, params), response in zip(good, responses):
        assert response.status_code == 200, (params, response.text)
        if params.get("format") == "png":
            assert response.headers["content-type"] == "image/png" and picture(response).height == photos[name].height
        else:
            assert response.json() == alone[name][: int(params.get("top_k", 5))]
    for (params, option, allowed), response in zip(BAD, responses[len(good):]):
        assert response.status_code == 400, (params, response.text)
        body = response.json()
        assert option in body["message"] and allowed in body["message"], body
    assert served.predict(BATCHED, data["coffee"]).json() == alone["coffee"]  # the worker is fine


# -- pictures --------------------------------------------------------------------------------
def test_the_toy_detectors_drawn_box_lies_where_the_json_box_says(served):
    scene, truth = bright_box_scene(333, 777)
    data = png(scene)
    answer = post(served, "toy_detection_torchscript", data).json()
    drawn = post(served, "toy_detection_torchscript", data, headers={"Accept": "image/png"})
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    image = np.asarray(picture(drawn).convert("RGB")).astype(int)
    assert image.shape == (777, 333, 3)
    colour = np.array(box_colour(answer[0]["index"]))
    x1, y1, x2, y2 = (round(v) for v in answer[0]["box"])
    on_outline = (np.abs(image - colour).sum(axis=2) <= 3)
    ys, xs = np.nonzero(on_outline)
    # the outline colour fills the box's left and right edges from just below the label to y2
    mid = (y1 + y2) // 2
    assert on_outline[mid, x1 - 1:x1 + 2].any() and on_outline[mid, x2 - 2:x2 + 1].any()
    assert on_outline[y2 - 2:y2 + 1, (x1 + x2) // 2].any()
    assert not on_outline[mid, x1 + 10:x2 - 10].any()  # inside the box the photo is untouched
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() - x2) <= 1 and abs(ys.max() - y2) <= 1 and ys.min() < y1  # label above
    # far from the box the photo is unchanged (PNG sent and drawn: lossless)
    assert (image[-40:, :, :] == np.asarray(scene)[-40:, :, :]).all()


def test_classification_picture_is_the_photo_with_the_bars_beside_it(served, photos):
    photo = photos["coffee"]
    data = png(photo)
    for accept, kind in (("image/png", "PNG"), ("image/jpeg", "JPEG")):
        response = post(served, "classification_torchscript", data, headers={"Accept": accept})
        assert response.status_code == 200 and response.headers["content-type"] == accept
        image = picture(response)
        assert image.format == kind and image.height == photo.height and image.width > photo.width
    lossless = np.asarray(picture(post(served, "classification_torchscript", data, params={"format": "png"})).convert("RGB"))
    assert (lossless[:, :photo.width] == np.asarray(photo)).all()
    answer = post(served, "classification_torchscript", data).json()
    best = lossless[:, photo.width:].reshape(-1, 3)
    assert (best == np.array(box_colour(answer[0]["index"]), dtype=np.uint8)).all(axis=1).sum() > 100  # the top bar's colour


def test_segmentation_picture_overlays_the_classes_with_their_colours(served):
    scene, truth = colour_scene(333, 777)
    data = png(scene)
    response = post(served, "toy_segmentation_onnx", data, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = np.asarray(picture(response).convert("RGB")).astype(int)
    assert image.shape[0] == 777 and image.shape[1] > 333
    photo = np.asarray(scene).astype(int)
    palette = voc_palette().astype(int)
    inner = truth.copy()
    for cls in (1, 2, 3):  # well inside each shape: half the photo, half the class colour
        ys, xs = np.nonzero(truth == cls)
        y, x = int(np.median(ys)), int(np.median(xs))
        assert truth[y, x] == cls
        assert np.abs(image[y, x] - (photo[y, x] + palette[cls]) / 2).max() <= 1, (cls, image[y, x])
    assert (image[:5, :5] == photo[:5, :5]).all()  # background keeps the photo
    legend = image[:, 333:]
    for cls in (1, 2, 3):
        assert (np.abs(legend - palette[cls]).sum(axis=2) == 0).sum() > 20, cls  # a legend swatch per class


def test_json_and_picture_requests_share_a_batch(served, photos):
    data = jpeg(photos["chelsea"])
    cases = [{}, {"format": "png"}, {}, {"format": "jpeg"}]
    barrier = threading.Barrier(len(cases))

    def send(params):
        barrier.wait()
        return post(served, BATCHED, data, params=params)

    with ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(send, cases))
    assert [r.headers["content-type"] for r in responses] == ["application/json", "image/png", "application/json", "image/jpeg"]
    assert responses[0].json() == responses[2].json()
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1


# -- other protocols ---------------------------------------------------------------------------
def test_grpc_predictions_carries_options_and_returns_the_picture(served, photos):
    from tsvision.tools.clients.grpc_client import GrpcClient

    client = GrpcClient(f"127.0.0.1:{served.properties['grpc_inference_port']}",
                        f"127.0.0.1:{served.properties['grpc_management_port']}", served.workdir / "key_file.json")
    try:
        data = jpeg(photos["chelsea"])
        pb = client.stubs.inference_pb2

        def call(**extra):
            request = pb.PredictionsRequest(model_name="classification_onnx", input={"data": data, **extra})
            return client.inference.Predictions(request, metadata=client._metadata["inference"], timeout=60).prediction

        full = json.loads(call())
        assert json.loads(call(top_k=b"2")) == full[:2]
        drawn = Image.open(io.BytesIO(call(format=b"png")))
        assert drawn.format == "PNG" and drawn.height == photos["chelsea"].height
        assert json.loads(call(top_k=b"0"))["type"] == "BadOption"
        # a standard client's StreamPredictions (no tsvision marker): TorchServe 0.12 restarted the
        # worker on it (NullPointerException in its frontend) until the handler marked gRPC answers
        workers = served.worker_pids("classification_onnx")
        streamed = list(client.inference.StreamPredictions(
            pb.PredictionsRequest(model_name="classification_onnx", input={"data": data, "format": b"png"}),
            metadata=client._metadata["inference"], timeout=60))
        assert len(streamed) == 1 and streamed[0].prediction == call(format=b"png")  # the same picture, one message
        assert served.worker_pids("classification_onnx") == workers
    finally:
        client.close()


def test_open_inference_protocol_parameters_and_a_bytes_picture(served, photos):
    data = jpeg(photos["astronaut"])
    url = f"{served.inference_url}/v2/models/detection_onnx/infer"

    def infer(parameters=None):
        body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(data)]}]}
        if parameters is not None:
            body["parameters"] = parameters
        response = requests.post(url, json=body, headers=served.headers("inference"), timeout=60)
        return response

    default = json.loads(infer({"max_detections": 10000}).json()["outputs"][0]["data"][0])
    lower = json.loads(infer({"score_threshold": 0.01, "max_detections": 10000}).json()["outputs"][0]["data"][0])
    assert {key(d) for d in default} < {key(d) for d in lower}
    drawn = infer({"format": "png"}).json()["outputs"][0]
    assert drawn["name"] == "picture" and drawn["datatype"] == "BYTES"
    image = Image.open(io.BytesIO(base64.b64decode(drawn["data"][0])))
    assert image.format == "PNG" and image.size == photos["astronaut"].size
    bad = infer({"max_detections": 0})
    assert bad.status_code == 400 and "'max_detections'" in bad.text
