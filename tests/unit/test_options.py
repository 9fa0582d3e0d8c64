"""Per-request options and pictures in-process: parsing, precedence, validation, drawing, and the
one-forward-pass counts (the runtime patched to count its calls). The options and pictures over
every transport (in-process included) are tests/e2e/test_options.py."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import jpeg, load_task, png
from tests.scenes import bright_box_scene, colour_scene
from tsvision.serving.drawing import (
    box_colour,
    draw_classification,
    draw_detection,
    draw_segmentation,
    encode,
    voc_palette,
)
from tsvision.serving.errors import RequestError
from tsvision.serving.options import picture_type, resolve
from tsvision.serving.payloads import parse_request
from tsvision.serving.service import answer_requests
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.segmentation import class_mask, decode_png
from tsvision.serving.tasks.torchvision_detection import TorchvisionDetectionTask

DETECTION = ("score_threshold", "iou_threshold", "max_detections", "classes", "agnostic_nms")
LABELS = ["background", "person", "dog"]
ARCHIVE = Settings.from_mapping({"task": "detection", "score_threshold": 0.5, "iou_threshold": 0.5})


def check(body=None, row=None, accept=None, accepted=DETECTION):
    return resolve(accepted, ARCHIVE, LABELS, body or {}, row or {}, accept)


def test_options_apply_to_a_copy_of_the_archive_settings():
    options = check(row={"score_threshold": b"0.2", "max_detections": "7", "agnostic_nms": b"true",
                         "classes": "person,2"})
    s = options.settings
    assert (s.score_threshold, s.max_detections, s.agnostic_nms, s.classes) == (0.2, 7, True, (1, 2))
    assert ARCHIVE.score_threshold == 0.5 and ARCHIVE.classes is None  # the archive's own settings are untouched
    assert options.picture is None and options.given == ("agnostic_nms", "classes", "max_detections", "score_threshold")
    assert check().settings is ARCHIVE


def test_one_precedence_json_body_over_query_and_form_and_format_over_accept():
    assert check(body={"score_threshold": 0.3}, row={"score_threshold": "0.9"}).settings.score_threshold == 0.3
    assert check(row={"format": "jpeg"}, accept="image/png").picture == "image/jpeg"
    assert check(body={"format": "json"}, accept="image/png").picture is None
    assert check(accept="image/png").picture == "image/png"


@pytest.mark.parametrize("accept, expected", [
    ("image/png", "image/png"), ("image/jpeg", "image/jpeg"), ("image/*", "image/png"), ("*/*", None),
    ("application/json", None), ("application/json;q=0.5, image/jpeg", "image/jpeg"),
    ("image/png;q=0.2, application/json", None), ("text/html,image/webp,*/*;q=0.8", None), ("", None)])
def test_accept_header(accept, expected):
    assert picture_type(accept) == expected


@pytest.mark.parametrize("row, option, allowed", [
    ({"score_threshold": "1.5"}, "score_threshold", "from 0 to 1"),
    ({"score_threshold": "nan"}, "score_threshold", "from 0 to 1"),
    ({"iou_threshold": "high"}, "iou_threshold", "from 0 to 1"),
    ({"max_detections": "0"}, "max_detections", "integer >= 1"),
    ({"max_detections": "2.5"}, "max_detections", "integer >= 1"),
    ({"agnostic_nms": "maybe"}, "agnostic_nms", "true or false"),
    ({"classes": "cat"}, "classes", "person"),
    ({"classes": "7"}, "classes", "indices 0..2"),
    ({"format": "gif"}, "format", "'png'"),
    ({"top_k": "3"}, "top_k", "'score_threshold'"),        # a classification option on a detector
    ({"score-threshold": "0.3"}, "score-threshold", "'score_threshold'"),
])
def test_bad_values_name_the_option_and_what_is_allowed(row, option, allowed):
    with pytest.raises(RequestError) as raised:
        check(row=row)
    assert raised.value.status == 400 and repr(option) in raised.value.message and allowed in raised.value.message


def test_json_values_keep_their_types():
    assert check(body={"classes": [1, "dog"], "agnostic_nms": False, "max_detections": 2}).settings.classes == (1, 2)
    with pytest.raises(RequestError, match="max_detections"):
        check(body={"max_detections": True})
    with pytest.raises(RequestError, match="score_threshold"):
        check(body={"score_threshold": [0.1]})


def test_query_parameters_and_form_fields_are_split_from_the_images():
    image = jpeg(Image.new("RGB", (20, 10), "white"))
    parsed = parse_request({"body": image, "top_k": b"3", "format": "png"})
    assert parsed.items == [image] and parsed.row_options == {"top_k": b"3", "format": "png"}
    form = parse_request({"file": image, "top_k": "2", "thing": "x"}, {"file": "image/jpeg"})
    assert form.items == [image] and form.row_options == {"top_k": "2", "thing": "x"} and form.shape == "single"
    two = parse_request({"a": image, "b": image, "top_k": "2"})
    assert two.items == [image, image] and two.shape == "list"
    body = parse_request({"body": {"data": base64.b64encode(image).decode(), "top_k": 4}})
    assert body.items == [image] and body.options == {"top_k": 4}
    v1 = parse_request({"body": {"instances": [base64.b64encode(image).decode()], "top_k": 1}})
    assert v1.options == {"top_k": 1} and v1.shape == "kserve_v1"
    v2 = parse_request({"body": {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                             "data": [base64.b64encode(image).decode()]}],
                                 "parameters": {"format": "png"}, "id": "7"}})
    assert v2.options == {"format": "png"} and v2.shape == "kserve_v2"
    # tritonclient's HTTP client adds the protocol's own binary_data_output to every plain call: not an option
    plain = parse_request({"body": {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                                "data": [base64.b64encode(image).decode()]}],
                                    "parameters": {"binary_data_output": True, "top_k": 2}}})
    assert plain.options == {"top_k": 2}


# -- in-process, with the toy detector ----------------------------------------------------------
@pytest.fixture(scope="module")
def toy_detector(toy_exports):
    return load_task(toy_exports / "detection", "onnx")


def test_a_batch_with_different_options_shares_one_pass_and_each_gets_its_own(toy_detector, monkeypatch):
    scene, truth = bright_box_scene(333, 777)
    data = png(scene)
    calls = []
    run = toy_detector.runtime.run
    monkeypatch.setattr(toy_detector.runtime, "run", lambda inputs: calls.append(len(inputs)) or run(inputs))
    rows = [{"body": data}, {"body": data, "classes": "background"}, {"body": data, "max_detections": "0"},
            {"body": data, "format": "png"},
            {"body": json.dumps({"data": base64.b64encode(data).decode(), "score_threshold": 1}).encode()}]
    plain, filtered, bad, drawn, none = answer_requests(toy_detector, rows)
    assert calls == [4]  # the bad request's image never reaches the model; the others share one pass
    assert [d["label"] for d in plain.body] == ["bright rectangle"]
    assert np.allclose(plain.body[0]["box"], truth, atol=1.5)
    assert filtered.body == [] and none.body == []  # only background wanted; no score is above 1
    assert bad.status == 400 and "max_detections" in bad.body["message"]
    assert drawn.content_type == "image/png" and Image.open(io.BytesIO(drawn.body)).size == (333, 777)


def test_segmentation_mask_formats_decode_to_the_same_class_mask(toy_exports):
    """The toy segmenter on the colour scene: ``mask_format`` rle and polygon (per class) decode to
    the class mask of the default PNG answer, which is the scene's truth; all in one forward pass."""
    task = load_task(toy_exports / "segmentation", "onnx")
    scene, truth = colour_scene(333, 257)
    data = png(scene)
    calls = []
    run = task.runtime.run
    task.runtime.run = lambda inputs: calls.append(len(inputs)) or run(inputs)
    plain, rle, polygon, bad = answer_requests(task, [{"body": data}, {"body": data, "mask_format": "rle"},
                                                      {"body": data, "mask_format": b"polygon"},
                                                      {"body": data, "mask_format": "bmp"}])
    assert calls == [3]
    assert np.array_equal(decode_png(plain.body["mask"]), truth)
    assert "mask" not in rle.body and "mask" not in polygon.body
    assert [c["pixels"] for c in rle.body["classes"]] == [c["pixels"] for c in plain.body["classes"]]
    assert isinstance(rle.body["classes"][0]["mask"], dict) and isinstance(polygon.body["classes"][0]["mask"], list)
    assert np.array_equal(class_mask(rle.body), truth)
    assert np.array_equal(class_mask(polygon.body), truth)  # the scene's shapes have no holes
    assert bad.status == 400 and "mask_format" in bad.body["message"] and "polygon" in bad.body["message"]
    task.close()


