"""The example clients in-process: the drawing module and the client helpers (against the served
models: tests/e2e/test_clients.py)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from examples import client
from examples.draw import draw
from examples.draw import main as draw_main
from tsvision.serving.drawing import box_colour, voc_palette

WHITE = (255, 255, 255)
DETECTION = [{"label": "cat", "index": 17, "score": 0.9, "box": [40, 60, 120, 140]}]


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def segmentation_answer(width: int = 64, height: int = 48, region=(20, 10, 49, 29), index: int = 3) -> dict:
    """A mask of class 0 with one rectangle (inclusive corners) of class ``index``."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle(region, fill=index)
    pixels = (region[2] - region[0] + 1) * (region[3] - region[1] + 1)
    classes = [{"index": 0, "label": "background", "pixels": width * height - pixels, "fraction": 1 - pixels / (width * height)},
               {"index": index, "label": "thing", "pixels": pixels, "fraction": pixels / (width * height)}]
    return {"width": width, "height": height, "mask": png_b64(mask), "classes": classes}


def test_palette_is_fixed_and_distinct():
    colours = voc_palette()
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert tuple(colours[0]) == (0, 0, 0) and tuple(colours[1]) == (128, 0, 0) and tuple(colours[2]) == (0, 128, 0)
    assert len({tuple(c) for c in colours}) == 256


def test_detection_box_edges_change_and_far_pixels_do_not(tmp_path):
    out = tmp_path / "det.png"
    draw("detection", DETECTION, out, Image.new("RGB", (200, 160), WHITE))
    picture = np.asarray(Image.open(out).convert("RGB"))
    colour = box_colour(17)
    x1, y1, x2, y2 = DETECTION[0]["box"]
    for x, y in ((x1, 100), (x2, 100), (80, y1), (80, y2), (x1 + 1, 100), (x2 - 1, 100)):  # width-2 outline
        assert tuple(picture[y, x]) == colour, (x, y)
    assert tuple(picture[100, 80]) == WHITE  # inside the box
    changed = (picture != 255).any(axis=2)
    assert changed[: y1, x1:x2].any()  # the "cat 0.90" label above the box
    assert not changed[:, : x1].any() and not changed[y2 + 1:].any()


def test_segmentation_overlay_changes_exactly_the_region(tmp_path):
    photo, answer = noise(64, 48), segmentation_answer()
    draw("segmentation", answer, tmp_path / "legend.png", photo)
    before = np.asarray(photo).astype(np.float64)
    after = np.asarray(Image.open(tmp_path / "legend.png").convert("RGB")).astype(np.float64)
    assert after.shape[1] > 64  # the legend beside the photo
    after = after[:48, :64]
    region = np.zeros((48, 64), dtype=bool)
    region[10:30, 20:50] = True
    assert np.array_equal(after[~region], before[~region])  # background pixels keep the photo
    expected = np.round(0.5 * before[region] + 0.5 * voc_palette()[3])
    assert np.abs(after[region] - expected).max() <= 1


def test_segmentation_refuses_an_image_of_another_size(tmp_path):
    with pytest.raises(ValueError, match="64x48"):
        draw("segmentation", segmentation_answer(), tmp_path / "x.png", noise(48, 64))


def test_classification_chart_is_a_png_with_bars_beside_the_photo(tmp_path):
    answer = [{"label": f"class {i}", "index": i, "score": s} for i, s in enumerate((0.5, 0.2, 0.1, 0.05, 0.01))]
    out = tmp_path / "chart.png"
    draw("classification", answer, out, noise(300, 200))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as chart:
        assert chart.format == "PNG" and chart.width > 300 and chart.height == 200
        pixels = np.asarray(chart.convert("RGB"))
    assert np.array_equal(pixels[:, :300], np.asarray(noise(300, 200)))
    assert ((pixels[:, 300:].reshape(-1, 3) == box_colour(0)).all(axis=1)).sum() > 1000  # the best bar


@pytest.mark.parametrize("mask_format", ["rle", "polygon", "png"])
def test_instance_masks_are_tinted_in_their_class_colour(tmp_path, mask_format):
    from tsvision.serving.masks import encode_mask

    mask = np.zeros((160, 200), dtype=bool)
    mask[70:130, 50:110] = True  # inside DETECTION's box
    answer = [{**DETECTION[0], "mask": encode_mask(mask, mask_format)}]
    draw("instance_segmentation", answer, tmp_path / "inst.png", Image.new("RGB", (200, 160), WHITE))
    pixels = np.asarray(Image.open(tmp_path / "inst.png").convert("RGB")).astype(float)
    tint = np.round(0.55 * 255 + 0.45 * np.asarray(box_colour(17)))
    assert np.abs(pixels[100, 80] - tint).max() <= 1  # inside the mask
    assert tuple(pixels[100, 115]) == WHITE  # inside the box, outside the mask


def test_keypoints_drawn_as_dots_and_limbs_when_visible():
    from examples.draw import picture

    answer = [{**DETECTION[0], "keypoints": [[60, 80, 0.9], [100, 80, 0.8], [100, 130, 0.2]]}]
    pixels = np.asarray(picture("keypoints", answer, Image.new("RGB", (200, 160), WHITE), skeleton=[(0, 1), (1, 2)]))
    assert tuple(pixels[80, 60]) == box_colour(0) and tuple(pixels[80, 100]) == box_colour(1)
    assert tuple(pixels[80, 80]) == box_colour(0)  # limb 0 joins the two visible points
    assert tuple(pixels[130, 100]) == WHITE and tuple(pixels[105, 100]) == WHITE  # point 2 is not visible: no dot, no limb 1


def test_draw_cli_matches_the_function(tmp_path):
    buffer = io.BytesIO()
    noise(200, 160).save(buffer, format="PNG")
    (tmp_path / "photo.png").write_bytes(buffer.getvalue())
    (tmp_path / "answer.json").write_text(json.dumps(DETECTION))
    assert draw_main(["--task", "detection", "--answer", str(tmp_path / "answer.json"), "--image", str(tmp_path / "photo.png"),
                      "--out", str(tmp_path / "cli.png")]) == 0
    draw("detection", DETECTION, tmp_path / "direct.png", buffer.getvalue())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), np.asarray(Image.open(tmp_path / "direct.png")))
    with pytest.raises(SystemExit):  # without --image is a usage error
        draw_main(["--task", "detection", "--answer", str(tmp_path / "answer.json"), "--out", str(tmp_path / "x.png")])


def test_client_helpers(tmp_path):
    assert [client.task_of(m) for m in ("classification_onnx", "segmentation_torchscript", "detection_onnx", "resnet")] == \
        ["classification", "segmentation", "detection", None]
    assert client.read_token(tmp_path / "missing.json") is None
    (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "abc"}, "management": {"key": "def"}}))
    assert client.read_token(tmp_path / "key_file.json") == "abc"
