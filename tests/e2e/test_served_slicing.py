"""Sliced inference on the session's TorchServe (docs/large-images.md): the toy detector archive
(one box around the pixels brighter than 0.5) on a 2560×1920 image with two small grey squares.
Shrunk to the model's 640 px the squares fade below the threshold; sliced at 640 each is found in
its place, in original pixels. A batch of requests sent together, one with a bad slicing option:
that one gets its 400, the others their answers."""

from __future__ import annotations

import base64

import numpy as np
from PIL import Image

from tests.helpers import png
from tests.transports import Request, served_transport

TOY = "toy_detection_onnx"
SQUARES = [[300.0, 300.0, 305.0, 305.0], [2000.0, 1500.0, 2005.0, 1505.0]]  # x1, y1, x2, y2 (exclusive)


def large_scene() -> bytes:
    pixels = np.zeros((1920, 2560, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in SQUARES:
        pixels[int(y1):int(y2), int(x1):int(x2)] = 160  # 0.63: bright at full size, not once shrunk four times
    return png(Image.fromarray(pixels))


def test_served_slices_find_small_objects_and_a_bad_option_fails_only_its_request(served):
    rest = served_transport("rest", served)
    try:
        data = large_scene()
        encoded = base64.b64encode(data).decode()
        answers = rest.together(TOY, [
            Request(data, "image/png", {"slice_size": 640}),
            Request(data, "image/png", {"slice_size": "abc"}),
            Request(data, "image/png"),
            Request({"data": encoded, "slice_size": "640x480", "slice_overlap": 0.3, "slice_merge": "nms",
                     "slice_whole_image": False}),
            Request(data, "image/png", {"slice_overlap": 1.5}),
        ])
    finally:
        rest.close()
    sizes = [a.headers.get("X-Batch-Size") for a in answers]
    assert [a.status for a in answers] == [200, 400, 200, 200, 400], (sizes, [a.body for a in answers])
    sliced, bad, whole, rectangular, bad_overlap = (a.body for a in answers)
    assert sorted(entry["box"] for entry in sliced) == SQUARES, sliced
    assert all(entry["label"] == "bright rectangle" for entry in sliced)
    assert whole == []  # the whole-image pass alone finds nothing
    assert sorted(entry["box"] for entry in rectangular) == SQUARES
    assert bad["type"] == "BadOption" and "slice_size" in bad["message"]
    assert bad_overlap["type"] == "BadOption" and "slice_overlap" in bad_overlap["message"]
