"""Read a model file once into ``facts.ModelFacts``: an ONNX file's graph and metadata without its weights, or
whether a TorchScript file is a whole torchvision detector; and, when the settings call for it, its outputs for
one blank image (the detection formats are checked on them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List

import numpy as np
import onnx
import torch
import torchvision  # noqa: F401 - registers torchvision::nms and roi_align for torch.jit.load

from tsvision.serving.runtimes import load_runtime
from tsvision.tools.archive.facts import ModelFacts
from tsvision.tools.archive.package import proto_external_data
from tsvision.tools.archive.resolve import needs_detector_check, probe_size
from tsvision.tools.command import one_line
from tsvision.tools.export.quantize import proto_quantization

DETECTOR_OUTPUTS = ["boxes", "labels", "scores"]  # a whole torchvision detector's one-image ONNX export


class ModelFileError(ValueError):
    """The model file cannot be read for what it says it is."""


def inspect_model(model: Path, given: dict) -> ModelFacts:
    """The facts of ``model`` that resolving ``given`` (the user's settings) needs, each read once."""
    model = Path(model)
    facts = read_onnx(model) if model.suffix.lower() == ".onnx" else ModelFacts(model)
    if model.suffix.lower() != ".onnx" and needs_detector_check(facts, given):
        facts = replace(facts, whole_torchvision_detector=is_scripted_detector(model))
    side = probe_size(facts, given)
    if side is not None:
        facts = replace(facts, outputs=tuple(blank_outputs(model, side)))
    return facts


def read_onnx(model: Path) -> ModelFacts:
    """One read of an ONNX file's graph and metadata (its weights stay on disk)."""
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and the like
        raise ModelFileError(f"--model {model} is not an ONNX model ({type(error).__name__}: "
                             f"{one_line(str(error))})") from error
    graph = proto.graph
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    shapes = [[d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
              for value in inputs]
    side = shapes[0][-1] if shapes and len(shapes[0]) == 4 else None
    detector = len(shapes) == 1 and len(shapes[0]) == 3 and sorted(o.name for o in graph.output) == DETECTOR_OUTPUTS
    return ModelFacts(model, metadata={prop.key: prop.value for prop in proto.metadata_props},
                      quantization=proto_quantization(proto), external_data=tuple(proto_external_data(proto, model)),
                      whole_torchvision_detector=detector, input_side=side)


def is_scripted_detector(model: Path) -> bool:
    """A scripted torchvision detector: it has ``transform`` and ``backbone``."""
    try:
        module = torch.jit.load(str(model), map_location="cpu")
    except Exception:  # not TorchScript, or not loadable here: the look at its outputs says what is wrong
        return False
    return hasattr(module, "transform") and hasattr(module, "backbone")


def blank_outputs(model: Path, side: int) -> List[np.ndarray]:
    """The model's outputs for one blank 1×3×side×side image."""
    try:
        return load_runtime(model).run(np.zeros((1, 3, side, side), dtype=np.float32))
    except Exception as error:
        raise ValueError(f"{model} fails on a blank 1×3×{side}×{side} input (set --set input_size=...): "
                         f"{type(error).__name__}: {error}") from None

