"""The benchmarked models: our exports and archives, and the same weights for TorchServe's stock handlers.

Ours go through the public ``tsvision`` command (``tsvision export``, ``tsvision archive``), as a
user builds them. The stock handlers expect a TorchScript in torchvision's own output form, built
here from the same seeded weights (``build_exportable``, the model ``tsvision export`` exports):

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
from typing import Dict, List, Optional

import torch
import yaml
from torch import nn

from tsvision.tools.export.architectures import build_exportable
from tsvision.tools.export.exportable import Exportable

STOCK_HANDLERS = {"classification": "image_classifier", "segmentation": "image_segmenter",
                  "detection": "object_detector"}
MODEL_FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "pt2": "model.pt2"}
TSVISION = str(Path(sys.executable).with_name("tsvision"))


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


def tsvision(*args: str) -> None:
    """Run the ``tsvision`` command; its one-line error becomes the exception's message."""
    done = subprocess.run([TSVISION, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tsvision {args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def export(task: str, folder: Path, *flags: str) -> None:
    """``tsvision export --task TASK --out FOLDER [flags]``: random seeded weights, as archive.sh exports."""
    tsvision("export", "--task", task, "--out", str(folder), *flags)


def prepare_exports(task: str, root: Path, fresh: bool = False, pt2: bool = False) -> Path:
    """Export ``task``'s default model (random seeded weights; with ``pt2`` also the AOTInductor
    package) and, where TorchServe has one, its stock-handler TorchScript into ``root/task`` once;
    later runs reuse the files unless ``fresh``."""
    folder = root / task
    stock = task in STOCK_HANDLERS  # TorchServe has no stock handler for instance segmentation or keypoints
    names = ["model.pt", "model.onnx", "settings.json", "labels.json"]
    names += (["stock.pt"] if stock else []) + (["model.pt2"] if pt2 else [])
    if not fresh and all((folder / name).exists() for name in names):
        return folder
    export(task, folder, *(["--pt2"] if pt2 else []))
    if stock:  # the same seed (tsvision export's default, 0) gives the same weights
        exportable = build_exportable(task)
        size = exportable.settings["input_size"]
        stock_module(exportable, torch.zeros(1, 3, size, size)).save(str(folder / "stock.pt"))
    return folder


def build_ours(folder: Path, backend: str, name: str, store: Path, batch_size: int, delay: int, workers: int,
               overrides: Optional[Dict[str, object]] = None) -> Path:
    """``tsvision archive`` of ``folder``'s export (``backend``: a key of ``MODEL_FILES`` or a file name in
    ``folder``) with these batch settings and ``--set`` overrides."""
    sets = [arg for key, value in (overrides or {}).items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    tsvision("archive", "--model", str(folder / MODEL_FILES.get(backend, backend)),
             "--settings", str(folder / "settings.json"), "--labels", str(folder / "labels.json"),
             "--name", name, "--store", str(store), "--batch-size", str(batch_size),
             "--max-batch-delay", str(delay), "--workers", str(workers), *sets)
    return store / f"{name}.mar"


# The stock handlers run at their best measured configuration, one worker of batch 8, not at our archives'
# default of two workers of batch 4: the stock handler sets no thread count, so each of two workers runs one
# OpenMP thread per core, and on 2 cores its classifier fell from 99.9 to 7.1 req/s at 32 clients
# (2026-12-04, docs/performance.md "Workers and batch size").
STOCK_WORKERS = 1
STOCK_BATCH_SIZE = 8


def build_stock(folder: Path, task: str, name: str, store: Path, batch_size: int, delay: int, workers: int) -> Path:
    """A stock-handler archive: the TorchScript, ``index_to_name.json`` and these batch settings (the bench
    passes ``STOCK_BATCH_SIZE`` and ``STOCK_WORKERS``)."""
    labels = json.loads((folder / "labels.json").read_text())
    with tempfile.TemporaryDirectory(prefix="tsvision-stock-") as tmp:
        mapping = Path(tmp) / "index_to_name.json"
        mapping.write_text(json.dumps({str(i): name for i, name in enumerate(labels)}))
        return archive_handler(name, STOCK_HANDLERS[task], ["--serialized-file", str(folder / "stock.pt"),
                                                            "--extra-files", str(mapping)],
                               store, batch_size, delay, workers)


def build_floor(name: str, store: Path, batch_size: int, delay: int, workers: int) -> Path:
    """An archive of ``floor_handler.py`` (answers ``{}``, no model) with the same batch settings."""
    return archive_handler(name, str(Path(__file__).with_name("floor_handler.py")), [], store, batch_size, delay,
                           workers)


def archive_handler(name: str, handler: str, files: List[str], store: Path, batch_size: int, delay: int,
                    workers: int) -> Path:
    """``torch-model-archiver`` of any handler with our batch settings (the model-config.yaml ``tsvision
    archive`` writes, without its handler section), staged in a private TMPDIR, moved into ``store``."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tsvision-bench-archive-") as tmp:
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump({"minWorkers": workers, "maxWorkers": workers, "batchSize": batch_size,
                                          "maxBatchDelay": delay, "responseTimeout": 120}, sort_keys=False))
        private_tmp = Path(tmp) / "archiver-tmp"
        private_tmp.mkdir()
        command = [str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", name,
                   "--version", "1.0", "--handler", handler, *files, "--config-file", str(config),
                   "--export-path", tmp, "--force"]
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(private_tmp)})
        archive = store / f"{name}.mar"
        shutil.move(str(Path(tmp) / f"{name}.mar"), str(archive))
    return archive
