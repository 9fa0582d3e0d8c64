"""Image decoding, request parsing, geometry and settings: in-process, no model."""

from __future__ import annotations

import base64
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.corpus import png_declaring, with_orientation
from tests.helpers import jpeg
from tsvision.serving.errors import RequestError
from tsvision.serving.geometry import Placement, fit_square, normalize, resize_center_crop, resize_shorter_side
from tsvision.serving.images import decode_image
from tsvision.serving.payloads import STREAM_FIELD, format_response, is_stream, parse_request
from tsvision.serving.settings import Settings, load_labels


# -- images ------------------------------------------------------------------------------
def test_exif_orientation_is_applied_before_anything_else():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 50, 100))  # white strip on the left edge
    decoded = decode_image(with_orientation(image, 6))  # 6: rotate 90° clockwise to display
    assert decoded.size == (100, 300)
    pixels = np.asarray(decoded).mean(axis=2)
    assert pixels[:40].mean() > 200 and pixels[60:].mean() < 50  # the strip is now on top


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_pillows_pixels(orientation):
    """decode_image transposes in place (no copy of upright photos): the pixels of ImageOps.exif_transpose."""
    image = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    data = with_orientation(image, orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(expected))


@pytest.mark.parametrize("data, status, kind", [
    (b"", 400, "EmptyInput"),
    (b"hello, this is text", 400, "UnreadableImage"),
    (png_declaring(100_000, 100_000), 413, "ImageTooLarge"),
])
def test_bad_images_raise_input_errors(data, status, kind):
    with pytest.raises(RequestError) as caught:
        decode_image(data)
    assert (caught.value.status, caught.value.kind) == (status, kind)
    body = caught.value.to_body()
    assert body["code"] == status and body["message"]


