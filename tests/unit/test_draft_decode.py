"""``decode_draft`` (opt-in, lossy): a large JPEG decoded at a reduced scale for classification only;
off by default, pictures still drawn on the full image, close to the exact path's model input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.helpers import jpeg, load_task, png
from tsvision.serving.images import decode_image
from tsvision.serving.settings import Settings


def large(photos, width: int = 1280, height: int = 720) -> Image.Image:
    return photos["astronaut"].resize((width, height), Image.LANCZOS)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_a_jpeg_decodes_at_the_smallest_scale_still_large_enough(photos):
    data = jpeg(large(photos))
    assert decode_image(data).size == (1280, 720)
    assert decode_image(data, draft=lambda w, h: (455, 256)).size == (640, 360)  # 1/4 would be 180 rows: too few
    assert decode_image(data, draft=lambda w, h: (100, 60)).size == (160, 90)  # 1/8, libjpeg's smallest
    assert decode_image(png(large(photos)), draft=lambda w, h: (455, 256)).size == (1280, 720)  # JPEG only


def test_classification_with_decode_draft_is_close_to_the_exact_input(exports, photos):
    exact = load_task(exports / "classification", "onnx")
    draft = load_task(exports / "classification", "onnx", decode_draft=True)
    assert exact.draft is None and draft.draft is not None
    for size in ((1280, 720), (720, 1280), (2000, 1500)):
        data = jpeg(large(photos, *size))
        exact_input, draft_input = exact.prepare_item(data)[0], draft.prepare_item(data)[0]
        assert exact_input.shape == draft_input.shape == (224, 224, 3)
        assert not np.array_equal(exact_input, draft_input)  # lossy: the option does change pixels
        assert psnr(exact_input, draft_input) > 30
        picture = draft.prepare_item(data, keep=True)[2]
        assert picture.size == size  # a picture answer is drawn on the full decode


def test_decode_draft_is_refused_outside_classification():
    with pytest.raises(ValueError, match="decode_draft is for the classification task only"):
        Settings.from_mapping({"task": "detection", "decode_draft": True})
