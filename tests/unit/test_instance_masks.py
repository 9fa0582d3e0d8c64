"""The instance masks' encodings (``tsvision/serving/masks.py``) against pycocotools, COCO's own
tools: our RLE strings equal ``pycocotools.mask.encode``'s and decode back exactly; polygons,
rasterised by pycocotools (``frPyObjects``), stay within 1 px of the mask's edge."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tsvision.serving.masks import decode_mask, decode_rle, encode_mask, encode_rle, fill_polygons, polygons

coco = pytest.importorskip("pycocotools.mask")


def random_masks(seed: int, count: int):
    """Masks of many kinds: noise at every density, rectangles, blobs, empty and full, thin shapes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(1, 90, 2))
        kind = i % 6
        if kind == 0:
            mask = rng.random((height, width)) < rng.random()
        elif kind == 1:
            mask = np.zeros((height, width), bool)
            y1, x1 = rng.integers(0, height), rng.integers(0, width)
            mask[y1:rng.integers(y1, height + 1), x1:rng.integers(x1, width + 1)] = True
        elif kind == 2:
            mask = ndimage.gaussian_filter(rng.random((height, width)), 3) > 0.5
        elif kind == 3:
            mask = np.full((height, width), bool(i % 12 == 3))
        elif kind == 4:
            mask = np.zeros((height, width), bool)
            mask[:, rng.integers(0, width)] = True   # a one-pixel column
            mask[rng.integers(0, height)] = True      # and row
        else:
            mask = rng.random((height, width)) < 0.97  # nearly full: runs of ones first
        yield mask


def test_rle_equals_pycocotools_on_random_masks():
    checked = 0
    for mask in random_masks(seed=15, count=600):
        theirs = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = encode_rle(mask)
        assert ours["size"] == [int(v) for v in theirs["size"]] == list(mask.shape)
        assert ours["counts"] == theirs["counts"].decode("ascii"), mask.shape
        assert np.array_equal(coco.decode({"size": ours["size"], "counts": ours["counts"]}), mask)
        assert np.array_equal(decode_rle(ours), mask)
        checked += 1
    assert checked == 600


def test_rle_of_a_large_mask_decodes_exactly():
    """1280×720 with long runs: the counts' differences and the 5-bit groups of large numbers."""
    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.random((720, 1280)), 20) > 0.5
    mask[:, :300] = False
    mask[700:, 1000:] = True
    ours = encode_rle(mask)
    assert ours["counts"] == coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")
    assert np.array_equal(coco.decode(ours), mask)
    assert coco.area(ours) == mask.sum()


def near_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels within 1 px (8-neighbourhood) of the boundary between mask and background."""
    grown, shrunk = ndimage.binary_dilation(mask, np.ones((3, 3))), ndimage.binary_erosion(mask, np.ones((3, 3)), border_value=0)
    return grown & ~shrunk


def rasterise(rings, height: int, width: int) -> np.ndarray:
    """COCO polygons -> mask, by pycocotools (the union of the rings, as COCO tools read them)."""
    if not rings:
        return np.zeros((height, width), bool)
    return coco.decode(coco.merge(coco.frPyObjects(rings, height, width))).astype(bool)


@pytest.mark.parametrize("seed", range(4))
def test_polygons_stay_within_one_pixel_of_the_mask_edge(seed):
    rng = np.random.default_rng(seed)
    height, width = 240 + 37 * seed, 320 - 29 * seed
    mask = ndimage.gaussian_filter(rng.random((height, width)), 6) > 0.52   # several blobs, some touching the border
    mask[5:9, 5:60] = True                                                    # a thin bar
    mask[20, 200] = mask[21, 201] = True                                      # two pixels touching at a corner
    filled = ndimage.binary_fill_holes(mask)  # COCO polygons cannot say "minus": holes are filled
    rings = polygons(mask)
    assert rings and all(len(ring) % 2 == 0 and len(ring) >= 8 for ring in rings)
    drawn = rasterise(rings, height, width)
    wrong = drawn != filled
    print(f"\nseed {seed}: {len(rings)} rings, {sum(len(r) for r in rings) // 2} vertices, "
          f"{int(wrong.sum())} of {filled.size} pixels differ, all within 1 px of the edge: {bool((wrong <= near_edge(filled)).all())}")
    assert (wrong <= near_edge(filled)).all()
    assert wrong.mean() < 0.02


def test_every_mask_format_decodes_back():
    """``decode_mask`` reads what ``encode_mask`` writes: RLE and PNG give the mask back exactly;
    polygons give it with its holes filled (the background 8-connected, as the tracing keeps
    regions 4-connected), checked against scipy's hole filling, on 300 random masks."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((height, width)) < rng.random()
        filled = ndimage.binary_fill_holes(mask, structure=np.ones((3, 3)))
        assert np.array_equal(decode_mask(encode_mask(mask, "rle"), height, width), mask)
        assert np.array_equal(decode_mask(encode_mask(mask, "png"), height, width), mask)
        assert np.array_equal(decode_mask(encode_mask(mask, "polygon"), height, width), filled)
    with pytest.raises(ValueError, match="the mask is 3x2, the image 4x2"):
        decode_mask(encode_mask(np.ones((2, 3), bool), "png"), 2, 4)
    assert not fill_polygons([], 5, 5).any()


def test_polygon_of_a_rectangle_is_its_four_corners():
    mask = np.zeros((720, 1280), bool)
    mask[100:400, 200:900] = True
    assert polygons(mask) == [[200, 100, 900, 100, 900, 400, 200, 400]]
    assert polygons(np.zeros((5, 5), bool)) == []


def test_answer_sizes_against_float_lists():
    """A small run of ``benchmarks/studies/answer_sizes.py`` (the full 1280×720 table is in performance.md):
    RLE answers are far smaller than the stock float lists and decode back to the thresholded masks."""
    from benchmarks.studies.answer_sizes import measure, soft_masks, table

    rows = measure(instances=4, width=320, height=180, repeat=1)
    print("\n" + table(rows))
    sizes = {row["answer"].split(" (")[0]: row["bytes"] for row in rows}
    assert sizes["tsvision RLE"] * 100 < sizes["stock: soft masks as float lists"]
    assert sizes["tsvision polygons"] * 20 < sizes["stock: soft masks as float lists"]
    masks, _ = soft_masks(4, 320, 180)
    for soft in masks[:, 0]:
        assert np.array_equal(coco.decode(encode_rle(soft > 0.5)), soft > 0.5)
