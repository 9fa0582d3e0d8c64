"""Tiled segmentation (tsvision.serving.tiling): tiles cover the image, the blend weights cross-fade,
a fully convolutional toy gives the whole-image mask, a known-answer toy finds what a whole-image pass
loses, tiles share forward passes with other images and a bad tiling option is its request's 400."""

from __future__ import annotations

import base64
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tests.helpers import load_task, png
from tests.tile_scenes import planted_scene
from tsvision.serving.batching import BySize, Stack
from tsvision.serving.masks import decode_class_png
from tsvision.serving.service import answer_requests
from tsvision.serving.settings import Settings
from tsvision.serving.tiling import TiledImage, Tiles, positions, wants_tiles, windows


def settings(**values) -> Settings:
    return Settings.from_mapping({"task": "segmentation", "input_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1],
                                  "tile": "always", **values})


class PixelModel:
    """A fake runtime: per pixel, ``classes`` logits that are fixed functions of its colour (a 1×1 conv
    in numpy); records the size of every forward pass; fails a pass holding an input of ``fail_width``."""

    name, device, fixed_batch = "fake", "cpu", None

    def __init__(self, classes: int = 4, fail_width: int = 0) -> None:
        self.classes, self.fail_width, self.passes = classes, fail_width, []

    def logits(self, batch: np.ndarray) -> np.ndarray:
        r, g, b = batch[:, 0], batch[:, 1], batch[:, 2]
        planes = [np.full_like(r, 0.5), r, g, b] + [(r + 2 * g + 3 * b) / (k + 7) for k in range(self.classes - 4)]
        return np.stack(planes, axis=1).astype(np.float32)

    def run(self, batch: np.ndarray):
        self.passes.append(len(batch))
        if self.fail_width and batch.shape[-1] == self.fail_width:
            raise RuntimeError("this pass fails")
        return [self.logits(batch)]


def blocks(width: int, height: int, seed: int = 1) -> np.ndarray:
    """Random pure-colour 5×5 blocks (with ties: yellow, white), H×W×3 uint8."""
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 5 + 1, width // 5 + 1, 3)) > 0.55).astype(np.uint8) * 255
    return np.ascontiguousarray(small.repeat(5, 0).repeat(5, 1)[:height, :width])


def mapped(function, values):
    return [function(value) for value in values]


@pytest.mark.parametrize("length,tile,overlap", [(400, 64, 0.25), (410, 64, 0.25), (300, 48, 0.5), (100, 64, 0.1),
                                                 (50, 64, 0.25)])
def test_tiles_cover_every_pixel_and_their_weights_cross_fade_to_one(length, tile, overlap):
    starts = positions(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(0, length - tile)
    assert all(0 < b - a <= tile * (1 - overlap) for a, b in zip(starts, starts[1:]))
    total, covered = np.zeros(max(length, tile)), np.zeros(max(length, tile), dtype=int)
    for start, weight in zip(starts, windows(starts, tile)):
        assert weight.shape == (tile,) and 0 < weight.min() and weight.max() <= 1
        total[start:start + tile] += weight
        covered[start:start + tile] += 1
    assert covered[:length].min() >= 1
    if (length - tile) % int(tile * (1 - overlap)) == 0 or length <= tile:  # every overlap the nominal one:
        assert np.allclose(total[:length], 1, atol=1e-6)  # neighbours' linear ramps sum to one in each overlap


def test_auto_tiles_only_images_much_larger_than_a_tile():
    auto = settings(tile="auto", tile_size="64x48")
    assert not wants_tiles(400, 96, auto) and wants_tiles(400, 97, auto)
    assert wants_tiles(10, 10, settings(tile="always")) and not wants_tiles(9000, 9000, settings(tile="never"))


@pytest.mark.parametrize("size,overlap", [("64x48", 0.3), ("40", 0.5), ("64", 0.0)])
def test_a_per_pixel_model_gives_the_whole_image_mask_in_tiles(size, overlap):
    pixels = blocks(410, 300)
    model = PixelModel()
    tiled = TiledImage(pixels, settings(tile_size=size, tile_overlap=overlap))
    strategy = Tiles(Stack(), per_pass=4)
    rows = strategy.run(model, strategy.collate([tiled], settings(), mapped))
    whole = model.logits(pixels.transpose(2, 0, 1)[None].astype(np.float32))[0].argmax(0)
    assert rows[0][0].shape == (300, 410) and (rows[0][0] == whole).all()
    assert max(model.passes) <= 4 and sum(model.passes) == tiled.count


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_the_colour_toy_answers_the_same_mask_tiled_and_whole(toy_exports, backend):
    """ColourSegmenter (a 1×1 convolution) on an image the whole-image pass sees at its own size
    (``shorter_side`` with the image's shorter side as ``input_size``): the tiled answer is the same."""
    image = Image.fromarray(blocks(230, 160, seed=2))
    task = load_task(toy_exports / "segmentation", backend, resize_mode="shorter_side", input_size=160,
                     max_size=1000)
    data = base64.b64encode(png(image)).decode()
    rows = [{"body": {"data": data}},
            {"body": {"data": data, "tile": "always", "tile_size": "48x40", "tile_overlap": 0.3}},
            {"body": {"data": data, "tile": "always", "tile_size": 100, "tile_overlap": 0}}]
    masks = [decode_class_png(response.body["mask"]) for response in answer_requests(task, rows)]
    assert masks[0].shape == (160, 230) and len(np.unique(masks[0])) == 4
    assert (masks[1] == masks[0]).all() and (masks[2] == masks[0]).all()


def test_tiles_find_the_planted_squares_that_the_whole_image_pass_loses(toy_exports):
    image, truth = planted_scene(2800, 2000)
    task = load_task(toy_exports / "segmentation", "onnx", tile="auto")  # 640 px tiles: 2000 > 2 × 640
    data = png(image)
    tiled, whole = answer_requests(task, [{"body": data}, {"body": data, "tile": b"never"}])
    assert tiled.status == whole.status == 200, (tiled.body, whole.body)
    assert (decode_class_png(tiled.body["mask"]) == truth).all()
    squares = (truth > 0) & (truth != 3) | (truth == 3) & (np.arange(2000)[:, None] > 1000)
    whole_mask = decode_class_png(whole.body["mask"])
    assert (whole_mask[squares] == truth[squares]).mean() < 0.5  # a 640 px view of 2800 px loses 3 px squares


def test_tiles_share_passes_with_other_images_and_a_failing_pass_fails_only_its_images():
    model = PixelModel()
    strategy = Tiles(Stack(), per_pass=4)
    plain = [np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)]
    small = TiledImage(blocks(100, 64), settings())  # 2 tiles of 64×64: with the 2 plain images, one pass
    rows = strategy.run(model, strategy.collate([plain[0], small, plain[1]], settings(), mapped))
    assert model.passes == [4]
    assert rows[0][0].shape == (4, 64, 64) and rows[1][0].shape == (64, 100) and rows[2][0].shape == (4, 64, 64)

    failing = PixelModel(fail_width=40)  # the 40-wide tiles' passes fail; the 64-wide ones and the plain image go on
    good, bad = TiledImage(blocks(200, 150), settings()), TiledImage(blocks(200, 150), settings(tile_size="40"))
    split = Tiles(BySize(), per_pass=3)
    rows = split.run(failing, split.collate([good, plain[0], bad], settings(), mapped))
    assert rows[0][0].shape == (150, 200) and rows[1][0].shape == (4, 64, 64)
    assert getattr(rows[2], "status", None) == 500, rows[2]


