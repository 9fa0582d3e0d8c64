"""Static int8 quantisation (tsvision export --quantize int8, tools/export/quantize.py) on small seeded
toy models: the quantised file loads in the serving task, its answers agree with fp32 within the
stated tolerances, calibration sees the images as the serving task prepares them, the archive
carries the file and says so, and bad requests are clear errors. No TorchServe is started (the
served tests already cover archives); no timing is asserted (benchmarks/quantize.py measures speed)."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from torch import nn

from tests.helpers import REPO
from tests.toy_models import ColourSegmenter
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import load_export
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class
from tsvision.tools.export import cli as export_tool
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.model_files import export_files, write_settings
from tsvision.tools.export.quantize import (
    METADATA_KEY,
    QuantizeError,
    calibration_items,
    graph_refusal,
    model_quantization,
    prepared_inputs,
    quantize_export,
    refusal,
)

HANDLERS = REPO / "handlers"
TOY_CLASSES = ["red", "green", "blue", "grey"]
# Stated tolerances (int8 against fp32 on scikit-image's eight photos, toy models):
MIN_SQNR_DB = 25.0           # every raw output
MIN_TOP1 = 7 / 8             # classification: top-1 equal
MIN_TOPK_OVERLAP = 0.8       # classification: top-k sets, on average
MIN_PIXEL_AGREEMENT = 0.97   # segmentation: mask pixels equal
MIN_BOX_RECALL = 0.75        # detection: fp32 boxes matched by an int8 box (same class, IoU >= 0.5)


class ToyClassifier(nn.Module):
    """Two convolutions, global pooling and a linear layer whose logits follow the mean colour:
    a network with real weighted layers whose top class is clear on most photos."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 3, 1)
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            self.conv1.weight.copy_(0.05 * torch.randn(self.conv1.weight.shape, generator=generator))
            for channel in range(3):  # the colour passes through (plus a little random mixing)
                self.conv1.weight[channel, channel, 1, 1] += 1.0
                self.conv1.weight[channel + 3, channel, 1, 1] -= 1.0
            self.conv1.bias.fill_(0.0)
            self.conv2.weight.zero_()
            for channel in range(3):
                self.conv2.weight[channel, channel] = 1.0
                self.conv2.weight[channel, channel + 3] = -1.0
            self.conv2.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[6.0, -3, -3], [-3, 6, -3], [-3, -3, 6], [1, 1, 1]]))
            self.fc.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv2(torch.relu(self.conv1(images)))
        return self.fc(features.mean(dim=(2, 3)))


class ToyConvDetector(nn.Module):
    """An SSD-style head on a small convolution stack: one anchor per cell of an 8×8 grid over a
    64-pixel input, box deltas and class logits from convolutions, decoded in the graph (boxes in
    input pixels, softmax scores with background column 0), like SSDBoxesScores."""

    def __init__(self, size: int = 64, grid: int = 8, classes: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())
        self.deltas, self.logits = nn.Conv2d(16, 4, 1), nn.Conv2d(16, classes, 1)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / module.weight[0].numel()) ** 0.5)
                    module.bias.zero_()
            self.logits.weight.mul_(4.0)  # well separated scores
            self.deltas.weight.mul_(0.2)
        step = size / grid
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * step
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("anchors", torch.stack([cx, cy], -1).reshape(1, -1, 2))
        self.side = 2 * step

    def forward(self, images: torch.Tensor):
        features = self.features(images)
        deltas = self.deltas(features).flatten(2).transpose(1, 2)     # N×A×4
        logits = self.logits(features).flatten(2).transpose(1, 2)     # N×A×C
        centre = self.anchors + deltas[..., :2] * self.side
        half = 0.5 * self.side * torch.exp(torch.clamp(deltas[..., 2:], max=2.0))
        return torch.cat([centre - half, centre + half], dim=-1), torch.softmax(logits, dim=-1)


