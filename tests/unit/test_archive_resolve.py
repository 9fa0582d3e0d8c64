"""``tsvision archive``'s settings as a pure function of the model's facts and the user's settings
(``tsvision.tools.archive.resolve``): no model file is read here, the facts are written by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tsvision.tools.archive.facts import ModelFacts
from tsvision.tools.archive.resolve import ResolutionError, from_metadata, probe_size, resolve_settings

ULTRALYTICS = {"author": "Ultralytics", "task": "detect", "imgsz": "[320, 320]", "names": "{0: 'cat', 1: 'dog'}"}


def facts(**fields) -> ModelFacts:
    return ModelFacts(Path("model.onnx"), **fields)


def test_the_metadata_fills_only_what_the_user_left_out():
    taken, names, note = from_metadata(ULTRALYTICS, {"task": "detection", "input_size": 640})
    assert taken == {"detection_format": "yolov8"} and names == ["cat", "dog"]
    assert note == "from the ONNX metadata (Ultralytics): detection_format=yolov8, 2 class names"
    # another task: the user's choice, only the names are taken
    assert from_metadata(ULTRALYTICS, {"task": "classification"}) == (
        {}, ["cat", "dog"], "from the ONNX metadata (Ultralytics): 2 class names")
    assert from_metadata({}, {"task": "detection"}) == ({}, None, None)


def test_a_yolov8_output_is_recognised_from_its_shape():
    outputs = (np.zeros((1, 4 + 2, 2100), np.float32),)
    resolved = resolve_settings(facts(metadata={}, outputs=outputs), {"task": "detection", "input_size": 320})
    assert resolved.values["detection_format"] == "yolov8" and resolved.values["background_index"] is None
    assert resolved.notes == ["detection_format yolov8 (from the output shapes 1×6×2100; "
                              "override with --set detection_format=...)"]
    assert resolved.values["quantized"] == "" and resolved.metadata_note is None


def test_a_stated_format_the_outputs_do_not_fit_is_refused():
    outputs = (np.zeros((1, 6, 2100), np.float32),)
    with pytest.raises(ResolutionError, match="does not meet the detection contract"):
        resolve_settings(facts(outputs=outputs), {"task": "detection", "detection_format": "detr", "input_size": 320})


def test_a_whole_torchvision_detector_needs_no_look_at_its_outputs():
    whole = facts(whole_torchvision_detector=True)
    assert probe_size(whole, {"task": "detection"}) is None
    resolved = resolve_settings(whole, {"task": "detection"})
    assert resolved.values["detection_format"] == "torchvision" and resolved.values["background_index"] == 0


def test_the_blank_image_side():
    assert probe_size(facts(input_side=416), {"task": "detection"}) == 416
    assert probe_size(facts(input_side=416), {"task": "detection", "input_size": 256}) == 256
    assert probe_size(facts(), {"task": "detection"}) == 640
    assert probe_size(facts(metadata=ULTRALYTICS), {}) == 320  # task and size from the metadata
    assert probe_size(facts(), {"task": "classification"}) is None


def test_quantisation_comes_from_the_file():
    resolved = resolve_settings(facts(quantization="int8"), {"task": "classification"})
    assert resolved.values["quantized"] == "int8" and "model.onnx is QUANTISED (int8)" in resolved.notes[0]
    with pytest.raises(ResolutionError, match="the settings say quantized: int8, but model.onnx has no quantised"):
        resolve_settings(facts(), {"task": "classification", "quantized": "int8"})


def test_without_a_task_the_metadata_note_is_still_said():
    with pytest.raises(ResolutionError, match="pass --task or --settings") as raised:
        resolve_settings(facts(metadata={"names": "['a']", "author": "me"}), {})
    assert raised.value.notes == ["from the ONNX metadata (me): 1 class names"]


def test_nothing_given_is_changed():
    given = {"task": "detection"}
    resolve_settings(facts(whole_torchvision_detector=True), given)
    assert given == {"task": "detection"}
