"""Shared fixtures: exported models, toy models, archives and one real TorchServe per session."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict

import pytest
import skimage.data
from PIL import Image

from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.export.model_files import export_files, write_settings
from tsvision.tools.serve.server import DEVELOPMENT_PROFILE, TorchServe
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task, load_export
from tests.toy_models import TOY_DETECTION_LABELS, TOY_SEGMENTATION_LABELS, BrightestBoxDetector, ColourSegmenter

TASKS = ("classification", "segmentation", "detection")
BACKENDS = {"torchscript": "model.pt", "onnx": "model.onnx"}
AB_MODEL = "ab_classifier"
AB_TOP_K = {"1.0": 5, "2.0": 3, "3.0": 1}  # the length of an answer tells which version answered
EXAMPLE_HANDLER = Path(__file__).resolve().parent.parent / "examples" / "handlers" / "people_counter.py"
TOY_INPUT_SIZE = 640
TOY_SETTINGS = {
    "detection": {"input_size": TOY_INPUT_SIZE, "mean": [0, 0, 0], "std": [1, 1, 1], "background_index": 0,
                  "score_threshold": 0.5, "resize_mode": "letterbox"},
    "segmentation": {"input_size": TOY_INPUT_SIZE, "mean": [0, 0, 0], "std": [1, 1, 1], "resize_mode": "stretch"},
}


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photos() -> Dict[str, Image.Image]:
    """Real photos of different sizes from scikit-image."""
    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            for name in ("astronaut", "chelsea", "coffee", "rocket")}


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> Path:
    """The three default torchvision models exported to TorchScript and ONNX (random weights)."""
    root = tmp_path_factory.mktemp("exports")
    for task in TASKS:
        exportable = build_exportable(task)
        write_settings(exportable, root / task, {})
        report = export_files(exportable, root / task)
        assert report["ok"], report
    return root


@pytest.fixture(scope="session")
def toy_exports(tmp_path_factory) -> Path:
    """The toy detector and segmenter, exported by the same export code."""
    root = tmp_path_factory.mktemp("toys")
    toys = {
        "detection": (BrightestBoxDetector(TOY_INPUT_SIZE), TOY_DETECTION_LABELS, ["boxes", "scores"]),
        "segmentation": (ColourSegmenter(), TOY_SEGMENTATION_LABELS, ["logits"]),
    }
    for task, (module, labels, outputs) in toys.items():
        exportable = Exportable(task, f"toy-{task}", module.eval(), dict(TOY_SETTINGS[task]), labels, False, outputs)
        report = export_files(exportable, root / task)
        assert report["ok"], report
        (root / task / "labels.json").write_text(json.dumps(labels))
    return root


def load_task(folder: Path, backend: str, **overrides):
    """A task in-process from an export folder's files (settings.json or the toy settings)."""
    if (folder / "settings.json").exists():
        return load_export(folder, BACKENDS[backend], **overrides)
    values = {"task": folder.name, "labels": "labels.json", **TOY_SETTINGS[folder.name], **overrides}
    return build_task(folder / BACKENDS[backend], Settings.from_mapping(values), folder)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, exports, toy_exports) -> Path:
    """Six default archives, a long-delay classifier and four toy archives, built with the archive CLI."""
    store = tmp_path_factory.mktemp("model_store")
    for task in TASKS:
        for backend, filename in BACKENDS.items():
            assert archive_main(["--model", str(exports / task / filename), "--settings", str(exports / task / "settings.json"),
                                 "--name", f"{task}_{backend}", "--store", str(store)]) == 0
    # For the input tests: batch size 8 and a delay long enough that concurrent requests share a batch.
    assert archive_main(["--model", str(exports / "classification" / "model.onnx"), "--settings",
                         str(exports / "classification" / "settings.json"), "--name", "classification_batched",
                         "--store", str(store), "--batch-size", "8", "--max-batch-delay", "300"]) == 0
    for task in ("detection", "segmentation"):
        overrides = [f"--set={key}={json.dumps(value)}" for key, value in TOY_SETTINGS[task].items()]
        for backend, filename in BACKENDS.items():
            # Bring-your-own path: a model file plus a labels file, no settings.json. A long
            # batch delay makes concurrent requests share a batch.
            assert archive_main(["--model", str(toy_exports / task / filename), "--task", task,
                                 "--labels", str(toy_exports / task / "labels.json"), "--name", f"toy_{task}_{backend}",
                                 "--store", str(store), "--max-batch-delay", "300", *overrides]) == 0
    # A user's handler file (examples/handlers/people_counter.py) on the toy detector: class 1 is
    # "person" in one archive and "cat" in the other; per-step timings on (handler: profile: true).
    overrides = [f"--set={key}={json.dumps(value)}" for key, value in TOY_SETTINGS["detection"].items()]
    for kind in ("person", "cat"):
        (toy_exports / f"labels-{kind}.json").write_text(json.dumps(["background", kind]))
        assert archive_main(["--model", str(toy_exports / "detection" / "model.onnx"), "--task", "detection",
                             "--labels", str(toy_exports / f"labels-{kind}.json"), "--name", f"{kind}_counter",
                             "--handler", str(EXAMPLE_HANDLER), "--store", str(store), "--set", "profile=true", *overrides]) == 0
    return store


@pytest.fixture(scope="session")
def served(model_store, tmp_path_factory):
    """A real TorchServe on free loopback ports with every archive READY; always stopped."""
    server = TorchServe(model_store, tmp_path_factory.mktemp("torchserve"))
    try:
        server.start(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ab_server(exports, tmp_path_factory):
    """A second TorchServe in the development profile (registration on), with versions 1.0 and 2.0
    of a classifier loaded and 3.0 in the store; the versions differ in top_k only."""
    store = tmp_path_factory.mktemp("ab_store")
    for version, top_k in AB_TOP_K.items():
        assert archive_main(["--model", str(exports / "classification" / "model.onnx"), "--settings",
                             str(exports / "classification" / "settings.json"), "--name", AB_MODEL, "--version", version,
                             "--archive-file", f"{AB_MODEL}-{version}", "--store", str(store), "--set", f"top_k={top_k}",
                             "--set", "top_label_header=true"]) == 0
    # Development profile: registration through the management API is on.
    server = TorchServe(store, tmp_path_factory.mktemp("ab_torchserve"), models=[f"{AB_MODEL}-1.0.mar", f"{AB_MODEL}-2.0.mar"],
                        overrides=DEVELOPMENT_PROFILE)
    try:
        server.start()
        yield server
    finally:
        server.stop()