TOYS = {
    "classification": (ToyClassifier, {"input_size": 32, "resize_size": 36}, TOY_CLASSES, ["logits"]),
    "segmentation": (ColourSegmenter, {"input_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1], "resize_mode": "stretch"},
                     ["background", "red", "green", "blue"], ["logits"]),
    "detection": (ToyConvDetector, {"input_size": 64, "resize_mode": "stretch", "background_index": 0, "score_threshold": 0.4,
                                    "iou_threshold": 0.5}, ["background", "thing", "other"], ["boxes", "scores"]),
}


def toy_exportable(task: str) -> Exportable:
    cls, settings, labels, outputs = TOYS[task]
    torch.manual_seed(0)
    return Exportable(task, f"toy-{task}", cls().eval(), dict(settings), labels, True, outputs)


def export_toy(task: str, folder: Path) -> Path:
    exportable = toy_exportable(task)
    write_settings(exportable, folder, {})
    assert export_files(exportable, folder)["ok"]
    return folder


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict:
    """Each toy exported and quantised (calibrated on scikit-image's photos): task -> its folder."""
    root = tmp_path_factory.mktemp("quantized")
    folders = {}
    for task in TOYS:
        folder = export_toy(task, root / task)
        quantize_export(folder)
        folders[task] = folder
    return folders


@pytest.mark.parametrize("task", list(TOYS))
def test_the_quantised_file_is_written_beside_the_fp32_one_and_recorded(quantized, task):
    folder = quantized[task]
    assert (folder / "model.onnx").exists() and (folder / "model.int8.onnx").exists()
    record = json.loads((folder / "report.json").read_text())["quantized"]
    assert record["format"] == "int8" and record["file"] == "model.int8.onnx"
    assert record["calibration"] == "scikit-image photos" and len(record["calibration_images"]) == 8
    assert record["agreement"]["images"] == 8
    assert model_quantization(folder / "model.int8.onnx") == "int8" and model_quantization(folder / "model.onnx") == ""
    # settings.json stays the fp32 model's: the archive tells the quantised file by the file itself
    assert json.loads((folder / "settings.json").read_text())["quantized"] == ""
    graph = onnx.load(str(folder / "model.int8.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)


@pytest.mark.parametrize("task", list(TOYS))
def test_the_quantised_model_answers_like_fp32_within_tolerance(quantized, task):
    agreement = json.loads((quantized[task] / "report.json").read_text())["quantized"]["agreement"]
    assert min(agreement["output_sqnr_db"].values()) >= MIN_SQNR_DB, agreement
    if task == "classification":
        assert agreement["top1_agreement"] >= MIN_TOP1 and agreement["topk_overlap_mean"] >= MIN_TOPK_OVERLAP, agreement
    elif task == "segmentation":
        assert agreement["pixel_agreement_mean"] >= MIN_PIXEL_AGREEMENT, agreement
    else:
        assert agreement["boxes_fp32"] > 0 and agreement["recall"] >= MIN_BOX_RECALL, agreement
        assert agreement["matched_iou_mean"] >= 0.9, agreement


def test_the_serving_task_loads_the_quantised_file(quantized, photos):
    for task, folder in quantized.items():
        served = load_export(folder, "model.int8.onnx")
        answers = served.run([photos["astronaut"], photos["coffee"]])
        served.close()
        assert all(not isinstance(a, Exception) for a in answers), answers
        if task == "classification":
            assert len(answers[0]) == 4 and {a["label"] for a in answers[0]} == set(TOY_CLASSES)


def test_calibration_ranges_are_those_of_the_served_preparation(quantized):
    """The input's quantisation range is the range of the images exactly as the serving task prepares
    them (crop and normalisation with the archive's mean/std), not of the raw photos."""
    folder = quantized["classification"]
    task = load_export(folder, "model.onnx")
    items, _ = calibration_items(None)
    inputs = prepared_inputs(task, items)
    task.close()
    expected = task.prepare_batch([image for _, image in items]).inputs
    np.testing.assert_array_equal(inputs, expected)
    graph = onnx.load(str(folder / "model.int8.onnx")).graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    first = next(node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "images")
    scale, zero = float(constants[first.input[1]]), int(constants[first.input[2]])
    low, high = min(0.0, float(inputs.min())), max(0.0, float(inputs.max()))
    assert scale == pytest.approx((high - low) / 255, rel=1e-3)
    assert zero == pytest.approx(round(-low / scale), abs=1)
    assert low < -1.5 and high > 2.0  # ImageNet-normalised pixels, not [0, 1]


def test_user_calibration_images(tmp_path, photos):
    folder = export_toy("classification", tmp_path / "export")
    calibration = tmp_path / "photos"
    calibration.mkdir()
    photos["chelsea"].save(calibration / "cat.jpg", quality=90)
    photos["rocket"].save(calibration / "rocket.PNG")
    (calibration / "notes.txt").write_text("ignored: not a .jpg/.png")
    record = quantize_export(folder, calibration)
    assert record["calibration_images"] == ["cat.jpg", "rocket.PNG"] and str(calibration) in record["calibration"]
    assert record["agreement"]["images"] == 2


def test_a_bad_calibration_folder_is_a_clear_error(tmp_path, quantized):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuantizeError, match="no .jpg/.jpeg/.png files in it .it is empty."):
        calibration_items(empty)
    with pytest.raises(QuantizeError, match="not a folder"):
        calibration_items(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(QuantizeError, match=r"1 of 1 calibration images cannot be read: photo.jpg: .*not an image"):
        quantize_export(quantized["classification"], broken)


def test_the_cli_flag_exports_and_quantises(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_tool, "build_exportable", lambda task, *args: toy_exportable(task))
    assert export_tool.main(["--task", "detection", "--quantize", "int8", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "model.int8.onnx" in out and "int8 vs fp32 on the same images" in out and "matched" in out and "SQNR" in out
    assert "random weights" in out  # the toy says random_weights, so the caveat is printed
    assert json.loads((tmp_path / "out" / "report.json").read_text())["quantized"]["agreement"]["recall"] is not None


def test_the_cli_refuses_clearly(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_tool.main(["--task", "classification", "--quantize", "int8", "--calibration-images", str(empty),
                             "--out", str(tmp_path / "out")]) == 2
    assert "no .jpg/.jpeg/.png files" in capsys.readouterr().err
    assert export_tool.main(["--task", "keypoints", "--quantize", "int8", "--out", str(tmp_path / "out")]) == 2
    assert "keypoints is not quantised" in capsys.readouterr().err
    whole = toy_exportable("detection")
    whole.settings["detection_format"] = "torchvision"
    monkeypatch.setattr(export_tool, "build_exportable", lambda *args: whole)
    assert export_tool.main(["--task", "detection", "--quantize", "int8", "--out", str(tmp_path / "out")]) == 2
    assert "NonMaxSuppression" in capsys.readouterr().err and not (tmp_path / "out" / "model.onnx").exists()
    with pytest.raises(SystemExit):
        export_tool.main(["--task", "classification", "--calibration-images", str(empty)])


def test_graphs_with_nms_inside_are_refused(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"])]
    graph = helper.make_graph(nodes, "nms", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4]),
                                             helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 10])],
                              [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])])
    onnx.save(helper.make_model(graph), str(tmp_path / "nms.onnx"))
    assert "NonMaxSuppression" in graph_refusal(tmp_path / "nms.onnx")
    assert refusal("detection", "torchvision") and refusal("detection", "yolo_nms") and refusal("instance_segmentation")
    assert refusal("detection", "ssd") is None and refusal("classification") is None


