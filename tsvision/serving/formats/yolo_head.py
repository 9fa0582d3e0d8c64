"""YOLOv8's detection head split at its raw outputs: decode only the anchors that can be answers.

ultralytics' ONNX export of a YOLOv8/YOLO11 detector ends with the head's decoding for every anchor
(8400 at 640×640): a softmax over each side's 16 distance bins (DFL), the distances turned into boxes,
and a sigmoid over every class score. Nearly all of those anchors are then dropped by the score
threshold. With ``split_head`` (on by default) an ONNX model of the ``yolov8`` layout runs up to the
head's two raw outputs instead (``split_graph``: the same file's graph, its tail cut off): the box
distributions N×4R×A and the class logits N×C×A. ``decode_split`` takes the anchors whose best class
clears the threshold and decodes only those, as the graph would (``whole_output`` rebuilds the graph's
own N×(4+C)×A from them). On this project's 2-core CPU two one-thread workers ran YOLOv8n's forward
pass 7 % faster (docs/performance.md, "Goal 1, the fourth pass").

``faster_graph`` (the ``yolov8`` format's hook, called when a worker loads the model) finds the head
by its shape (the graph's one output is ``Concat(boxes, Sigmoid(logits))`` and its one ``Softmax``
takes the reshaped distributions), cuts the graph there and runs both graphs once on a test image at
the model's input size: the split is used only when the rebuilt output equals the whole graph's
(``TOLERANCE``); any other graph runs whole, as before.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from tsvision.serving.formats.registry import Candidates
from tsvision.serving.ops import best_class, sigmoid, xyxy_from_cxcywh

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)  # YOLOv8/YOLO11's P3-P5 heads; a graph with other strides fails the check and runs whole
# rtol, atol of the rebuilt output against the whole graph's (box pixels up to the input size, scores in [0, 1])
TOLERANCE = (1e-4, 1e-3)
# Logits this close under the threshold's are scored exactly (the sigmoid, then ``best_class``) before the test
_LOGIT_MARGIN = 1e-3


def split_graph(model) -> Optional[Tuple[Any, str, str]]:
    """The ``onnx.ModelProto`` cut at the head's raw outputs (modified in place), the box distributions'
    and the class logits' tensor names; None when the graph does not end in YOLOv8's head."""
    graph = model.graph
    if len(graph.output) != 1:
        return None
    producers = {name: node for node in graph.node for name in node.output}
    final = producers.get(graph.output[0].name)
    if final is None or final.op_type != "Concat" or len(final.input) != 2 or _axis(final) not in (1, -2):
        return None
    scores = producers.get(final.input[1])
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    if scores is None or scores.op_type != "Sigmoid" or len(softmaxes) != 1:
        return None
    distributions = softmaxes[0].input[0]
    while producers.get(distributions) is not None and producers[distributions].op_type in ("Reshape", "Transpose"):
        distributions = producers[distributions].input[0]
    if distributions == softmaxes[0].input[0] or distributions in (i.name for i in graph.input):
        return None
    outputs = [distributions, scores.input[0]]
    needed = _needed(producers, outputs)
    # a node with a subgraph may read outer-scope tensors this walk does not see: such a graph is not cut
    if any(a.g.node or a.graphs for node in needed for a in node.attribute):
        return None
    return _prune(model, needed, outputs), *outputs


def _axis(node) -> Optional[int]:
    return next((attribute.i for attribute in node.attribute if attribute.name == "axis"), None)


def _needed(producers: dict, outputs: Sequence[str]) -> List[Any]:
    """The nodes the ``outputs`` depend on."""
    nodes, stack = {}, list(outputs)
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(name for name in node.input if name)
    return list(nodes.values())


def _prune(model, needed: Sequence[Any], outputs: Sequence[str]):
    """``model`` with only the ``needed`` nodes (and their initializers), ``outputs`` its outputs."""
    import onnx

    graph = model.graph
    keep = {id(node) for node in needed}
    nodes = [node for node in graph.node if id(node) in keep]  # in the graph's (topological) order
    used = {name for node in nodes for name in node.input}
    initializers = [tensor for tensor in graph.initializer if tensor.name in used]
    produced = {name for node in nodes for name in node.output}
    infos = [info for info in graph.value_info if info.name in produced]
    for field, items in (("node", nodes), ("initializer", initializers), ("value_info", infos)):
        del getattr(graph, field)[:]
        getattr(graph, field).extend(items)
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs)
    return model


@lru_cache(maxsize=16)
def anchor_grid(input_size: int, anchors: int) -> Tuple[np.ndarray, np.ndarray]:
    """YOLOv8's anchor points (A×2 x, y in feature cells + 0.5, row by row, level by level) and each
    one's stride (A), for a square ``input_size`` model input (ultralytics' ``make_anchors``)."""
    sides = [-(-input_size // stride) for stride in STRIDES]  # a stride-2 conv rounds up
    if sum(side * side for side in sides) != anchors:
        raise ValueError(f"the yolov8 head's {anchors} anchors do not fit a {input_size}×{input_size} input at "
                         f"strides {STRIDES}")
    points, strides = [], []
    for side, stride in zip(sides, STRIDES):
        cells = np.arange(side, dtype=np.float32) + np.float32(0.5)
        y, x = np.meshgrid(cells, cells, indexing="ij")
        points.append(np.stack([x.ravel(), y.ravel()], axis=1))
        strides.append(np.full(side * side, stride, dtype=np.float32))
    return np.concatenate(points), np.concatenate(strides)


def dfl_boxes(distributions: np.ndarray, points: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """K×4 cx, cy, w, h input pixels from 4R×K distance bins (left, top, right, bottom; the DFL's
    softmax and expectation), their anchor points K×2 and strides K, computed as the graph does."""
    bins = distributions.reshape(4, distributions.shape[0] // 4, distributions.shape[-1]).astype(np.float32)
    weights = np.exp(bins - bins.max(axis=1, keepdims=True))
    expected = (weights * np.arange(bins.shape[1], dtype=np.float32)[None, :, None]).sum(axis=1) / weights.sum(axis=1)
    top_left, bottom_right = points - expected[:2].T, points + expected[2:].T
    boxes = np.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=1)
    return (boxes * strides[:, None]).astype(np.float32)


def is_split(outputs: Sequence[np.ndarray]) -> bool:
    """One image's outputs have the split head's shapes: 4R×A box distributions (R ≥ 2 bins) and C×A class
    logits, A anchors of a square input at ``STRIDES`` (21·k² for three strides: 8400 at 640×640)."""
    if len(outputs) != 2 or not all(np.ndim(o) == 2 for o in outputs):
        return False
    (rows, anchors), (_, count) = np.shape(outputs[0]), np.shape(outputs[1])
    cells = sum(4 ** -level for level in range(len(STRIDES)))  # anchors per (input side / largest stride)²
    side = round((anchors / cells) ** 0.5) if anchors else 0
    return rows % 4 == 0 and rows >= 8 and anchors == count and side > 0 and round(side * side * cells) == anchors


def decode_split(distributions: np.ndarray, logits: np.ndarray, threshold: float, input_size: int) -> Candidates:
    """The candidates of one image from the split head, as the whole graph's output would give them:
    the anchors whose best class score passes ``threshold``, their boxes decoded."""
    limit = -np.inf if threshold <= 0 else np.inf if threshold >= 1 else np.log(threshold / (1 - threshold))
    rows = np.nonzero(logits.max(axis=0) > limit - _LOGIT_MARGIN)[0]
    keep, scores, classes = best_class(sigmoid(logits[:, rows].T), threshold)
    rows = rows[keep]
    points, strides = anchor_grid(input_size, logits.shape[1])
    return Candidates(xyxy_from_cxcywh(dfl_boxes(distributions[:, rows], points[rows], strides[rows])), scores, classes)


def whole_output(distributions: np.ndarray, logits: np.ndarray, input_size: int) -> np.ndarray:
    """The whole graph's (4+C)×A output of one image, rebuilt from the split head (for the check)."""
    points, strides = anchor_grid(input_size, logits.shape[1])
    return np.concatenate([dfl_boxes(distributions, points, strides).T, sigmoid(logits)])


