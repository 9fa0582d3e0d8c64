"""What the model file says about itself, turned into handler settings: the ONNX metadata of an ultralytics
export, the detection output format (from the output shapes), whether it is quantised."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import onnxruntime
import torch
import torchvision  # noqa: F401 - registers torchvision::nms and roi_align for torch.jit.load

from tsvision.serving.geometry import Placement
from tsvision.serving.runtimes import load_runtime
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.detection_formats import DECODERS, guess_format
from tsvision.tools.export.quantize import model_quantization
from tsvision.tools.export.ultralytics_models import labels_from_metadata, onnx_metadata, settings_from_metadata


def probe_outputs(model: Path, values: dict) -> List[np.ndarray]:
    """The model's outputs for one blank image: ``input_size`` if given, else the ONNX input's own
    side when it is fixed, else 640 (the YOLO default)."""
    side = values.get("input_size")
    if side is None and model.suffix.lower() == ".onnx":
        shape = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        side = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else None
    side = int(side or 640)
    try:
        return load_runtime(model).run(np.zeros((1, 3, side, side), dtype=np.float32))
    except Exception as error:
        raise ValueError(f"{model} fails on a blank 1×3×{side}×{side} input (set --set input_size=...): "
                         f"{type(error).__name__}: {error}") from None


def is_whole_torchvision_detector(model: Path) -> bool:
    """A scripted torchvision detector (it has ``transform`` and ``backbone``), or its one-image ONNX
    export (a 3-d ``images`` input and ``boxes``, ``labels``, ``scores`` outputs)."""
    if model.suffix.lower() == ".onnx":
        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
        return len(inputs) == 1 and len(inputs[0].shape) == 3 and sorted(outputs) == ["boxes", "labels", "scores"]
    try:
        module = torch.jit.load(str(model), map_location="cpu")
    except Exception:  # not TorchScript, or not loadable here: the probe below says what is wrong
        return False
    return hasattr(module, "transform") and hasattr(module, "backbone")


def from_onnx_metadata(model: Path, values: dict, labels_given: bool = False) -> tuple:
    """What an ultralytics ONNX file says about itself (``names``, ``task``, ``imgsz`` in its
    metadata): the settings it implies, set where ``values`` has none, and its class names unless
    ``labels_given``. Returns (names or None, a note for the user or None)."""
    if model.suffix.lower() != ".onnx":
        return None, None
    metadata = onnx_metadata(model)
    implied = settings_from_metadata(metadata)
    if implied.get("task") and values.get("task", implied["task"]) != implied["task"]:
        implied = {}  # the user chose another task: their choice
    taken = {key: value for key, value in implied.items() if key not in values}
    values.update(taken)
    names = None if labels_given else labels_from_metadata(metadata)
    if not taken and names is None:
        return None, None
    said = [f"{k}={v}" for k, v in taken.items()] + ([f"{len(names)} class names"] if names else [])
    return names, f"from the ONNX metadata ({metadata.get('author', 'exporter')}): {', '.join(said)}"


def resolve_detection_format(model: Path, values: dict) -> Optional[str]:
    """Check the model's outputs against ``values['detection_format']``; without one, set it from the
    output shapes when they are unambiguous. Returns what to tell the user (None: nothing to say).
    Raises ``ValueError`` with a clear message when the shapes do not fit or cannot be told apart."""
    if "detection_format" not in values and is_whole_torchvision_detector(model):
        values.update(detection_format="torchvision", background_index=values.get("background_index", 0))
        return "detection_format torchvision (a whole torchvision detector; background_index 0)"
    if values.get("detection_format", "ssd") not in DECODERS:
        return None  # a whole detector (torchvision): the handler check on two images covers it
    outputs = probe_outputs(model, values)
    shapes = [tuple(o.shape) for o in outputs]
    described = ", ".join("×".join(str(d) for d in shape) for shape in shapes)
    contract = f"{model} does not meet the detection contract (docs/models.md)"
    note = None
    if "detection_format" not in values:
        guessed = guess_format(shapes)
        if guessed is None:
            fitting = [fmt for fmt in DECODERS if _fits(fmt, outputs, values)]
            if not fitting:
                raise ValueError(f"{contract}: its outputs ({described}) fit none of the detection formats "
                                 f"({', '.join(DECODERS)}; a whole torchvision detector needs --set detection_format=torchvision)")
            raise ValueError(f"cannot tell the detection output format of {model} from its output shapes ({described}): "
                             f"they fit {' and '.join(fitting)}; pass --set detection_format=FORMAT (docs/models.md)")
        values["detection_format"] = guessed
        if guessed != "ssd":
            values.setdefault("background_index", None)
        note = f"detection_format {guessed} (from the output shapes {described}; override with --set detection_format=...)"
    settings = Settings.from_mapping(values)
    try:
        _decode(settings, outputs)
    except ValueError as error:
        raise ValueError(f"{contract}: {error}") from None
    return note


def _decode(settings: Settings, outputs: List[np.ndarray]) -> None:
    """Decode the first image's outputs as ``settings.detection_format`` (raises ``ValueError`` on a mismatch)."""
    side = settings.input_size
    DECODERS[settings.detection_format]([o[0] for o in outputs], settings, Placement(side, side, side, side, side))


def _fits(fmt: str, outputs: List[np.ndarray], values: dict) -> bool:
    try:
        _decode(Settings.from_mapping({**values, "detection_format": fmt, "background_index": values.get("background_index") if fmt == "ssd" else None}), outputs)
        return True
    except ValueError:
        return False


def resolve_quantization(model: Path, values: dict) -> Optional[str]:
    """Set ``values['quantized']`` from the model file (``tools.quantize.model_quantization``: its
    ``tsvision.quantized`` metadata, or quantised operators in it). Returns what to tell the user.
    Settings that call a float model quantised are refused."""
    found = model_quantization(model)
    said = values.get("quantized") or ""
    if said and not found:
        raise ValueError(f"the settings say quantized: {said}, but {model} has no quantised operators "
                         "(archive model.int8.onnx from tsvision export --quantize int8, or drop the setting)")
    if found:
        values["quantized"] = found
        return f"{model.name} is QUANTISED ({found}): its answers differ slightly from the float model's (report.json beside it has the agreement)"
    values["quantized"] = ""
    return None
