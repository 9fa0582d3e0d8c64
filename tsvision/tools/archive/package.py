"""Pack an archive: the model file (and its ONNX external data), the handler entry file, ``tsvision/serving``,
labels and ``model-config.yaml`` through ``torch-model-archiver``, with a ``.sha256`` beside the ``.mar``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import onnx
import yaml
from onnx.external_data_helper import uses_external_data

from tsvision.serving.settings import Settings, load_labels
from tsvision.tools.command import CommandError
from tsvision.tools.export.model_files import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY, DEFAULT_WORKERS, model_config

PACKAGE_DIR = Path(__file__).resolve().parents[2]          # tsvision/
HANDLERS_DIR = PACKAGE_DIR.parent / "handlers"              # the entry files TorchServe loads
DEFAULT_HANDLERS = {"classification": ("image_classifier.py", "ImageClassifier"),
                    "segmentation": ("image_segmenter.py", "ImageSegmenter"),
                    "detection": ("object_detector.py", "ObjectDetector"),
                    "instance_segmentation": ("instance_segmenter.py", "InstanceSegmenter"),
                    "keypoints": ("keypoint_detector.py", "KeypointDetector"),
                    "embedding": ("image_embedder.py", "ImageEmbedder")}


def default_handler(task: str, folder: Path) -> Path:
    """The task's entry file from ``handlers/``; written into ``folder`` when this install has no
    ``handlers/`` folder (a non-editable install)."""
    file_name, class_name = DEFAULT_HANDLERS[task]
    if (HANDLERS_DIR / file_name).exists():
        return HANDLERS_DIR / file_name
    path = Path(folder) / file_name
    path.write_text(f"from tsvision.serving import {class_name} as _{class_name}\n\n\n"
                    f"class {class_name}(_{class_name}):\n    \"\"\"tsvision's {class_name}.\"\"\"\n")
    return path


def external_data_files(model: Path) -> List[Path]:
    """The files an ONNX model keeps its weights in beside itself (``torch.onnx.export`` in torch
    2.14 writes ``model.onnx.data`` for larger models by default); they travel with the model."""
    if model.suffix.lower() != ".onnx":
        return []
    return proto_external_data(onnx.load(str(model), load_external_data=False), model)


def proto_external_data(proto: onnx.ModelProto, model: Path) -> List[Path]:
    """``external_data_files`` of an ONNX ``ModelProto`` already loaded from ``model``."""
    graph = proto.graph
    locations = {entry.value for tensor in graph.initializer if uses_external_data(tensor)
                 for entry in tensor.external_data if entry.key == "location"}
    files = [model.parent / location for location in sorted(locations)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{model} keeps its weights in {', '.join(missing)}, which is missing: keep the files "
                         "torch.onnx.export wrote together, or export with external_data=False")
    return files


def stage_package(destination: Path) -> None:
    """Copy what a worker imports: ``tsvision/__init__.py`` and the whole ``tsvision/serving``."""
    package = destination / "tsvision"
    package.mkdir(parents=True)
    shutil.copy2(PACKAGE_DIR / "__init__.py", package / "__init__.py")
    shutil.copytree(PACKAGE_DIR / "serving", package / "serving", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_archive(model: Path, settings: Settings, labels: Optional[Path], name: str, version: str, store: Path,
                  batch_size: int = DEFAULT_BATCH_SIZE, max_batch_delay: int = DEFAULT_MAX_BATCH_DELAY,
                  workers: int = DEFAULT_WORKERS, archive_file: Optional[str] = None,
                  handler: Optional[Path] = None, external_data: Optional[List[Path]] = None) -> Path:
    """Write ``store/<archive_file or name>.mar`` and its ``.sha256``; return the archive path.
    ``handler`` is the ``--handler`` file (default: the task's file in ``handlers/``); ``external_data``
    the ONNX model's weight files beside it (default: read from the model)."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tsvision-archive-") as tmp:
        stage = Path(tmp) / "extra"
        stage.mkdir()
        stage_package(stage)
        for file in external_data_files(model) if external_data is None else external_data:  # beside the model file
            shutil.copy2(file, stage / file.name)
        handler = Path(handler) if handler else default_handler(settings.task, Path(tmp))
        if labels is not None:
            (stage / "labels.json").write_text(json.dumps(load_labels(labels)) + "\n")
        settings = Settings.from_mapping({**settings.to_mapping(),
                                          "labels": "labels.json" if labels is not None else None})
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(model_config(settings, batch_size, max_batch_delay, workers), sort_keys=False))
        command = [
            str(archiver_path("torch-model-archiver")), "--model-name", name, "--version", version,
            "--serialized-file", str(model), "--handler", str(handler),
            "--extra-files", str(stage), "--config-file", str(config), "--export-path", tmp, "--force",
        ]
        run_archiver(command, Path(tmp))
        # Built aside, then moved: a second version never overwrites the first one's file.
        archive = store / f"{archive_file or name}.mar"
        shutil.move(str(Path(tmp) / f"{name}.mar"), str(archive))
    record_sha256(archive)
    return archive


def archiver_path(tool: str) -> Path:
    """``torch-model-archiver`` / ``torch-workflow-archiver``: beside this Python (its venv), else on PATH."""
    beside = Path(sys.executable).with_name(tool)
    found = shutil.which(tool)
    return beside if beside.exists() or not found else Path(found)


def run_archiver(command: List[str], tmp: Path) -> None:
    """Run an archiver command; its last line of output becomes the CommandError when it fails.

    The archivers stage in $TMPDIR/<name> and delete it first: a private TMPDIR (under ``tmp``) per
    build, so two builds of the same name cannot destroy each other's files."""
    private_tmp = tmp / "archiver-tmp"
    private_tmp.mkdir(exist_ok=True)
    done = subprocess.run(command, env={**os.environ, "TMPDIR": str(private_tmp)}, capture_output=True, text=True)
    if done.returncode != 0:
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise CommandError(f"{Path(command[0]).name} failed (exit status {done.returncode}): "
                           f"{said[-1] if said else 'no message'}")


def record_sha256(archive: Path) -> Path:
    """Write ``ARCHIVE.sha256`` (``sha256sum``'s format) beside ``archive``; what tsvision manage checks."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    recorded = archive.with_name(archive.name + ".sha256")
    recorded.write_text(f"{digest}  {archive.name}\n")
    return recorded
