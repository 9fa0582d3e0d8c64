"""Per-request options and picture answers over each transport (issue 16): in-process, REST
(query parameters of ``/invocations``, JSON fields, form fields), gRPC (input fields), the Open
Inference Protocol (``parameters``). The option parsing, validation and drawing rules themselves,
and the one-forward-pass counts (the runtime patched to count), are in tests/unit/test_options.py."""

from __future__ import annotations

import base64
import io
from typing import Any, Dict

import numpy as np
import requests
from PIL import Image

from tests.helpers import jpeg, png
from tests.scenes import bright_box_scene, colour_scene
from tests.transports import FORM, HEADERS, JSON_BODY, Request
from tsvision.serving.drawing import box_colour, voc_palette

BATCHED = "classification_batched"  # batch size 8, batch delay 300 ms


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def picture(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def asking_for(transport, media_type: str) -> Dict[str, Any]:
    """A picture asked for as a client of this transport does: ``Accept`` over HTTP, else the option."""
    if HEADERS in transport.carries:
        return {"headers": {"Accept": media_type}}
    return {"options": {"format": media_type.split("/")[1]}}


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def key(detection) -> tuple:
    return detection["index"], round(detection["score"], 6), tuple(detection["box"])


# -- options ---------------------------------------------------------------------------------
def test_top_k_from_each_place_with_one_precedence(transport, photos):
    data = jpeg(photos["chelsea"])
    full = transport.send("classification_onnx", data).body
    assert len(full) == 5  # the archive's top_k
    by_option = transport.send("classification_onnx", data, options={"top_k": 2})
    assert by_option.status == 200, by_option.body
    assert by_option.body == full[:2]
    if JSON_BODY in transport.carries:
        assert transport.send("classification_onnx", {"data": b64(data), "top_k": 3}).body == full[:3]
        # Documented precedence: a JSON body field over a query parameter (form field, gRPC input).
        both = transport.send("classification_onnx", {"data": b64(data), "top_k": 4}, options={"top_k": 2})
        assert both.body == full[:4]
    if FORM in transport.carries:
        by_form = transport.send("classification_onnx", options={"top_k": 1}, files={"image": (data, "image/jpeg")})
        assert by_form.status == 200, by_form.body
        assert by_form.body == full[:1]
        longer = transport.send("classification_onnx", options={"top_k": 8},
                                files={"image": (data, "image/jpeg")}).body
        assert len(longer) == 8 and longer[:5] == full
    if transport.name == "rest":  # TorchServe 0.12 drops /predictions' query string (documented)
        server = transport.server
        dropped = requests.post(f"{server.inference_url}/predictions/classification_onnx", params={"top_k": "2"},
                                data=data, headers=server.headers("inference"), timeout=60)
        assert dropped.json() == full


def test_a_lower_score_threshold_returns_a_superset_and_the_other_detection_options(transport, photos):
    data = jpeg(photos["astronaut"])
    many = {"max_detections": 10000}  # the archive's 100 would cap both answers

    def ask(**options):
        answer = transport.send("detection_onnx", data, options={**many, **options})
        assert answer.status == 200, answer.body
        return answer.body

    default = ask()
    lower, higher = ask(score_threshold=0.01), ask(score_threshold=0.034)
    assert {key(d) for d in default} < {key(d) for d in lower} and len(default) > 0, (len(default), len(lower))
    assert {key(d) for d in higher} < {key(d) for d in default}
    assert all(d["score"] > 0.01 for d in lower) and all(d["score"] > 0.034 for d in higher)
    assert transport.send("detection_onnx", data).body == default[:100]  # the archive's max_detections
    # max_detections: the best ones, in order
    assert ask(score_threshold=0.01, max_detections=3) == lower[:3]
    # classes: by name and by index, exactly the unfiltered answer's boxes of those classes
    # (NMS is per class, so removing other classes frees nothing)
    # COCO names several classes "N/A": by name it means them all
    wanted = sorted({d["label"] for d in default} - {"N/A"})[:2]
    by_name = ask(classes=wanted)
    assert by_name == [d for d in default if d["label"] in wanted] and by_name
    indices = sorted({d["index"] for d in by_name})
    assert ask(classes=indices) == by_name
    if JSON_BODY in transport.carries:
        by_json = transport.send("detection_onnx", {"data": b64(data), "classes": indices, "max_detections": 10000})
        assert by_json.body == by_name
    # iou_threshold: a stricter one keeps fewer boxes (not a subset: greedy NMS is not monotone in
    # it), and no two boxes of one class overlap more than it
    strict = ask(score_threshold=0.01, iou_threshold=0.1)
    assert len(strict) < len(lower) and any(a["index"] == b["index"] and iou(a["box"], b["box"]) > 0.1
                                            for i, a in enumerate(lower) for b in lower[i + 1:])
    # (pairwise IoU is not re-checked here: the answer's boxes are clipped to the image after NMS,
    # which changes overlaps at the border; test_detection_formats checks NMS on exact boxes)
    # agnostic_nms: no two boxes overlap more than the threshold, whatever their class
    aware = ask(score_threshold=0.01, iou_threshold=0.3)
    agnostic = ask(score_threshold=0.01, iou_threshold=0.3, agnostic_nms=True)
    assert any(iou(a["box"], b["box"]) > 0.3 for i, a in enumerate(aware) for b in aware[i + 1:]), \
        "the class-aware answer has cross-class overlaps, so agnostic NMS must change it"
    assert len(agnostic) < len(aware) and {key(d) for d in agnostic} != {key(d) for d in aware}
    bad = transport.send("detection_onnx", data, options={"max_detections": 0})
    assert bad.status == 400 and "'max_detections'" in bad.body["message"]


def test_classes_filter_the_toy_detector_exactly(transport):
    scene, truth = bright_box_scene(333, 777)
    data = png(scene)
    found = transport.send("toy_detection_onnx", data).body
    assert [d["label"] for d in found] == ["bright rectangle"]
    assert transport.send("toy_detection_onnx", data, options={"classes": "bright rectangle"}).body == found
    assert transport.send("toy_detection_onnx", data, options={"classes": "1"}).body == found
    assert transport.send("toy_detection_onnx", data, options={"classes": "background"}).body == []
    unknown = transport.send("toy_detection_onnx", data, options={"classes": "cat"})
    assert unknown.status == 400
    assert unknown.body["type"] == "BadOption" and "'classes'" in unknown.body["message"] \
        and "bright rectangle" in unknown.body["message"]


BAD = [
    ({"top_k": 0}, "'top_k'", "integer >= 1"),
    ({"top_k": "three"}, "'top_k'", "integer >= 1"),
    ({"score_threshold": 0.5}, "'score_threshold'", "'top_k'"),   # a detection option on a classifier
    ({"topk": 3}, "'topk'", "'top_k'"),
    ({"format": "gif"}, "'format'", "'png'"),
]


def test_bad_options_are_their_own_400_inside_a_mixed_batch(transport, photos):
    data = {name: jpeg(photos[name]) for name in ("chelsea", "coffee", "astronaut")}
    alone = {name: transport.send(BATCHED, d).body for name, d in data.items()}
    good = [(name, {}) for name in data] + [("coffee", {"top_k": 2}), ("chelsea", {"format": "png"})]
    bad = [("astronaut", options) for options, _, _ in BAD]
    answers = transport.together(BATCHED, [Request(data[name], options=options) for name, options in good + bad])
    if HEADERS in transport.carries:
        batch_sizes = [int(a.headers.get("X-Batch-Size", 0)) for a in answers]
        assert max(batch_sizes) > 1, batch_sizes  # requests shared batches
    for (name, options), answer in zip(good, answers):
        assert answer.status == 200, (options, answer.body)
        if options.get("format") == "png":
            assert picture(answer.body).height == photos[name].height
            if HEADERS in transport.carries:
                assert answer.headers["content-type"] == "image/png"
        else:
            assert answer.body == alone[name][: int(options.get("top_k", 5))]
    for (options, option, allowed), answer in zip(BAD, answers[len(good):]):
        assert answer.status == 400, (options, answer.body)
        if options == {"top_k": 0}:
            assert answer.body["type"] == "BadOption", answer.body
        assert option in answer.body["message"] and allowed in answer.body["message"], answer.body
    assert transport.send(BATCHED, data["coffee"]).body == alone["coffee"]  # the worker is fine


def test_a_picture_for_a_list_of_images_is_refused_clearly(transport):
    transport.need(JSON_BODY)
    data = png(bright_box_scene(64, 48)[0])
    listed = transport.send("toy_detection_onnx", {"data": [b64(data), b64(data)], "format": "png"})
    assert listed.status == 400 and "one image per request" in listed.body["message"]
    if FORM in transport.carries:
        form = transport.send("toy_detection_onnx", options={"format": "png"},
                              files={"a": (data, "image/png"), "b": (data, "image/png")})
        assert form.status == 400 and "one image per request" in form.body["message"]


# -- pictures --------------------------------------------------------------------------------
def test_the_toy_detectors_drawn_box_lies_where_the_json_box_says(transport):
    scene, truth = bright_box_scene(333, 777)
    data = png(scene)
    answer = transport.send("toy_detection_torchscript", data).body
    drawn = transport.send("toy_detection_torchscript", data, **asking_for(transport, "image/png"))
    assert drawn.status == 200
    if HEADERS in transport.carries:
        assert drawn.headers["content-type"] == "image/png"
    image = np.asarray(picture(drawn.body).convert("RGB")).astype(int)
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
    # label above
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() - x2) <= 1 and abs(ys.max() - y2) <= 1 and ys.min() < y1
    # far from the box the photo is unchanged (PNG sent and drawn: lossless)
    assert (image[-40:, :, :] == np.asarray(scene)[-40:, :, :]).all()