def test_truncated_jpeg_is_a_400(photos):
    data = jpeg(photos["chelsea"])
    with pytest.raises(RequestError) as caught:
        decode_image(data[: len(data) // 3])
    assert caught.value.status == 400


def test_pixel_limit_is_configurable():
    data = jpeg(Image.new("RGB", (100, 100)))
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(RequestError):
        decode_image(data, max_pixels=9_999)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (20, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("CMYK",) else "PNG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.mode == "RGB" and decoded.size == (20, 10)


# -- requests ----------------------------------------------------------------------------
def items_of(row, headers=None):
    parsed = parse_request(row, headers)
    assert not isinstance(parsed, RequestError), parsed
    return parsed.items


def test_request_shapes_give_the_same_bytes():
    data = jpeg(Image.new("RGB", (8, 8)))
    text = base64.b64encode(data).decode()
    rows = [{"body": data}, {"data": bytearray(data)}, {"body": {"data": text}}, {"body": text},
            {"body": f"data:image/jpeg;base64,{text}"}, {"file": data}, {"body": {"image": {"b64": text}}},
            {"body": base64.urlsafe_b64encode(data).decode().rstrip("=")}, data,
            {"data": data, STREAM_FIELD: b"1"}, {"file": data, STREAM_FIELD: b"1"}]  # gRPC stream marker is no image
    assert all(items_of(row) == [data] for row in rows)
    assert [is_stream(row) for row in rows[-3:]] == [False, True, True]


def test_several_images_in_one_request_keep_their_order():
    images = [jpeg(Image.new("RGB", (8, 8), (i * 40, 0, 0))) for i in range(3)]
    texts = [base64.b64encode(d).decode() for d in images]
    shapes = {
        "kserve_v1": {"body": {"instances": [{"data": t} for t in texts]}},
        "list": {"body": [{"data": t} for t in texts]},
        "kserve_v2": {"body": {"id": "r1",
                               "inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "data": texts}]}},
    }
    for shape, row in shapes.items():
        parsed = parse_request(row)
        assert parsed.shape == shape and parsed.items == images
    assert parse_request({"body": {"data": texts}}).items == images
    multipart = parse_request({"a": images[0], "b": images[1], "c": images[2]},
                              {"a": {"content-type": "image/jpeg"}, "b": {"content-type": "image/jpeg"},
                               "c": {"content-type": "application/octet-stream"}})
    assert multipart.shape == "list" and multipart.items == images


@pytest.mark.parametrize("row, headers, status, kind", [
    ({"body": {"data": "***not base64***"}}, None, 400, "BadBase64"),
    ({"body": {"picture": "aGVsbG8="}}, None, 400, "MissingImage"),
    ({"body": {"data": 12}}, None, 400, "BadJson"),
    ({"body": b'{"data": '}, {"body": {"content-type": "application/json"}}, 400, "BadJson"),
    ({"body": "<html></html>"}, {"body": {"content-type": "text/html; charset=utf-8"}}, 415, "UnsupportedMediaType"),
    ({"body": {"inputs": [{"datatype": "FP32", "data": [1.0]}]}}, None, 400, "BadJson"),
    ({"body": {"instances": []}}, None, 400, "MissingImage"),
    ({"body": {"instances": ["aGVsbG8="] * 65}}, None, 413, "TooManyImages"),
    ({}, None, 400, "MissingImage"),
])
def test_malformed_requests_get_their_status(row, headers, status, kind):
    error = parse_request(row, headers)
    if not isinstance(error, RequestError):  # an image-level error inside a valid request
        error = next(item for item in error.items if isinstance(item, RequestError))
    assert (error.status, error.kind) == (status, kind)
    assert error.message


def test_multi_image_answers_take_the_shape_of_the_request():
    parsed = parse_request({"body": {"instances": ["aGVsbG8=", "aGVsbG8="]}})
    assert format_response(parsed, [["a"], ["b"]]) == {"predictions": [["a"], ["b"]]}
    failed = format_response(parsed, [["a"], RequestError(413, "ImageTooLarge", "too big")])
    assert (failed.status, failed.kind) == (413, "ImageTooLarge") and failed.message.startswith("image 1 of 2: ")
    v2 = format_response(parse_request({"body": {"id": "x",
                                                 "inputs": [{"name": "i", "datatype": "BYTES", "shape": [1],
                                                             "data": ["aGVsbG8="]}]}}),
                         [{"k": 1}], "m", "1.0")
    assert v2 == {"id": "x", "model_name": "m", "model_version": "1.0",
                  "outputs": [{"name": "answers", "shape": [1], "datatype": "BYTES", "data": ['{"k": 1}']}]}


def test_sixteen_bit_grey_keeps_its_range():
    from tests.corpus import sixteen_bit_png

    decoded = np.asarray(decode_image(sixteen_bit_png()))
    assert decoded.shape == (100, 200, 3) and decoded.min() == 0 and decoded.max() == 255
    assert len(np.unique(decoded)) > 200  # not clipped to black/white


# -- geometry ----------------------------------------------------------------------------
def test_letterbox_keeps_aspect_and_maps_boxes_back():
    image = Image.new("RGB", (400, 200), (255, 0, 0))
    array, placement = fit_square(image, 100, "letterbox", fill=(1, 2, 3))
    assert array.shape == (100, 100, 3)
    assert placement == Placement(400, 200, 100, 50, 100)
    assert (array[:50] == (255, 0, 0)).all() and (array[50:] == (1, 2, 3)).all()
    boxes = placement.boxes_to_original(np.array([[10, 5, 60, 40], [-5, 0, 120, 70]], dtype=np.float32))
    np.testing.assert_allclose(boxes, [[40, 20, 240, 160], [0, 0, 400, 200]])


def test_stretch_maps_each_axis():
    array, placement = fit_square(Image.new("RGB", (333, 777)), 64, "stretch", fill=(0, 0, 0))
    assert array.shape == (64, 64, 3)
    np.testing.assert_allclose(placement.boxes_to_original(np.array([[32, 32, 64, 64]], dtype=np.float32)),
                               [[166.5, 388.5, 333, 777]], rtol=1e-6)


def test_centre_crop_matches_torchvision_preset(photos):
    from torchvision.transforms import v2

    reference = v2.Compose([v2.PILToTensor(), v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    for image in photos.values():
        ours = resize_center_crop(image, 256, 224).astype(np.int16)
        theirs = reference(image).permute(1, 2, 0).numpy().astype(np.int16)
        assert ours.shape == theirs.shape == (224, 224, 3)
        assert np.abs(ours - theirs).mean() < 1.5, image.size


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (520, 520), (333, 41), (4000, 500)])
def test_shorter_side_is_torchvisions_segmentation_resize(size):
    """``shorter_side`` equals torchvision's ``Resize(520, max_size=1040)`` of a PIL image (the preset
    without its missing cap; the photos below 2:1 are not capped), and its placement covers the whole input."""
    from torchvision.transforms import functional as TF

    image = Image.fromarray(np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    array, placement = resize_shorter_side(image, 520)
    theirs = np.asarray(TF.resize(image, 520, max_size=1040))
    assert array.shape == theirs.shape and np.array_equal(array, theirs), (size, array.shape, theirs.shape)
    assert (placement.input_height, placement.input_width) == array.shape[:2] \
        == (placement.content_height, placement.content_width)
    if max(size) <= 2 * min(size):
        assert min(array.shape[:2]) == 520


def test_shorter_side_is_for_segmentation_with_a_cap_above_input_size():
    assert Settings.from_mapping({"task": "segmentation", "resize_mode": "shorter_side", "input_size": 520,
                                  "max_size": 600})
    with pytest.raises(ValueError, match="segmentation task only"):
        Settings.from_mapping({"task": "detection", "resize_mode": "shorter_side"})
    with pytest.raises(ValueError, match="max_size"):
        Settings.from_mapping({"task": "segmentation", "resize_mode": "shorter_side", "input_size": 520,
                               "max_size": 520})


@pytest.mark.parametrize("source, target", [((451, 300), (320, 320)), ((37, 81), (200, 13)), ((640, 427), (641, 1000))])
def test_bilinear_float_equals_torch_interpolate(source, target):
    """``interpolation: bilinear_float`` (SSD/SSDlite) resizes as torchvision's detectors do inside:
    ``F.interpolate(bilinear, align_corners=False)``, no antialiasing, unrounded floats."""
    import torch

    from tsvision.serving.geometry import resize_bilinear_float

    pixels = np.random.default_rng(1).integers(0, 256, (*source[::-1], 3), dtype=np.uint8)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None].float(), size=target[::-1],
                                             mode="bilinear", align_corners=False,
                                             antialias=False)[0].permute(1, 2, 0).numpy()
    ours = resize_bilinear_float(Image.fromarray(pixels), target)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=0.01)  # grey levels; PIL or OpenCV are whole levels off
    boxed, placement = fit_square(Image.fromarray(pixels), 320, "letterbox", (1, 2, 3), "bilinear_float")
    w, h = placement.content_width, placement.content_height
    assert boxed.dtype == np.float32 and (boxed[h:, :] == (1, 2, 3)).all() and (boxed[:, w:] == (1, 2, 3)).all()
    np.testing.assert_array_equal(boxed[:h, :w], resize_bilinear_float(Image.fromarray(pixels), (w, h)))


def test_normalize_layout_and_values():
    batch = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    batch[1, :, :, 2] = 255
    out = normalize(batch, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out[0, :, 0, 0], [-2.0, -1.0, -0.5], rtol=1e-6)
    np.testing.assert_allclose(out[1, 2], 0.5, rtol=1e-6)


def test_a_host_without_opencv_refuses_a_yolo_model_at_load(monkeypatch):
    """``letterbox_center`` resizes with OpenCV (ultralytics' LetterBox): without it the task does not
    load, with one line naming the package; the PIL families load as before."""
    from tsvision.serving.tasks.detection import DetectionTask

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    yolo = Settings.from_mapping({"task": "detection", "detection_format": "yolov8"})
    with pytest.raises(ImportError, match="resize_mode 'letterbox_center'.*pip install opencv-python-headless"):
        DetectionTask(None, yolo)
    DetectionTask(None, Settings.from_mapping({"task": "detection"})).close()  # ssd: stretch, PIL


# -- settings ----------------------------------------------------------------------------
def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown handler setting"):
        Settings.from_mapping({"task": "classification", "topk": 3})
    with pytest.raises(ValueError, match="task"):
        Settings.from_mapping({"task": "captioning"})
    with pytest.raises(ValueError, match="resize_mode"):
        Settings.from_mapping({"task": "detection", "resize_mode": "crop"})
    with pytest.raises(ValueError, match="'bilinear_float' is for resize_mode stretch and letterbox"):
        Settings.from_mapping({"task": "classification", "interpolation": "bilinear_float"})
    with pytest.raises(ValueError, match="'letterbox_center' resizes as ultralytics"):
        Settings.from_mapping({"task": "detection", "detection_format": "yolov8", "interpolation": "bilinear_float"})
    settings = Settings.from_mapping({"task": "detection", "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert Settings.from_mapping(settings.to_mapping()) == settings


def test_labels_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "b.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    assert load_labels(tmp_path / "a.json") == load_labels(tmp_path / "b.json") == load_labels(tmp_path / "c.txt") \
        == ["cat", "dog"]
