"""Tiled segmentation live: the toy segmenter's archive (ColourSegmenter: a pure colour is its class)
answers a large scene's known mask in tiles, over every transport, and a batch mixing tiled, plain
and badly optioned requests answers each on its own."""

from __future__ import annotations

import numpy as np

from tests.helpers import png
from tests.tile_scenes import planted_scene
from tests.transports import HEADERS, ONE_BATCH, Request, error_body
from tsvision.serving.masks import decode_class_png

TOY = "toy_segmentation_onnx"  # stretch to 640 px; the archive's tile setting is "never"
TILED = {"tile": "always", "tile_size": "400x300", "tile_overlap": 0.2}


def test_a_large_scene_is_answered_exactly_in_tiles(transport):
    image, truth = planted_scene(1600, 1200)
    data = png(image)
    tiled = transport.send(TOY, data, "image/png", options=TILED)
    whole = transport.send(TOY, data, "image/png")
    assert tiled.status == whole.status == 200, (tiled.body, whole.body)
    assert (decode_class_png(tiled.body["mask"]) == truth).all()
    assert (decode_class_png(whole.body["mask"]) != truth).any()  # 1600 px seen at 640 px loses 3 px squares
    counts = {entry["index"]: entry["pixels"] for entry in tiled.body["classes"]}
    assert counts == {i: int(n) for i, n in enumerate(np.bincount(truth.reshape(-1))) if n}


def test_tiled_plain_and_badly_tiled_requests_share_a_batch(transport):
    image, truth = planted_scene(900, 700, count=20, seed=3)
    data = png(image)
    bad = [{"tile_size": "huge"}, {"tile_overlap": 2}, {"tile": "maybe"}]
    batch = [Request(data, "image/png", TILED), Request(data, "image/png")] + \
        [Request(data, "image/png", {**TILED, **option}) for option in bad] + [Request(data, "image/png", TILED)]
    answers = transport.together(TOY, batch)
    if ONE_BATCH in transport.carries or HEADERS in transport.carries:
        sizes = [int(answer.headers.get("X-Batch-Size", 0)) for answer in answers]
        assert ONE_BATCH not in transport.carries or min(sizes) == len(batch), sizes
    for answer in (answers[0], answers[-1]):
        assert answer.status == 200 and (decode_class_png(answer.body["mask"]) == truth).all(), answer.body
    assert answers[1].status == 200 and answers[1].body["width"] == 900
    for option, answer in zip(bad, answers[2:-1]):
        body = error_body(answer.body)
        assert answer.status == 400 and body["type"] == "BadOption", (option, answer.body)
        assert repr(next(iter(option))) in body["message"], body
