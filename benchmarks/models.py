"""The benchmarked models: our exports and archives, and the same weights for TorchServe's stock handlers.

The stock handlers expect a TorchScript in torchvision's own output form:

- ``image_classifier``: N×C logits (the same file we export);
- ``image_segmenter``: a dict with ``"out"`` N×C×H×W (torchvision's segmentation models traced);
- ``object_detector``: torchvision's detection output, a list of ``{"boxes", "labels", "scores"}``
  dicts; the model resizes and normalises inside (it receives the photo's own pixels in [0, 1]).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List

import torch
import yaml
from torch import nn

from tsvision.tools.export.exportable import Exportable
from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.archive.package import build_archive
from tsvision.tools.export.model_files import model_config
from tsvision.tools.export.model_files import export_files, write_settings
from tsvision.serving.settings import Settings

STOCK_HANDLERS = {"classification": "image_classifier", "segmentation": "image_segmenter", "detection": "object_detector"}
MODEL_FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "pt2": "model.pt2"}


class StockDetector(nn.Module):
    """torchvision's detector behind the call the stock handler makes: ``model(N×3×H×W)`` -> list of dicts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        return self.model(list(images.unbind(0)))[1]  # scripted detectors return (losses, detections)


def stock_module(exportable: Exportable, sample: torch.Tensor) -> torch.jit.ScriptModule:
    """The same weights as ``exportable``, as TorchScript in the form the stock handler calls."""
    import torchvision

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exportable.task == "classification":
            return torch.jit.trace(exportable.module, sample, check_trace=False)
        if exportable.task == "segmentation":
            return torch.jit.trace(exportable.module.model, sample, strict=False, check_trace=False)
        model = torchvision.models.get_model(exportable.architecture, weights=None, weights_backbone=None,
                                             num_classes=len(exportable.labels))
        model.backbone, model.head = exportable.module.backbone, exportable.module.head
        return torch.jit.script(StockDetector(model.eval()))


def prepare_exports(task: str, root: Path, fresh: bool = False, pt2: bool = False) -> Path:
    """Export ``task``'s default model (random seeded weights; with ``pt2`` also the AOTInductor
    package) and, where TorchServe has one, its stock-handler TorchScript into ``root/task`` once; later runs reuse the files
    unless ``fresh``."""
    folder = root / task
    stock = task in STOCK_HANDLERS  # TorchServe has no stock handler for instance segmentation or keypoints
    names = ("model.pt", "model.onnx", "settings.json", "labels.json") + (("stock.pt",) if stock else ()) + (("model.pt2",) if pt2 else ())
    if not fresh and all((folder / name).exists() for name in names):
        return folder
    exportable = build_exportable(task)
    write_settings(exportable, folder, {})
    report = export_files(exportable, folder, pt2=pt2)
    if not report["ok"]:
        raise RuntimeError(f"{task}: the export's backends disagree: {report['max_abs_diff']}")
    if stock:
        size = exportable.settings["input_size"]
        stock_module(exportable, torch.zeros(1, 3, size, size)).save(str(folder / "stock.pt"))
    return folder


def build_ours(folder: Path, backend: str, name: str, store: Path, batch_size: int, delay: int, workers: int,
               overrides: dict | None = None) -> Path:
    values = json.loads((folder / "settings.json").read_text())
    values.update(overrides or {})
    values.pop("labels", None)
    settings = Settings.from_mapping(values)
    return build_archive(folder / MODEL_FILES[backend], settings, folder / "labels.json", name, "1.0", store,
                         batch_size, delay, workers)


def build_stock(folder: Path, task: str, name: str, store: Path, batch_size: int, delay: int, workers: int) -> Path:
    """A stock-handler archive: the TorchScript, ``index_to_name.json`` and the same batch settings."""
    labels = json.loads((folder / "labels.json").read_text())
    with tempfile.TemporaryDirectory(prefix="tsvision-stock-") as tmp:
        mapping = Path(tmp) / "index_to_name.json"
        mapping.write_text(json.dumps({str(i): name for i, name in enumerate(labels)}))
        return _archive(name, STOCK_HANDLERS[task], ["--serialized-file", str(folder / "stock.pt"), "--extra-files", str(mapping)],
                        store, batch_size, delay, workers)


def build_floor(name: str, store: Path, batch_size: int, delay: int, workers: int) -> Path:
    """An archive of ``floor_handler.py`` (answers ``{}``, no model) with the same batch settings."""
    return _archive(name, str(Path(__file__).with_name("floor_handler.py")), [], store, batch_size, delay, workers)


def _archive(name: str, handler: str, files: List[str], store: Path, batch_size: int, delay: int, workers: int) -> Path:
    """``torch-model-archiver`` with our batch settings, staged in a private TMPDIR, moved into ``store``."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tsvision-bench-archive-") as tmp:
        config = Path(tmp) / "model-config.yaml"
        values = model_config(Settings(task="classification"), batch_size, delay, workers)
        values.pop("handler")
        config.write_text(yaml.safe_dump(values, sort_keys=False))
        private_tmp = Path(tmp) / "archiver-tmp"
        private_tmp.mkdir()
        command = [str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", name, "--version", "1.0",
                   "--handler", handler, *files, "--config-file", str(config), "--export-path", tmp, "--force"]
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(private_tmp)})
        archive = store / f"{name}.mar"
        shutil.move(str(Path(tmp) / f"{name}.mar"), str(archive))
    return archive