def test_classification_picture_is_the_photo_with_the_bars_beside_it(transport, photos):
    photo = photos["coffee"]
    data = png(photo)
    for media_type, kind in (("image/png", "PNG"), ("image/jpeg", "JPEG")):
        answer = transport.send("classification_torchscript", data, **asking_for(transport, media_type))
        assert answer.status == 200
        if HEADERS in transport.carries:
            assert answer.headers["content-type"] == media_type
        image = picture(answer.body)
        assert image.format == kind and image.height == photo.height and image.width > photo.width
    lossless = np.asarray(picture(transport.send("classification_torchscript", data, options={"format": "png"}).body)
                          .convert("RGB"))
    assert (lossless[:, :photo.width] == np.asarray(photo)).all()
    answer = transport.send("classification_torchscript", data).body
    best = lossless[:, photo.width:].reshape(-1, 3)
    # the top bar's colour
    assert (best == np.array(box_colour(answer[0]["index"]), dtype=np.uint8)).all(axis=1).sum() > 100


def test_segmentation_picture_overlays_the_classes_with_their_colours(transport):
    scene, truth = colour_scene(333, 777)
    data = png(scene)
    answer = transport.send("toy_segmentation_onnx", data, **asking_for(transport, "image/png"))
    assert answer.status == 200
    if HEADERS in transport.carries:
        assert answer.headers["content-type"] == "image/png"
    image = np.asarray(picture(answer.body).convert("RGB")).astype(int)
    assert image.shape[0] == 777 and image.shape[1] > 333
    photo = np.asarray(scene).astype(int)
    palette = voc_palette().astype(int)
    for cls in (1, 2, 3):  # well inside each shape: half the photo, half the class colour
        ys, xs = np.nonzero(truth == cls)
        y, x = int(np.median(ys)), int(np.median(xs))
        assert truth[y, x] == cls
        assert np.abs(image[y, x] - (photo[y, x] + palette[cls]) / 2).max() <= 1, (cls, image[y, x])
    assert (image[:5, :5] == photo[:5, :5]).all()  # background keeps the photo
    legend = image[:, 333:]
    for cls in (1, 2, 3):
        assert (np.abs(legend - palette[cls]).sum(axis=2) == 0).sum() > 20, cls  # a legend swatch per class