# -- the torchvision format: the model ran its own NMS at box_score_thresh 0.05 ------------------
def test_torchvision_format_options_after_the_models_own_nms():
    settings = Settings.from_mapping({"task": "detection", "detection_format": "torchvision", "score_threshold": 0.5,
                                      "iou_threshold": 0.5, "background_index": 0})
    task = TorchvisionDetectionTask(None, settings, LABELS)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    labels, scores = np.array([1, 1, 2, 2]), np.array([0.9, 0.6, 0.7, 0.3], dtype=np.float32)
    outputs = [boxes, labels, scores]

    def finish(**options):
        applied = resolve(task.options, settings, LABELS, options, {}).settings
        return [(d["index"], round(d["score"], 2)) for d in task.finish(outputs, (100, 100), applied).to_json()]

    assert finish() == [(1, 0.9), (2, 0.7), (1, 0.6)]  # the model's own suppression is kept as it is
    assert finish(score_threshold=0.1) == [(1, 0.9), (2, 0.7), (1, 0.6), (2, 0.3)]
    assert finish(classes=["dog"], score_threshold=0.1) == [(2, 0.7), (2, 0.3)]
    assert finish(iou_threshold=0.3) == [(1, 0.9), (2, 0.7)]        # stricter: boxes 0 and 1 overlap 0.68
    assert finish(agnostic_nms=True) == [(1, 0.9)]                  # 0.9 suppresses the other two
    assert finish(max_detections=1) == [(1, 0.9)]


