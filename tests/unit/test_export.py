"""Export from torchvision (random weights or a checkpoint) and archiving your own model."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
import torch
import torchvision
import yaml

from tsvision.serving.runtimes import load_runtime
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.export.cli import main as export_main


@pytest.mark.parametrize("task, architecture", [
    ("classification", "mobilenet_v3_small"), ("segmentation", "lraspp_mobilenet_v3_large"), ("detection", "ssdlite320_mobilenet_v3_large")])
def test_default_exports_report_parity_and_say_weights_are_random(exports, task, architecture):
    report = json.loads((exports / task / "report.json").read_text())
    settings = json.loads((exports / task / "settings.json").read_text())
    assert report["ok"] and max(report["max_abs_diff"].values()) <= report["tolerance"]
    assert report["random_weights"] is True and settings["random_weights"] is True and "random" in settings["description"]
    no_download = {} if task == "classification" else {"weights_backbone": None}
    model = torchvision.models.get_model(architecture, weights=None, **no_download)
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["flops_per_image"] > 1e7
    labels = json.loads((exports / task / "labels.json").read_text())
    assert labels == list(torchvision.models.get_model_weights(architecture).DEFAULT.meta["categories"])
    graph = onnx.load(str(exports / task / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the ONNX batch axis must be dynamic"
    if task == "segmentation":  # torchvision's preset: any aspect ratio, so height and width are dynamic too
        assert settings["resize_mode"] == "shorter_side" and report["input"] == [None, 3, None, None]
        assert all(graph.input[0].type.tensor_type.shape.dim[axis].dim_param for axis in (2, 3))
    size = settings["input_size"]
    for filename in ("model.pt", "model.onnx"):
        outputs = load_runtime(exports / task / filename).run(np.zeros((3, 3, size, size), np.float32))
        assert outputs[0].shape[0] == 3 and len(outputs) == len(report["outputs"])


def test_checkpoint_is_loaded_strictly_and_exported(tmp_path, capsys):
    torch.manual_seed(7)
    trained = torchvision.models.mobilenet_v3_small(weights=None, num_classes=3).eval()
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "ckpt.pth")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    assert export_main(["--task", "classification", "--checkpoint", str(tmp_path / "ckpt.pth"),
                        "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "out")]) == 0
    assert "RANDOM" not in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["random_weights"] is False and report["ok"]
    batch = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = trained(batch).numpy()
    for filename in ("model.pt", "model.onnx"):
        np.testing.assert_allclose(load_runtime(tmp_path / "out" / filename).run(batch.numpy())[0], expected, atol=1e-4)


def test_checkpoint_that_does_not_fit_is_refused(tmp_path, capsys):
    torch.save(torchvision.models.mobilenet_v3_small(weights=None, num_classes=4).state_dict(), tmp_path / "ckpt.pth")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    code = export_main(["--task", "classification", "--checkpoint", str(tmp_path / "ckpt.pth"),
                        "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "out")])
    assert code == 2 and "size mismatch" in capsys.readouterr().err


def test_own_model_archive_is_self_contained(toy_exports, tmp_path):
    """A user's ONNX file plus labels becomes an archive carrying our handler and settings."""
    assert archive_main(["--model", str(toy_exports / "segmentation" / "model.onnx"), "--task", "segmentation",
                         "--labels", str(toy_exports / "segmentation" / "labels.json"), "--name", "mine",
                         "--version", "2.1", "--store", str(tmp_path), "--set", "input_size=640", "--set", "std=[1,1,1]",
                         "--set", "mean=[0,0,0]", "--batch-size", "4"]) == 0
    with zipfile.ZipFile(tmp_path / "mine.mar") as archive:
        names = set(archive.namelist())
        config = yaml.safe_load(archive.read("model-config.yaml"))
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert {"model.onnx", "image_segmenter.py", "labels.json", "tsvision/__init__.py", "tsvision/serving/handler.py",
            "tsvision/serving/tasks/base.py", "tsvision/serving/tasks/segmentation.py"} <= names
    assert not any(name.startswith("tsvision/tools/") for name in names)  # the tooling never ships
    assert not any("__pycache__" in name for name in names)
    assert config["batchSize"] == 4 and config["handler"]["task"] == "segmentation" and config["handler"]["input_size"] == 640
    assert config["handler"]["labels"] == "labels.json" and manifest["model"]["modelVersion"] == "2.1"
    digest = (tmp_path / "mine.mar.sha256").read_text().split()[0]
    import hashlib
    assert digest == hashlib.sha256((tmp_path / "mine.mar").read_bytes()).hexdigest()


def test_model_that_breaks_the_contract_is_refused_before_archiving(exports, tmp_path, capsys):
    code = archive_main(["--model", str(exports / "classification" / "model.onnx"), "--task", "detection",
                         "--name", "wrong", "--store", str(tmp_path)])
    assert code == 2 and "does not meet the detection contract" in capsys.readouterr().err
    assert not (tmp_path / "wrong.mar").exists()
