"""What the tiers share: photos and every exported model, each built once per session and only when a
test asks for it (tests/unit asks only for the toys and the three small default models; the real
R-CNN and YOLO exports serve tests/slow and the served-model tests of tests/e2e).

The one TorchServe of the run is in tests/e2e/conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
from PIL import Image

from tests import keypoint_checks
from tests.helpers import (
    AB_MODEL,
    AB_TOP_K,
    BACKENDS,
    EXAMPLE_HANDLER,
    FORMAT_OUTPUTS,
    FORMAT_SIZE,
    ONE_WORKER,
    TASKS,
    TOY_INPUT_SIZE,
    TOY_SETTINGS,
    built_once,
    photo,
)
from tests.instance_toys import TOY_INSTANCE_LABELS, BrightMaskRCNN, BrightMaskYoloSeg
from tests.keypoint_toys import BrightRectangleKeypointRCNN, BrightRectanglePose, OneImage
from tests.toy_models import (
    QUADRANT_LABELS,
    QUADRANT_SETTINGS,
    TOY_DETECTION_LABELS,
    TOY_FORMAT_LABELS,
    TOY_SEGMENTATION_LABELS,
    BrightestBoxDetector,
    BrightestBoxInFormat,
    ColourSegmenter,
    QuadrantClassifier,
)
from tsvision.serving.settings import Settings
from tsvision.tools.archive.cli import main as archive_main
from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.model_files import export_files, write_settings

os.environ.setdefault("YOLO_OFFLINE", "1")
TIERS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items) -> None:
    """The tier is the folder: every test in tests/e2e is marked ``e2e``, every test in tests/slow ``slow``
    (so ``-m "not e2e"`` and ``-m "not slow"`` select as before), except a tests/e2e test run over the
    ``local`` transport (tests/transports.py): it needs no TorchServe, so it belongs to the fast loop."""
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(TIERS).parts[0]
        callspec = getattr(item, "callspec", None)
        if tier == "e2e" and callspec is not None and callspec.params.get("transport") == "local":
            continue
        if tier in ("e2e", "slow"):
            item.add_marker(tier)


# The tests that start or talk to a TorchServe: the one session server (tests/e2e) and the soak's own.
SERVER_TESTS = ("tests/e2e/", "tests/slow/test_soak.py")


def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (``bash run.sh test`` runs two workers): every server test on one worker, one
    after another (one session TorchServe, and never two servers' workers in this machine's memory
    at once), while the other tests are shared out one by one and run beside them, in-process."""
    from xdist.scheduler import LoadScopeScheduling

    class ServerTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "server tests" if nodeid.startswith(SERVER_TESTS) else nodeid

    return ServerTestsTogether(config, log)


@pytest.fixture(scope="session")
def photos() -> Dict[str, Image.Image]:
    """Real photos of different sizes from scikit-image."""
    return {name: photo(name) for name in ("astronaut", "chelsea", "coffee", "rocket")}


# -- toys and the three small default models (every tier) --------------------------------------------
@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> Path:
    """The three default torchvision models exported to TorchScript and ONNX (random weights)."""
    def build(root: Path) -> None:
        for task in TASKS:
            exportable = build_exportable(task)
            write_settings(exportable, root / task, {})
            report = export_files(exportable, root / task)
            assert report["ok"], report

    return built_once(tmp_path_factory, "exports", build)


@pytest.fixture(scope="session")
def toy_exports(tmp_path_factory) -> Path:
    """The toy detector and segmenter, exported by the same export code."""
    def build(root: Path) -> None:
        toys = {
            "detection": (BrightestBoxDetector(TOY_INPUT_SIZE), TOY_DETECTION_LABELS, ["boxes", "scores"]),
            "segmentation": (ColourSegmenter(), TOY_SEGMENTATION_LABELS, ["logits"]),
        }
        for task, (module, labels, outputs) in toys.items():
            exportable = Exportable(task, f"toy-{task}", module.eval(), dict(TOY_SETTINGS[task]), labels, False,
                                    outputs)
            report = export_files(exportable, root / task)
            assert report["ok"], report
            (root / task / "labels.json").write_text(json.dumps(labels))

    return built_once(tmp_path_factory, "toys", build)


