"""Rewrite ONNX ``Resize`` nodes of mode ``cubic`` as two matrix products (export time only).

Why: Keypoint R-CNN's ONNX export decodes keypoints in a ``Loop`` over the detected persons, and
each iteration resizes that person's 17×56×56 heatmaps to the size of its box with a bicubic
``Resize`` (torchvision's ``_onnx_heatmaps_to_keypoints``). ONNX Runtime's CPU cubic ``Resize``
is slow: several times slower than PyTorch's bicubic ``interpolate`` of the same maps, and the
largest single cost of the whole ONNX forward pass (measured in docs/performance.md, "Keypoint
R-CNN: where the time went").

Bicubic resizing is separable: ``y = Wy · x · Wxᵀ`` with Wy (out_h × in_h) and Wx (out_w × in_w)
holding the 4 cubic weights of each output row and column (Keys' kernel, a = cubic_coeff_a;
``half_pixel`` source coordinates; taps beyond the border clamped to the edge, as ONNX Runtime and
PyTorch do with ``exclude_outside=0``). The rewritten subgraph builds both matrices from the
runtime sizes (they change per person) and multiplies; the answers agree with ONNX Runtime's own
``Resize`` to float rounding (tests/test_onnx_cubic.py).

Only the form the torchvision export writes is rewritten: a 4-D input, output ``sizes`` given,
``coordinate_transformation_mode="half_pixel"``, ``exclude_outside=0``; any other ``Resize`` is
left alone.
"""

from __future__ import annotations

from typing import List

import numpy as np
import onnx
from onnx import helper, numpy_helper


def rewrite_cubic_resizes(model: onnx.ModelProto) -> int:
    """Replace, in place (subgraphs included), every rewritable cubic ``Resize``; returns how many."""
    return _rewrite_graph(model.graph)


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _rewritable(node: onnx.NodeProto) -> bool:
    if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
        return False
    mode = _attribute(node, "mode", b"nearest")
    transform = _attribute(node, "coordinate_transformation_mode", b"half_pixel")
    return (mode == b"cubic" and transform == b"half_pixel" and int(_attribute(node, "exclude_outside", 0)) == 0
            and _attribute(node, "axes", None) is None and len(node.input) >= 4 and node.input[3] != "")


