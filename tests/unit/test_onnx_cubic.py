"""tools/export/onnx_cubic.py: a bicubic ONNX ``Resize`` rewritten as two matrix products answers as ONNX
Runtime's own ``Resize`` (to float rounding), inside ``Loop`` bodies too, and other resizes stay."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from tsvision.tools.export.onnx_cubic import rewrite_cubic_resizes

ANY4 = [None] * 4


def resize_model(mode: str = "cubic", transform: str = "half_pixel") -> onnx.ModelProto:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode=mode, cubic_coeff_a=-0.75,
                            coordinate_transformation_mode=transform)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ANY4),
                                                 helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ANY4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def loop_model() -> onnx.ModelProto:
    """A Loop whose body resizes the outer ``x`` (as Keypoint R-CNN's keypoint decoding does per person)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic", cubic_coeff_a=-0.75,
                          coordinate_transformation_mode="half_pixel")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("y", TensorProto.FLOAT, ANY4)])
    loop = helper.make_node("Loop", ["trips", ""], ["ys"], body=body)
    graph = helper.make_graph([loop], "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ANY4),
                                               helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
                                               helper.make_tensor_value_info("trips", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("ys", TensorProto.FLOAT, [None] * 5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def op_types(graph: onnx.GraphProto) -> list:
    found = []
    for node in graph.node:
        found.append(node.op_type)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += op_types(attribute.g)
    return found


def rewritten(model: onnx.ModelProto) -> tuple:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    count = rewrite_cubic_resizes(copy)
    onnx.checker.check_model(copy, full_check=True)
    return copy, count


# Keypoint R-CNN's heatmaps (17 keypoints as N, C = 1) to box sizes: up, down (a 16-pixel-wide
# box), 1×1, unchanged, and a small multi-channel map
@pytest.mark.parametrize("shape, size", [((17, 1, 56, 56), (177, 170)), ((17, 1, 56, 56), (191, 16)), ((17, 1, 56, 56), (1, 1)),
                                         ((17, 1, 56, 56), (56, 56)), ((1, 1, 56, 56), (320, 320)), ((2, 3, 5, 7), (9, 4))])
def test_rewritten_cubic_resize_equals_onnx_runtime_resize(shape, size):
    model = resize_model()
    fast, count = rewritten(model)
    assert count == 1 and "Resize" not in op_types(fast.graph)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feeds = {"x": x, "sizes": np.array(list(shape[:2]) + list(size), np.int64)}
    expected, got = session(model).run(None, feeds)[0], session(fast).run(None, feeds)[0]
    assert got.shape == expected.shape == shape[:2] + size
    assert np.abs(got - expected).max() <= 1e-5


def test_cubic_resize_in_a_loop_body_is_rewritten():
    model = loop_model()
    fast, count = rewritten(model)
    assert count == 1 and "Resize" not in op_types(fast.graph)
    feeds = {"x": np.random.default_rng(1).standard_normal((17, 1, 56, 56)).astype(np.float32),
             "sizes": np.array([17, 1, 243, 73], np.int64), "trips": np.array(3, np.int64)}
    expected, got = session(model).run(None, feeds)[0], session(fast).run(None, feeds)[0]
    assert got.shape == expected.shape == (3, 17, 1, 243, 73) and np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("mode, transform", [("linear", "half_pixel"), ("cubic", "align_corners"), ("nearest", "asymmetric")])
def test_other_resizes_are_left_alone(mode, transform):
    fast, count = rewritten(resize_model(mode, transform))
    assert count == 0 and op_types(fast.graph) == ["Resize"]