def test_json_and_picture_requests_share_a_batch(transport, photos):
    data = jpeg(photos["chelsea"])
    cases = [{}, {"format": "png"}, {}, {"format": "jpeg"}]
    answers = transport.together(BATCHED, [Request(data, options=options) for options in cases])
    assert [a.status for a in answers] == [200] * 4
    assert [picture(answers[1].body).format, picture(answers[3].body).format] == ["PNG", "JPEG"]
    assert answers[0].body == answers[2].body and isinstance(answers[0].body, list)
    if HEADERS in transport.carries:
        assert [a.headers["content-type"] for a in answers] == ["application/json", "image/png", "application/json",
                                                                "image/jpeg"]
        assert max(int(a.headers["X-Batch-Size"]) for a in answers) > 1


# -- what one protocol alone has ----------------------------------------------------------------
def test_grpc_stream_predictions_answers_the_picture_in_one_message(served, photos):
    """A standard client's StreamPredictions (no tsvision marker): TorchServe 0.12 restarted the
    worker on it (NullPointerException in its frontend) until the handler marked gRPC answers."""
    from tsvision.tools.clients.grpc_client import GrpcClient

    client = GrpcClient(f"127.0.0.1:{served.properties['grpc_inference_port']}",
                        f"127.0.0.1:{served.properties['grpc_management_port']}", served.workdir / "key_file.json")
    try:
        pb = client.stubs.inference_pb2
        request = pb.PredictionsRequest(model_name="classification_onnx",
                                        input={"data": jpeg(photos["chelsea"]), "format": b"png"})
        once = client.inference.Predictions(request, metadata=client._metadata["inference"], timeout=60).prediction
        workers = served.worker_pids("classification_onnx")
        streamed = list(client.inference.StreamPredictions(request, metadata=client._metadata["inference"],
                                                           timeout=60))
        assert len(streamed) == 1 and streamed[0].prediction == once  # the same picture, one message
        assert served.worker_pids("classification_onnx") == workers
    finally:
        client.close()
