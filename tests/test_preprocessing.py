"""Image decoding, request parsing, geometry and settings: in-process, no model."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from handlers.errors import InputError
from handlers.geometry import Placement, fit_square, normalize, resize_center_crop
from handlers.images import decode_image
from handlers.requests import payload_from_row
from handlers.settings import Settings, load_labels
from tests.conftest import jpeg


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that claims ``width``×``height`` pixels (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


# -- images ------------------------------------------------------------------------------
def test_exif_orientation_is_applied_before_anything_else():
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 50, 100))  # white strip on the left edge
    decoded = decode_image(with_orientation(image, 6))  # 6: rotate 90° clockwise to display
    assert decoded.size == (100, 300)
    pixels = np.asarray(decoded).mean(axis=2)
    assert pixels[:40].mean() > 200 and pixels[60:].mean() < 50  # the strip is now on top


@pytest.mark.parametrize("data, status, kind", [
    (b"", 400, "EmptyInput"),
    (b"hello, this is text", 400, "UnreadableImage"),
    (png_declaring(100_000, 100_000), 413, "ImageTooLarge"),
])
def test_bad_images_raise_input_errors(data, status, kind):
    with pytest.raises(InputError) as caught:
        decode_image(data)
    assert (caught.value.status, caught.value.kind) == (status, kind)
    body = caught.value.to_body()
    assert body["code"] == status and body["message"]


def test_truncated_jpeg_is_a_400(photos):
    data = jpeg(photos["chelsea"])
    with pytest.raises(InputError) as caught:
        decode_image(data[: len(data) // 3])
    assert caught.value.status == 400


def test_pixel_limit_is_configurable():
    data = jpeg(Image.new("RGB", (100, 100)))
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(InputError):
        decode_image(data, max_pixels=9_999)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (20, 10))
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("CMYK",) else "PNG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.mode == "RGB" and decoded.size == (20, 10)


# -- requests ----------------------------------------------------------------------------
def test_request_shapes_give_the_same_bytes():
    data = jpeg(Image.new("RGB", (8, 8)))
    text = base64.b64encode(data).decode()
    rows = [{"body": data}, {"data": bytearray(data)}, {"body": {"data": text}}, {"body": text},
            {"body": f"data:image/jpeg;base64,{text}"}, {"file": data}, {"body": {"image": {"b64": text}}},
            {"body": base64.urlsafe_b64encode(data).decode().rstrip("=")}]
    assert all(payload_from_row(row) == data for row in rows)


@pytest.mark.parametrize("row, kind", [
    ({"body": {"data": "***not base64***"}}, "BadBase64"),
    ({"body": {"picture": "aGVsbG8="}}, "MissingImage"),
    ({"body": {"data": 12}}, "BadJson"),
    ({}, "MissingImage"),
])
def test_malformed_requests_are_400(row, kind):
    error = payload_from_row(row)
    assert isinstance(error, InputError) and error.status == 400 and error.kind == kind


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
    import torch
    from torchvision.transforms import v2

    reference = v2.Compose([v2.PILToTensor(), v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    for image in photos.values():
        ours = resize_center_crop(image, 256, 224).astype(np.int16)
        theirs = reference(image).permute(1, 2, 0).numpy().astype(np.int16)
        assert ours.shape == theirs.shape == (224, 224, 3)
        assert np.abs(ours - theirs).mean() < 1.5, image.size


def test_normalize_layout_and_values():
    batch = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    batch[1, :, :, 2] = 255
    out = normalize(batch, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out[0, :, 0, 0], [-2.0, -1.0, -0.5], rtol=1e-6)
    np.testing.assert_allclose(out[1, 2], 0.5, rtol=1e-6)


# -- settings ----------------------------------------------------------------------------
def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown handler setting"):
        Settings.from_mapping({"task": "classification", "topk": 3})
    with pytest.raises(ValueError, match="task"):
        Settings.from_mapping({"task": "captioning"})
    with pytest.raises(ValueError, match="resize_mode"):
        Settings.from_mapping({"task": "detection", "resize_mode": "crop"})
    settings = Settings.from_mapping({"task": "detection", "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert Settings.from_mapping(settings.to_mapping()) == settings


def test_labels_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "b.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    assert load_labels(tmp_path / "a.json") == load_labels(tmp_path / "b.json") == load_labels(tmp_path / "c.txt") == ["cat", "dog"]