def test_the_setting_is_validated():
    assert Settings.from_mapping({"task": "classification", "quantized": "int8"}).quantized == "int8"
    with pytest.raises(ValueError, match="quantized must be one of"):
        Settings.from_mapping({"task": "classification", "quantized": "int4"})


def test_the_archive_carries_the_quantised_file_and_says_so(quantized, tmp_path, capsys):
    folder = quantized["classification"]
    store = tmp_path / "store"
    assert archive_main(["--model", str(folder / "model.int8.onnx"), "--settings", str(folder / "settings.json"),
                         "--name", "toy_int8", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "model.int8.onnx is QUANTISED (int8)" in out and "[QUANTISED: int8]" in out
    with zipfile.ZipFile(store / "toy_int8.mar") as archive:
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"] == "model.int8.onnx"
        assert yaml.safe_load(archive.read("model-config.yaml"))["handler"]["quantized"] == "int8"
    # the fp32 file archived with the same settings is not called quantised
    assert archive_main(["--model", str(folder / "model.onnx"), "--settings", str(folder / "settings.json"),
                         "--name", "toy_fp32", "--store", str(store)]) == 0
    with zipfile.ZipFile(store / "toy_fp32.mar") as archive:
        assert yaml.safe_load(archive.read("model-config.yaml"))["handler"]["quantized"] == ""
    # settings that call a float model quantised are refused
    assert archive_main(["--model", str(folder / "model.onnx"), "--settings", str(folder / "settings.json"),
                         "--name", "liar", "--store", str(store), "--set", "quantized=int8"]) == 2
    assert "has no quantised operators" in capsys.readouterr().err


def test_the_handler_log_and_describe_say_quantised(quantized, caplog):
    folder = quantized["classification"]
    settings = {**json.loads((folder / "settings.json").read_text()), "quantized": "int8"}
    with caplog.at_level(logging.INFO):
        worker = LocalWorker(load_handler_class(HANDLERS / "image_classifier.py"), folder, "model.int8.onnx",
                             {"batchSize": 2, "handler": settings}, name="toy_int8")
    try:
        messages = [r.getMessage() for r in caplog.records]
        assert any("toy_int8: this model is QUANTISED (int8)" in m for m in messages), messages
        assert any("on onnx int8 (cpu)" in m for m in messages), messages
        described = json.loads(worker.handler.describe_handle())
        assert described["quantized"] == "int8" and described["settings"]["quantized"] == "int8"
    finally:
        worker.handler.task.close()


def test_metadata_names_the_calibration(quantized):
    props = {p.key: p.value for p in onnx.load(str(quantized["segmentation"] / "model.int8.onnx")).metadata_props}
    assert props[METADATA_KEY] == "int8" and props["tsvision.calibration"].startswith("scikit-image photos")