def _rewrite_graph(graph: onnx.GraphProto) -> int:
    count = 0
    nodes: List[onnx.NodeProto] = []
    for node in graph.node:
        for attribute in node.attribute:  # Loop / If / Scan bodies
            if attribute.type == onnx.AttributeProto.GRAPH:
                count += _rewrite_graph(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                count += sum(_rewrite_graph(g) for g in attribute.graphs)
        if _rewritable(node):
            nodes.extend(_separable_cubic(node))
            count += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _separable_cubic(node: onnx.NodeProto) -> List[onnx.NodeProto]:
    """The nodes computing ``node``'s output as ``Wy · x · Wxᵀ`` (``x`` rank 4: N×C×H×W)."""
    a = float(_attribute(node, "cubic_coeff_a", -0.75))
    x, sizes, out = node.input[0], node.input[3], node.output[0]
    p = (node.name or out) + "/separable_cubic/"
    made: List[onnx.NodeProto] = []

    def const(name: str, value) -> str:
        made.append(helper.make_node("Constant", [], [p + name],
                                     value=numpy_helper.from_array(np.asarray(value), p + name)))
        return p + name

    def op(kind: str, inputs: List[str], name: str, **attributes) -> str:
        made.append(helper.make_node(kind, inputs, [p + name], name=p + name, **attributes))
        return p + name

    shape = op("Shape", [x], "shape")
    zero_i, one_i = const("zero_i", np.int64(0)), const("one_i", np.int64(1))
    half, one_f = const("half", np.float32(0.5)), const("one_f", np.float32(1.0))
    taps = const("taps", np.array([[-1, 0, 1, 2]], np.int64))          # 1×4
    taps_f = const("taps_f", np.array([[-1, 0, 1, 2]], np.float32))    # 1×4
    a_c = {name: const(name, np.float32(v)) for name, v in
           (("a2", a + 2), ("a3", a + 3), ("a5", 5 * a), ("a8", 8 * a), ("a4", 4 * a), ("a", a))}
    axis_1 = const("axis_1", np.array([1], np.int64))
    axis_m1 = const("axis_m1", np.array([-1], np.int64))

    def matrix(axis: int) -> str:
        """out × in weights along ``axis`` (2: height, 3: width)."""
        s = f"ax{axis}_"
        index = const(s + "index", np.int64(axis))
        size_in = op("Gather", [shape, index], s + "in", axis=0)          # int64 scalars
        size_out = op("Gather", [sizes, index], s + "out", axis=0)
        size_in_f = op("Cast", [size_in], s + "in_f", to=onnx.TensorProto.FLOAT)
        size_out_f = op("Cast", [size_out], s + "out_f", to=onnx.TensorProto.FLOAT)
        scale = op("Div", [size_out_f, size_in_f], s + "scale")            # as ONNX Runtime: out / in
        rows = op("Cast", [op("Range", [zero_i, size_out, one_i], s + "rows")], s + "rows_f", to=onnx.TensorProto.FLOAT)
        source = op("Sub", [op("Div", [op("Add", [rows, half], s + "r_half"), scale], s + "r_scaled"), half],
                    s + "source")
        floor = op("Floor", [source], s + "floor")
        t = op("Unsqueeze", [op("Sub", [source, floor], s + "t0"), axis_m1], s + "t")            # out×1
        floor_i = op("Unsqueeze", [op("Cast", [floor], s + "floor_i0", to=onnx.TensorProto.INT64), axis_m1],
                     s + "floor_i")
        last = op("Sub", [size_in, one_i], s + "last")
        where = op("Min", [op("Max", [op("Add", [floor_i, taps], s + "tap_raw"), zero_i], s + "tap_lo"), last],
                   s + "tap")  # out×4
        d = op("Abs", [op("Sub", [t, taps_f], s + "d0")], s + "d")                                  # out×4 distances
        # Keys' kernel: |d| <= 1: ((a+2)d - (a+3))d² + 1;  1 < |d| < 2: ((a d - 5a) d + 8a) d - 4a
        near = op("Add", [op("Mul", [op("Mul", [op("Sub", [op("Mul", [a_c["a2"], d], s + "n1"), a_c["a3"]], s + "n2"),
                                                d], s + "n3"), d], s + "n4"), one_f], s + "near")
        inner = op("Mul", [op("Sub", [op("Mul", [a_c["a"], d], s + "f1"), a_c["a5"]], s + "f2"), d], s + "f3")
        far = op("Sub", [op("Mul", [op("Add", [inner, a_c["a8"]], s + "f4"), d], s + "f5"), a_c["a4"]], s + "far")
        weights = op("Where", [op("LessOrEqual", [d, one_f], s + "is_near"), near, far], s + "weights")  # out×4
        columns = op("Range", [zero_i, size_in, one_i], s + "columns")                                  # in
        hits = op("Cast", [op("Equal", [op("Unsqueeze", [where, axis_m1], s + "tap3"), columns], s + "hit")],
                  s + "hit_f",
                  to=onnx.TensorProto.FLOAT)                                                            # out×4×in
        weighted = op("Mul", [hits, op("Unsqueeze", [weights, axis_m1], s + "weights3")], s + "weighted")
        return op("ReduceSum", [weighted, axis_1], s + "matrix", keepdims=0)                              # out×in

    rows_matrix = matrix(2)
    columns_matrix = op("Transpose", [matrix(3)], "ax3_matrix_t", perm=[1, 0])                         # in_w×out_w
    tall = op("MatMul", [rows_matrix, x], "tall")                                                     # N×C×out_h×in_w
    made.append(helper.make_node("MatMul", [tall, columns_matrix], [out], name=p + "result"))
    return made