# -- drawing -------------------------------------------------------------------------------------
def test_drawings_keep_the_photo_size_and_scale_the_text():
    photo = Image.new("RGB", (1600, 1200), (30, 30, 30))
    boxes = draw_detection(photo, [{"label": "person", "index": 1, "score": 0.9, "box": [100, 300, 900, 1000]}])
    assert boxes.size == photo.size
    pixels = np.asarray(boxes)
    assert tuple(pixels[600, 100]) == box_colour(1) and tuple(pixels[600, 500]) == (30, 30, 30)
    label_rows = np.nonzero((pixels[:300, 100:400] == box_colour(1)).all(axis=2).any(axis=1))[0]
    assert 30 <= label_rows.size <= 80  # the label band is about 1/40 of the short side tall, above the box
    bars = draw_classification(photo, [{"label": "a", "index": 3, "score": 0.8},
                                       {"label": "b", "index": 4, "score": 0.1}])
    assert bars.height == 1200 and bars.width > 1600 and (np.asarray(bars)[:, :1600] == 30).all()
    mask = np.zeros((1200, 1600), dtype=np.uint8)
    mask[:, 800:] = 2
    overlay = draw_segmentation(photo, mask, [{"index": 0, "label": "bg", "fraction": 0.5, "pixels": 1},
                                              {"index": 2, "label": "dog", "fraction": 0.5, "pixels": 1}])
    assert tuple(np.asarray(overlay)[10, 1000]) == tuple(
        np.round((np.array([30, 30, 30]) + voc_palette()[2]) / 2).astype(int))
    assert Image.open(io.BytesIO(encode(overlay, "image/jpeg"))).format == "JPEG"


def test_invocations_routing_fields_are_not_options():
    image = jpeg(Image.new("RGB", (20, 10), "white"))
    parsed = parse_request({"model_name": b"m", "model_version": b"1.0", "body": image, "top_k": b"2"})
    assert parsed.items == [image] and parsed.row_options == {"top_k": b"2"}


def test_a_class_name_shared_by_several_indices_selects_them_all():
    labels = ["background", "N/A", "cat", "N/A"]
    assert resolve(DETECTION, ARCHIVE, labels, {"classes": ["N/A", "cat"]}, {}).settings.classes == (1, 2, 3)