def test_a_bad_tiling_option_is_its_own_400_in_a_batch(toy_exports):
    task = load_task(toy_exports / "segmentation", "onnx")
    image, truth = planted_scene(700, 500, count=10)
    data = png(image)
    good = {"body": data, "tile": b"always", "tile_size": b"256x192"}
    bad = [{"tile_size": b"big"}, {"tile_size": b"4"}, {"tile_size": b"9000"}, {"tile_overlap": b"0.95"},
           {"tile": b"sometimes"}]
    responses = answer_requests(task, [good] + [{"body": data, **option} for option in bad] + [good])
    for response in (responses[0], responses[-1]):
        assert response.status == 200 and (decode_class_png(response.body["mask"]) == truth).all()
    for option, response in zip(bad, responses[1:-1]):
        assert response.status == 400 and response.body["type"] == "BadOption", (option, response.body)
        assert repr(next(iter(option))) in response.body["message"], response.body


def test_the_blend_never_holds_the_whole_images_logits():
    """21 classes over 2000×1500 would be 252 MB of float32 logits; the band of one row of 256 px
    tiles is 43 MB. The peak of everything allocated while tiling (the fake model's outputs and
    temporaries included: about 90 MB) stays under half of the whole image's logits alone."""
    pixels = blocks(2000, 1500)
    model = PixelModel(classes=21)
    tiled = TiledImage(pixels, settings(tile_size="256", tile_overlap=0.25))
    strategy = Tiles(Stack(), per_pass=2)
    inputs = strategy.collate([tiled], settings(), mapped)
    tracemalloc.start()
    try:
        rows = strategy.run(model, inputs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    whole = 21 * 2000 * 1500 * 4
    assert rows[0][0].shape == (1500, 2000) and peak < whole / 2, (peak, whole)


def test_tiled_and_whole_images_answer_the_same_pipelined_as_serially(toy_exports):
    """Segmentation pipelines batches by default (``micro_batch`` 4): a batch of more than four images,
    tiled and whole ones mixed, answers exactly as the serial path."""
    image = Image.fromarray(blocks(230, 160, seed=3))
    data = base64.b64encode(png(image)).decode()
    rows = [{"body": {"data": data}}, {"body": {"data": data, "tile": "always", "tile_size": "48x40"}},
            {"body": {"data": data}}, {"body": {"data": data, "tile": "always", "tile_size": 100}},
            {"body": {"data": "bm90IGFuIGltYWdl"}}, {"body": {"data": data}}]
    answers = {}
    for micro_batch in (4, 0):
        task = load_task(toy_exports / "segmentation", "onnx", resize_mode="shorter_side", input_size=160,
                         max_size=1000, preprocess_threads=2, micro_batch=micro_batch)
        assert task.micro_batch == micro_batch
        answers[micro_batch] = [(response.status, response.body) for response in answer_requests(task, rows)]
    assert answers[4] == answers[0]
    assert [status for status, _ in answers[4]] == [200, 200, 200, 200, 400, 200]