def faster_graph(path: Path, settings) -> Optional[bytes]:
    """``path``'s graph cut at the head (serialised) when ``split_head`` is on and the cut graph's
    outputs, decoded here, equal the whole graph's on a test image; else None (the file runs whole)."""
    if not settings.split_head:
        return None
    try:
        import onnx

        model = onnx.load(str(path))
        found = split_graph(model)
        if found is None:
            log.info("yolov8 head: %s does not end in YOLOv8's head (DFL softmax, sigmoid): it runs whole", path.name)
            return None
        cut = found[0].SerializeToString()
        difference = _check(path, cut, settings.input_size)
    except Exception as error:  # a graph this cannot read or run runs whole; loading it says what is wrong
        log.warning("yolov8 head: not split (%s: %s); the whole graph runs", type(error).__name__, error)
        return None
    if difference is None:
        log.warning("yolov8 head: the split head's boxes differ from the whole graph's on a test image: it runs whole")
        return None
    log.info("yolov8 head split: the model runs to the raw head outputs and only boxes above the threshold are "
             "decoded (largest difference from the whole graph on a test image: %.2g)", difference)
    return cut


def _check(path: Path, cut: bytes, input_size: int) -> Optional[float]:
    """The largest difference of the rebuilt output from the whole graph's on a test image, or None when
    outside ``TOLERANCE``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    whole, split = (onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                    for model in (str(path), cut))
    image = check_image(input_size)
    name = whole.get_inputs()[0].name
    expected = whole.run(None, {name: image})[0][0]
    rebuilt = whole_output(*(output[0] for output in split.run(None, {name: image})), input_size)
    if rebuilt.shape != expected.shape or not np.allclose(rebuilt, expected, *TOLERANCE):
        return None
    return float(np.abs(rebuilt - expected).max())


def check_image(size: int) -> np.ndarray:
    """1×3×size×size in [0, 1]: smooth gradients and a few edges, the same every time."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    y, x = np.meshgrid(ramp, ramp, indexing="ij")
    planes = [x, y, ((x * 7).astype(np.int32) % 2 ^ (y * 5).astype(np.int32) % 2).astype(np.float32)]
    return np.stack(planes)[None]
