"""``split_head``: a YOLOv8 ONNX detector cut at its head's raw outputs answers as the whole graph.

The model is ultralytics' own ``Detect`` head (the reference: its DFL, anchors and sigmoid are what the
ultralytics export computes) on three strided convolutions, random seeded weights, exported to ONNX at
64×64 (84 anchors, 3 classes) as ultralytics exports it (``export = True``, ``format = "onnx"``).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.helpers import jpeg
from tsvision.serving.formats import yolo_head
from tsvision.serving.formats.yolo import decode_yolov8
from tsvision.serving.service import answer_requests
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task

os.environ.setdefault("YOLO_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = 64
LABELS = ["a", "b", "c"]


def tiny_detector(strides=(8, 16, 32)):
    """Strided convolutions down to each stride's feature map, then ultralytics' ``Detect`` over them."""
    from torch import nn
    from ultralytics.nn.modules.head import Detect

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            channels = [8 * 2 ** i for i in range(len(strides))]
            self.down = nn.ModuleList(
                [nn.Conv2d(3, channels[0], 3, strides[0], 1)]
                + [nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(channels, channels[1:])])
            self.head = Detect(len(LABELS), ch=tuple(channels))
            self.head.stride = torch.tensor([float(s) for s in strides])
            self.head.bias_init()
            for branch in self.head.cv3:  # class logits around -2.5 (scores near 0.08): a few boxes pass 0.05
                torch.nn.init.constant_(branch[-1].bias, -2.5)
            self.head.export, self.head.format = True, "onnx"

        def forward(self, x):
            maps = []
            for layer in self.down:
                x = layer(x)
                maps.append(x)
            return self.head(maps)

    torch.manual_seed(0)
    return Tiny().eval()


def export(folder: Path, strides=(8, 16, 32)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_detector(strides), torch.rand(1, 3, SIZE, SIZE), str(folder / "model.onnx"),
                          opset_version=18, dynamo=False, input_names=["images"], output_names=["output0"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    (folder / "labels.json").write_text(json.dumps(LABELS))
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return export(tmp_path_factory.mktemp("yolo_head"))


def session(graph) -> "ort.InferenceSession":
    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, SIZE, SIZE), dtype=np.float32)


def task(path: Path, **overrides):
    values = {"task": "detection", "detection_format": "yolov8", "input_size": SIZE, "score_threshold": 0.05,
              "labels": "labels.json", **overrides}
    return build_task(path, Settings.from_mapping(values), path.parent)


def test_the_cut_graph_rebuilds_the_whole_graphs_output(model):
    original = onnx.load(str(model))
    sigmoids = sum(node.op_type == "Sigmoid" for node in original.graph.node)  # SiLU's too
    found = yolo_head.split_graph(original)
    assert found is not None
    cut, distributions, logits = found
    assert [o.name for o in cut.graph.output] == [distributions, logits]
    assert not any(node.op_type == "Softmax" for node in cut.graph.node)  # the DFL's
    assert sum(node.op_type == "Sigmoid" for node in cut.graph.node) == sigmoids - 1  # the class scores'
    whole, split = session(str(model)), session(cut.SerializeToString())
    for seed in range(3):
        batch = images(2, seed)
        expected = whole.run(None, {"images": batch})[0]
        boxes, classes = split.run(None, {"images": batch})
        assert boxes.shape == (2, 64, 84) and classes.shape == (2, len(LABELS), 84)
        for i in range(2):
            rebuilt = yolo_head.whole_output(boxes[i], classes[i], SIZE)
            np.testing.assert_allclose(rebuilt, expected[i], rtol=1e-5, atol=1e-4)


def test_the_anchor_grid_is_ultralytics_make_anchors():
    from ultralytics.utils.tal import make_anchors

    maps = [torch.zeros(1, 1, SIZE // s, SIZE // s) for s in yolo_head.STRIDES]
    points, strides = make_anchors(maps, torch.tensor(yolo_head.STRIDES, dtype=torch.float32), 0.5)
    ours_points, ours_strides = yolo_head.anchor_grid(SIZE, 84)
    np.testing.assert_array_equal(ours_points, points.numpy())
    np.testing.assert_array_equal(ours_strides, strides.numpy()[:, 0])
    with pytest.raises(ValueError, match="do not fit"):
        yolo_head.anchor_grid(SIZE, 85)


def head_outputs(seed: int, classes: int = 5, anchors: int = 84):
    """Random distance logits and class logits: most anchors far below any threshold, a few above, some
    saturated (two classes tied at a sigmoid of 1.0) and some near 0.25."""
    rng = np.random.default_rng(seed)
    distributions = rng.normal(0, 3, (64, anchors)).astype(np.float32)
    logits = rng.normal(-8, 1, (classes, anchors)).astype(np.float32)
    chosen = rng.choice(anchors, 20, replace=False)
    logits[rng.integers(0, classes, 20), chosen] = rng.normal(0, 3, 20)
    logits[:2, chosen[:3]] = [[30.0, 40.0, 17.5], [31.0, 40.0, 18.0]]
    logits[2, chosen[3:8]] = np.log(0.25 / 0.75) + np.array([-1e-6, 0, 1e-6, 1e-4, 5e-4], dtype=np.float32)
    return distributions, logits


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.25, 0.5, 0.999, 1.0])
def test_decoding_the_split_head_equals_decoding_the_whole_output(threshold):
    settings = SimpleNamespace(score_threshold=threshold)
    for seed in range(5):
        distributions, logits = head_outputs(seed)
        split = yolo_head.decode_split(distributions, logits, threshold, SIZE)
        whole = decode_yolov8([yolo_head.whole_output(distributions, logits, SIZE)], settings, None)
        np.testing.assert_array_equal(split.classes, whole.classes)  # both in anchor order
        np.testing.assert_array_equal(split.scores, whole.scores)
        np.testing.assert_allclose(split.boxes, whole.boxes, atol=1e-4)
        expected = {0.0: logits.shape[1], 1.0: 0}.get(threshold)
        assert len(split.scores) == expected if expected is not None else 0 < len(split.scores) < logits.shape[1]


def test_a_task_with_the_head_split_answers_as_the_whole_graph(model):
    split, whole = task(model), task(model, split_head=False)
    try:
        batch = images(3, 7)
        assert [o.shape for o in split.runtime.run(batch)] == [(3, 64, 84), (3, 3, 84)]  # the cut graph runs
        assert [o.shape for o in whole.runtime.run(batch)] == [(3, 4 + 3, 84)]
        assert split.settings.split_head and not whole.settings.split_head  # the settings say what runs
        rng = np.random.default_rng(1)
        photos = [jpeg(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))) for w, h in
                  ((64, 64), (200, 120), (37, 91))]
        rows = [{"body": p} for p in photos] + [{"body": b"not an image"}]
        found = [r.body for r in answer_requests(split, rows)]
        expected = [r.body for r in answer_requests(whole, rows)]
        assert sum(len(answer) for answer in expected[:3]) >= 3  # there is something to compare
        for ours, theirs in zip(found[:3], expected[:3]):
            assert [d["label"] for d in ours] == [d["label"] for d in theirs]
            for a, b in zip(ours, theirs):
                assert abs(a["score"] - b["score"]) < 1e-5
                np.testing.assert_allclose(a["box"], b["box"], atol=0.01 + 1e-6)  # answers round to 0.01 px
        assert found[3] == expected[3] and found[3]["code"] == 400  # a bad image among them: its own 400
    finally:
        split.close()
        whole.close()


def test_graphs_without_the_head_run_whole(model, tmp_path, caplog, format_exports):
    on = SimpleNamespace(split_head=True, input_size=SIZE)
    assert yolo_head.faster_graph(model, on) is not None
    assert yolo_head.faster_graph(model, SimpleNamespace(split_head=False, input_size=SIZE)) is None
    # the bright-box toy in the yolov8 layout computes its output without a DFL head
    toy = format_exports / "yolov8" / "model.onnx"
    with caplog.at_level(logging.INFO, logger=yolo_head.__name__):
        assert yolo_head.faster_graph(toy, on) is None
    assert "runs whole" in caplog.text
    # a P6 head (strides 8 to 64): the graph is cut, but its anchors are not the P3-P5 grid, so the check refuses it
    p6 = export(tmp_path / "p6", strides=(8, 16, 32, 64))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=yolo_head.__name__):
        assert yolo_head.faster_graph(p6, on) is None
    assert "not split" in caplog.text
    p6_task = task(p6)
    try:
        assert [o.shape for o in p6_task.runtime.run(images(1, 0))] == [(1, 4 + 3, 85)]
        assert not p6_task.settings.split_head
    finally:
        p6_task.close()