@pytest.fixture(scope="session")
def explain_toys(tmp_path_factory) -> Path:
    """The quadrant classifier (explanations' known answer) exported to TorchScript and ONNX in
    ``classification/``, beside its settings.json and labels.json."""
    def build(root: Path) -> None:
        folder = root / "classification"
        exportable = Exportable("classification", "toy-quadrants", QuadrantClassifier().eval(),
                                dict(QUADRANT_SETTINGS), QUADRANT_LABELS, False, ["logits"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = export_files(exportable, folder)
        assert report["ok"], report
        (folder / "settings.json").write_text(json.dumps(QUADRANT_SETTINGS))
        (folder / "labels.json").write_text(json.dumps(QUADRANT_LABELS))

    return built_once(tmp_path_factory, "explain_toys", build)


@pytest.fixture(scope="session")
def format_exports(tmp_path_factory) -> Path:
    """The bright-box toy in each detector family's output layout (tests/toy_models.py), ONNX and TorchScript."""
    def build(root: Path) -> None:
        for fmt, names in FORMAT_OUTPUTS.items():
            module = BrightestBoxInFormat(fmt, FORMAT_SIZE).eval()
            exportable = Exportable("detection", f"toy-{fmt}", module, {"input_size": FORMAT_SIZE}, TOY_FORMAT_LABELS,
                                    False, names)
            report = export_files(exportable, root / fmt)
            assert report["ok"], report
            (root / fmt / "labels.json").write_text(json.dumps(TOY_FORMAT_LABELS))

    return built_once(tmp_path_factory, "formats", build)


@pytest.fixture(scope="session")
def keypoint_toys(tmp_path_factory) -> Path:
    """Both keypoint toys (tests/keypoint_toys.py) as TorchScript and ONNX, each folder with
    settings.json and labels.json (tests/keypoint_checks.py: their settings and labels)."""
    def build(root: Path) -> None:
        pose = BrightRectanglePose(keypoint_checks.SIZE).eval()
        report = export_files(Exportable("keypoints", "toy-pose", pose, {"input_size": keypoint_checks.SIZE},
                                         keypoint_checks.TOY_LABELS["toy_pose"], False, ["output0"]), root / "toy_pose")
        assert report["ok"], report
        rcnn = root / "toy_rcnn"
        rcnn.mkdir()
        model = BrightRectangleKeypointRCNN().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(model).save(str(rcnn / "model.pt"))
            torch.onnx.export(OneImage(model), (torch.rand(3, 64, 96),), str(rcnn / "model.onnx"), opset_version=17,
                              dynamo=False, input_names=["images"], output_names=list(keypoint_checks.KEYS),
                              dynamic_axes={"images": [1, 2]})
        for name, values in keypoint_checks.TOY_SETTINGS.items():
            values = {**values, "labels": "labels.json"}
            (root / name / "settings.json").write_text(json.dumps(Settings.from_mapping(values).to_mapping()))
            (root / name / "labels.json").write_text(json.dumps(keypoint_checks.TOY_LABELS[name]))

    return built_once(tmp_path_factory, "keypoint_toys", build)


@pytest.fixture(scope="session")
def instance_toys(tmp_path_factory) -> Path:
    """The Mask R-CNN-contract toy scripted and exported to one-image ONNX by the detectors' export
    code, the YOLOv8-seg-contract toy traced and exported to ONNX by ``export_files``."""
    from tsvision.tools.export.mask_rcnn import OUTPUT_NAMES
    from tsvision.tools.export.torchvision_detectors import export_detector_onnx

    def build(root: Path) -> None:
        (root / "torchvision").mkdir()
        toy = BrightMaskRCNN().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.script(toy).save(str(root / "torchvision" / "model.pt"))
        export_detector_onnx(toy, root / "torchvision" / "model.onnx", 320, 480, tuple(OUTPUT_NAMES))
        yolo = Exportable("instance_segmentation", "toy-yolov8_seg", BrightMaskYoloSeg(640).eval(), {"input_size": 640},
                          TOY_INSTANCE_LABELS, False, ["output0", "protos"])
        assert export_files(yolo, root / "yolov8_seg")["ok"]
        for fmt in ("torchvision", "yolov8_seg"):
            (root / fmt / "labels.json").write_text(json.dumps(TOY_INSTANCE_LABELS))

    return built_once(tmp_path_factory, "instance_toys", build)


# -- the real R-CNN and YOLO exports (tests/slow, and their served tests in tests/e2e) ----------------
FRCNN_ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
# torchvision's RetinaNet, resizing to 320 (its default 800 costs 460 GFLOPs an image on 2 cores)
RETINANET, RETINANET_ARGS = "retinanet_resnet50_fpn", {"min_size": 320, "max_size": 480}


def _export(tmp_path_factory, name: str, build: Callable[[], Exportable]):
    """(folder, exportable, report): the model exported once per run (``built_once``); the eager
    model itself travels to the other worker as a pickle beside the files, so every worker compares
    with the very weights that were exported."""
    def export(folder: Path) -> None:
        exportable = build()
        write_settings(exportable, folder, {})
        export_files(exportable, folder)
        torch.save(exportable, folder / "exportable.pickle")

    folder = built_once(tmp_path_factory, name, export)
    exportable = torch.load(folder / "exportable.pickle", weights_only=False)
    return folder, exportable, json.loads((folder / "report.json").read_text())


@pytest.fixture(scope="session")
def frcnn(tmp_path_factory):
    """The smallest Faster R-CNN, random conditioned weights, exported by the export code.

    (folder, exportable, report), as the other R-CNN fixtures."""
    return _export(tmp_path_factory, "frcnn", lambda: build_exportable("detection", FRCNN_ARCH))


@pytest.fixture(scope="session")
def retinanet(tmp_path_factory):
    """torchvision's RetinaNet at min_size 320, random conditioned weights, exported by the export code."""
    folder, exportable, report = _export(tmp_path_factory, "retinanet",
                                         lambda: build_exportable("detection", RETINANET, model_args=RETINANET_ARGS))
    assert report["ok"] and report["files"] == ["model.pt", "model.onnx"], report
    assert report["parity_detections"] >= 1, report
    return folder, exportable, report


@pytest.fixture(scope="session")
def mrcnn(tmp_path_factory):
    """The default instance segmentation export: the smallest Mask R-CNN, random conditioned weights."""
    return _export(tmp_path_factory, "mrcnn", lambda: build_exportable("instance_segmentation"))


@pytest.fixture(scope="session")
def krcnn(tmp_path_factory):
    """The smallest Keypoint R-CNN, random conditioned weights, exported by the export code."""
    return _export(tmp_path_factory, "krcnn", lambda: build_exportable("keypoints"))


def _export_yolo(folder: Path, name: str) -> dict:
    pytest.importorskip("ultralytics")
    from tsvision.tools.export.ultralytics_models import export_yolo

    return export_yolo(name, folder)


@pytest.fixture(scope="session")
def yolo_pose(tmp_path_factory) -> Path:
    """YOLOv8n-pose from ultralytics' yaml, random conditioned, exported by ultralytics' exporter."""
    def build(folder: Path) -> None:
        report = _export_yolo(folder, "yolov8n-pose")
        assert report["ok"], report

    return built_once(tmp_path_factory, "yolo_pose", build)


@pytest.fixture(scope="session")
def yolo_seg(tmp_path_factory) -> Path:
    """YOLOv8n-seg from ultralytics' yaml, random conditioned, exported by ultralytics' exporter."""
    def build(folder: Path) -> None:
        report = _export_yolo(folder, "yolov8n-seg")
        figures = {k: report[k] for k in ("outputs", "parameters", "max_abs_diff", "export_seconds")}
        print("\nyolov8n-seg export:", json.dumps(figures))
        assert report["ok"] and report["task"] == "instance_segmentation" \
            and report["detection_format"] == "yolov8_seg"

    return built_once(tmp_path_factory, "yolov8n_seg", build)


@pytest.fixture(scope="session")
def yolov8n(tmp_path_factory) -> Path:
    """``tsvision export --arch yolov8n``: ultralytics' own ONNX exporter, random conditioned weights;
    its log is quiet."""
    pytest.importorskip("ultralytics")
    from tsvision.tools.export.cli import main as export_main

    def build(folder: Path) -> None:
        started = time.time()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert export_main(["--task", "detection", "--arch", "yolov8n", "--out", str(folder)]) == 0
        print(f"\nexport: {time.time() - started:.1f} s; stdout:\n{out.getvalue()}")
        assert "Ultralytics" not in out.getvalue() and "Results saved" not in out.getvalue()  # its log is quiet

    return built_once(tmp_path_factory, "yolov8n", build)


# The session's server starts all these archives at once: one worker each (the default's two would double
# its start-up and memory on a 2-core machine; the default itself: test_plain_archiver) and batch size 8, the
# batch the batching tests were written for.
SESSION_ARCHIVE = (*ONE_WORKER, "--batch-size", "8")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, exports, toy_exports) -> Path:
    """Six default archives, a long-delay classifier, four toy archives, two people counters and three
    versions of a classifier, built with the archive CLI."""
    def build(store: Path) -> None:
        for task in TASKS:
            for backend, filename in BACKENDS.items():
                assert archive_main(["--model", str(exports / task / filename),
                                     "--settings", str(exports / task / "settings.json"),
                                     "--name", f"{task}_{backend}", "--store", str(store), *SESSION_ARCHIVE]) == 0
        # For the input tests: batch size 8 and a delay long enough that concurrent requests share a batch.
        assert archive_main(["--model", str(exports / "classification" / "model.onnx"), "--settings",
                             str(exports / "classification" / "settings.json"), "--name", "classification_batched",
                             "--store", str(store), *SESSION_ARCHIVE, "--max-batch-delay", "300"]) == 0
        for task in ("detection", "segmentation"):
            overrides = [f"--set={key}={json.dumps(value)}" for key, value in TOY_SETTINGS[task].items()]
            for backend, filename in BACKENDS.items():
                # Bring-your-own path: a model file plus a labels file, no settings.json. A long
                # batch delay makes concurrent requests share a batch.
                assert archive_main(["--model", str(toy_exports / task / filename), "--task", task,
                                     "--labels", str(toy_exports / task / "labels.json"),
                                     "--name", f"toy_{task}_{backend}", "--store", str(store), *SESSION_ARCHIVE,
                                     "--max-batch-delay", "300", *overrides]) == 0
        # A user's handler file (examples/handlers/people_counter.py) on the toy detector: class 1 is
        # "person" in one archive and "cat" in the other; per-step timings on (handler: profile: true).
        overrides = [f"--set={key}={json.dumps(value)}" for key, value in TOY_SETTINGS["detection"].items()]
        for kind in ("person", "cat"):
            (toy_exports / f"labels-{kind}.json").write_text(json.dumps(["background", kind]))
            assert archive_main(["--model", str(toy_exports / "detection" / "model.onnx"), "--task", "detection",
                                 "--labels", str(toy_exports / f"labels-{kind}.json"), "--name", f"{kind}_counter",
                                 "--handler", str(EXAMPLE_HANDLER), "--store", str(store), *SESSION_ARCHIVE,
                                 "--set", "profile=true", *overrides]) == 0
        # Versions 1.0, 2.0 and 3.0 of a classifier (they differ in top_k only); 3.0 stays in the store
        # until a test registers it.
        for version, top_k in AB_TOP_K.items():
            assert archive_main(["--model", str(exports / "classification" / "model.onnx"),
                                 "--settings", str(exports / "classification" / "settings.json"),
                                 "--name", AB_MODEL, "--version", version, "--archive-file", f"{AB_MODEL}-{version}",
                                 "--store", str(store), *SESSION_ARCHIVE, "--set", f"top_k={top_k}",
                                 "--set", "top_label_header=true"]) == 0

    return built_once(tmp_path_factory, "model_store", build)


# -- issue 29 parts 3 and 4: multi-label classification, embeddings ---------------------------------
TAGGER_SETTINGS = {"input_size": 32, "resize_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "multi_label": True,
                   "top_k": 3}
EMBEDDER_ARCH, EMBEDDER_SIZE = "mobilenet_v3_small", 64  # a small backbone at a small input: a quick export
EMBEDDER_STATE = "backbone.pt"  # beside the export: the backbone's state dict (head dropped), for eager references


@pytest.fixture(scope="session")
def tagger(tmp_path_factory) -> Path:
    """The multi-label toy (tests/toy_models.py ColourTagger) exported: model.pt, model.onnx, settings.json."""
    from tests.toy_models import TOY_TAG_LABELS, ColourTagger

    def build(folder: Path) -> None:
        exportable = Exportable("classification", "toy-tagger", ColourTagger().eval(), dict(TAGGER_SETTINGS),
                                TOY_TAG_LABELS, False, ["logits"])
        write_settings(exportable, folder, {})
        assert export_files(exportable, folder)["ok"]

    return built_once(tmp_path_factory, "tagger", build)


def build_embedder_exportable() -> Exportable:
    """The embedding test backbone (random weights, seed 0: the same module every time it is built)."""
    exportable = build_exportable("embedding", EMBEDDER_ARCH)
    exportable.settings.update(input_size=EMBEDDER_SIZE, resize_size=EMBEDDER_SIZE + 8)
    return exportable


@pytest.fixture(scope="session")
def embedder(tmp_path_factory) -> Path:
    """``build_embedder_exportable`` exported (model.pt, model.onnx, settings.json; no labels) and its
    backbone's state dict (``EMBEDDER_STATE``)."""
    def build(folder: Path) -> None:
        exportable = build_embedder_exportable()
        write_settings(exportable, folder, {})
        assert export_files(exportable, folder)["ok"]
        torch.save(exportable.module.model.state_dict(), folder / EMBEDDER_STATE)  # the eager reference's weights

    return built_once(tmp_path_factory, "embedder", build)
