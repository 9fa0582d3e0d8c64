"""Handler settings from the user's settings and a model's facts (``facts.ModelFacts``): pure functions, nothing
is read or run here. What the file says fills what the user left out; what the user said is checked against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tsvision.serving import formats
from tsvision.serving.geometry import Placement
from tsvision.serving.settings import Settings
from tsvision.tools.archive.facts import ModelFacts
from tsvision.tools.export.ultralytics_models import labels_from_metadata, settings_from_metadata


@dataclass(frozen=True)
class Resolved:
    values: dict  # the handler settings (task included), for Settings.from_mapping
    names: Optional[List[str]]  # class names from the model's metadata (only when no labels file was given)
    metadata_note: Optional[str]  # what the ONNX metadata gave, said first
    notes: List[str]  # what else to tell the user: the detection format found, quantisation


class ResolutionError(ValueError):
    """The model contradicts the settings, or they cannot be told from it; ``notes``: what was said before."""

    def __init__(self, message: str, notes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.notes = list(notes)


def from_metadata(metadata: Dict[str, str], given: dict,
                  labels_given: bool = False) -> Tuple[dict, Optional[List[str]], Optional[str]]:
    """What an ultralytics ONNX file says about itself (``names``, ``task``, ``imgsz`` in its metadata):
    (the settings it implies that ``given`` lacks, its class names unless ``labels_given``, a note or None)."""
    implied = settings_from_metadata(metadata)
    if implied.get("task") and given.get("task", implied["task"]) != implied["task"]:
        implied = {}  # the user chose another task: their choice
    taken = {key: value for key, value in implied.items() if key not in given}
    names = None if labels_given else labels_from_metadata(metadata)
    if not taken and names is None:
        return {}, None, None
    said = [f"{k}={v}" for k, v in taken.items()] + ([f"{len(names)} class names"] if names else [])
    return taken, names, f"from the ONNX metadata ({metadata.get('author', 'exporter')}): {', '.join(said)}"


def needs_detector_check(facts: ModelFacts, given: dict) -> bool:
    """Whether it matters that the model is a whole torchvision detector: a detector without a format."""
    values = {**given, **from_metadata(facts.metadata, given)[0]}
    return values.get("task") == "detection" and "detection_format" not in values


def probe_size(facts: ModelFacts, given: dict) -> Optional[int]:
    """The side of the blank image whose outputs the detection format is checked on (``input_size`` if given,
    else the ONNX input's own fixed side, else 640, the YOLO default); None when no look is needed."""
    values = {**given, **from_metadata(facts.metadata, given)[0]}
    if values.get("task") != "detection" or ("detection_format" not in values and facts.whole_torchvision_detector):
        return None
    if not _decodable(values.get("detection_format", "ssd")):
        return None  # a whole detector (torchvision): the handler check on two images covers it
    side = values.get("input_size")
    return int(side if side is not None else facts.input_side or 640)


def detection_format(facts: ModelFacts, values: dict) -> Tuple[dict, Optional[str]]:
    """Check the model's outputs against ``values['detection_format']``; without one, take it from the output
    shapes when they are unambiguous. Returns (the settings found, what to tell the user or None); raises
    ``ValueError`` with a clear message when the shapes do not fit or cannot be told apart."""
    model = facts.path
    if "detection_format" not in values and facts.whole_torchvision_detector:
        return ({"detection_format": "torchvision", "background_index": values.get("background_index", 0)},
                "detection_format torchvision (a whole torchvision detector; background_index 0)")
    if not _decodable(values.get("detection_format", "ssd")):
        return {}, None
    if facts.outputs is None:
        raise RuntimeError(f"{model}: its outputs were not looked at (inspection.inspect_model)")
    outputs = list(facts.outputs)
    shapes = [tuple(o.shape) for o in outputs]
    described = ", ".join("×".join(str(d) for d in shape) for shape in shapes)
    contract = f"{model} does not meet the detection contract (docs/models.md)"
    found: dict = {}
    note = None
    if "detection_format" not in values:
        guessed = formats.guess_format(shapes)
        decodable = [r.name for r in formats.records("detection") if r.decode is not None]
        if guessed is None:
            fitting = [fmt for fmt in decodable if _fits(fmt, outputs, values)]
            if not fitting:
                raise ValueError(f"{contract}: its outputs ({described}) fit none of the detection formats "
                                 f"({', '.join(decodable)}; a whole torchvision detector needs "
                                 "--set detection_format=torchvision)")
            raise ValueError(f"cannot tell the detection output format of {model} from its output shapes "
                             f"({described}): they fit {' and '.join(fitting)}; pass --set detection_format=FORMAT "
                             "(docs/models.md)")
        found["detection_format"] = guessed
        if not formats.lookup("detection", guessed).background and "background_index" not in values:
            found["background_index"] = None
        note = (f"detection_format {guessed} (from the output shapes {described}; "
                "override with --set detection_format=...)")
    try:
        _decode(Settings.from_mapping({**values, **found}), outputs)
    except ValueError as error:
        raise ValueError(f"{contract}: {error}") from None
    return found, note


def _decode(settings: Settings, outputs: List[np.ndarray]) -> None:
    """Decode the first image's outputs as ``settings.detection_format`` (raises ``ValueError`` on a mismatch)."""
    side = settings.input_size
    decode = formats.lookup("detection", settings.detection_format).decode
    decode([o[0] for o in outputs], settings, Placement(side, side, side, side, side))


def _decodable(name: str) -> bool:
    """A detection format whose outputs the archive can check (not a whole detector, not an unknown name)."""
    record = formats.find("detection", name)
    return record is not None and record.decode is not None


def _fits(fmt: str, outputs: List[np.ndarray], values: dict) -> bool:
    background = values.get("background_index") if formats.lookup("detection", fmt).background else None
    try:
        _decode(Settings.from_mapping({**values, "detection_format": fmt, "background_index": background}), outputs)
        return True
    except ValueError:
        return False


def quantization(facts: ModelFacts, values: dict) -> Tuple[str, Optional[str]]:
    """``quantized`` from the model file itself (its ``tsvision.quantized`` metadata, or quantised operators in it),
    and what to tell the user. Settings that call a float model quantised are refused (``ValueError``)."""
    said = values.get("quantized") or ""
    if said and not facts.quantization:
        raise ValueError(f"the settings say quantized: {said}, but {facts.path} has no quantised operators "
                         "(archive model.int8.onnx from tsvision export --quantize int8, or drop the setting)")
    if facts.quantization:
        return facts.quantization, (f"{facts.path.name} is QUANTISED ({facts.quantization}): its answers differ "
                                    "slightly from the float model's (report.json beside it has the agreement)")
    return "", None


def resolve_settings(facts: ModelFacts, given: dict, labels_given: bool = False) -> Resolved:
    """The handler settings of ``given`` (the user's: settings.json, --task, --set) completed and checked by what
    the model file says; raises ``ResolutionError`` (a ``ValueError``) saying what does not fit."""
    taken, names, metadata_note = from_metadata(facts.metadata, given, labels_given)
    values = {**given, **taken}
    notes: List[str] = []
    try:
        if "task" not in values:
            raise ValueError("pass --task or --settings (the model file does not say its task)")
        if values["task"] == "detection":
            found, note = detection_format(facts, values)
            values.update(found)
            notes += [note] if note else []
        values["quantized"], note = quantization(facts, values)
        notes += [note] if note else []
    except ValueError as error:
        raise ResolutionError(str(error), [metadata_note] if metadata_note else []) from None
    return Resolved(values, names, metadata_note, notes)
