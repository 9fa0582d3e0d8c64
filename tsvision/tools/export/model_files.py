"""The files of an export: ``model.pt``, ``model.onnx`` (``model.pt2``), ``settings.json``, ``labels.json``,
``model-config.yaml`` and ``report.json`` (parity between the backends, parameters, FLOPs)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from tsvision.serving.runtimes import load_runtime
from tsvision.serving.settings import Settings
from tsvision.tools.command import UsageError
from tsvision.tools.export.exportable import Exportable, write_report
from tsvision.tools.export.torchvision_detectors import export_torchvision_files


def export_files(exportable: Exportable, out_dir: Path, tolerance: float = 1e-3, pt2: bool = False) -> dict:
    """Write TorchScript and ONNX (and with ``pt2`` an AOTInductor package) for ``exportable.module``,
    reload them, compare, report."""
    if exportable.settings.get("detection_format") == "torchvision":  # a whole torchvision detector
        if pt2:
            raise UsageError("--pt2 is not supported for whole torchvision detectors (detection_format torchvision)")
        return export_torchvision_files(exportable, out_dir, tolerance)
    out_dir.mkdir(parents=True, exist_ok=True)
    module, size = exportable.module, exportable.settings["input_size"]
    spatial = exportable.task == "segmentation"  # any height and width: resize_mode shorter_side keeps the aspect ratio
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 3, size, size, generator=generator)
    ts_path, onnx_path = out_dir / "model.pt", out_dir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.jit.trace(module, sample, check_trace=False).save(str(ts_path))
        export_onnx(module, sample, onnx_path, exportable.output_names, spatial)
    pt2_seconds = None
    if pt2:
        started = time.time()
        export_pt2(module, sample, out_dir / "model.pt2", spatial)
        pt2_seconds = round(time.time() - started, 1)
    # A segmenter is compared on a shape it was not traced with: its files must follow the input's size.
    parity = compare_backends(module, ts_path, onnx_path, torch.randn(3, 3, size, size + size // 3 if spatial else size,
                                                                      generator=generator),
                              out_dir / "model.pt2" if pt2 else None)
    return write_report(
        out_dir, exportable, tolerance,
        random_weights=exportable.random_weights,
        weights=exportable.weights,
        input=[None, 3, None, None] if spatial else [None, 3, size, size],
        outputs=exportable.output_names,
        parameters=sum(p.numel() for p in module.parameters()),
        flops_per_image=count_flops(module, size),
        max_abs_diff=parity,
        pt2_compile_seconds=pt2_seconds)


def dynamic_axes(spatial: bool = False) -> dict:
    """``torch.export``'s dynamic dimensions of the ``images`` input: the batch, and with ``spatial``
    the height and width too (a fully convolutional segmenter fed images of any aspect ratio)."""
    axes = {0: torch.export.Dim("batch", min=1, max=1024)}
    if spatial:
        axes.update({2: torch.export.Dim("height", min=32, max=16384), 3: torch.export.Dim("width", min=32, max=16384)})
    return axes


def export_onnx(module: torch.nn.Module, sample: torch.Tensor, path: Path, output_names: List[str],
                spatial: bool = False) -> None:
    torch.onnx.export(
        module, (sample,), str(path), input_names=["images"], output_names=output_names,
        dynamic_shapes=(dynamic_axes(spatial),), dynamo=True, verbose=False, external_data=False,
    )
    onnx.checker.check_model(str(path), full_check=True)


def export_pt2(module: torch.nn.Module, sample: torch.Tensor, path: Path, spatial: bool = False) -> None:
    """``torch.export`` with a dynamic batch axis (and with ``spatial`` height and width), compiled for
    this CPU by AOTInductor (needs a C++ compiler; a minute or more per model on 2 cores)."""
    import torch._inductor  # heavy (seconds to import): only for --pt2

    with torch.no_grad():
        program = torch.export.export(module, (sample,), dynamic_shapes=(dynamic_axes(spatial),))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))


def compare_backends(module: torch.nn.Module, ts_path: Path, onnx_path: Path, batch: torch.Tensor,
                     pt2_path: Optional[Path] = None) -> Dict[str, float]:
    """Largest absolute difference of every output between eager, TorchScript, ONNX Runtime (and the
    AOTInductor package)."""
    with torch.no_grad():
        eager = module(batch)
    eager = [t.numpy() for t in (eager if isinstance(eager, (tuple, list)) else [eager])]
    torchscript = load_runtime(ts_path).run(batch.numpy())
    onnx = load_runtime(onnx_path).run(batch.numpy())

    def diff(a, b):
        return float(max(np.abs(x - y).max() for x, y in zip(a, b)))

    diffs = {"torchscript_vs_eager": diff(torchscript, eager), "onnx_vs_eager": diff(onnx, eager),
             "onnx_vs_torchscript": diff(onnx, torchscript)}
    if pt2_path is not None:
        diffs["pt2_vs_eager"] = diff(load_runtime(pt2_path).run(batch.numpy()), eager)
    return diffs


def count_flops(module: torch.nn.Module, size: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def write_settings(exportable: Exportable, out_dir: Path, overrides: dict) -> Settings:
    out_dir.mkdir(parents=True, exist_ok=True)
    origin = ("random seeded weights" if exportable.random_weights
              else f"pretrained {exportable.weights}" if exportable.weights else "checkpoint")
    values = {"task": exportable.task, "labels": "labels.json" if exportable.labels else None,
              "random_weights": exportable.random_weights,
              "description": f"{exportable.architecture} ({origin})"}
    values.update(exportable.settings)
    values.update(overrides)
    settings = Settings.from_mapping(values)
    if exportable.labels:  # an embedding has none
        (out_dir / "labels.json").write_text(json.dumps(exportable.labels) + "\n")
    (out_dir / "settings.json").write_text(json.dumps(settings.to_mapping(), indent=2) + "\n")
    write_model_config(out_dir, settings)
    return settings


def write_model_config(out_dir: Path, settings: Settings) -> Path:
    """``model-config.yaml`` beside ``settings.json``, for ``torch-model-archiver --config-file``: what
    ``tsvision archive`` writes (its batch size, delay, workers, timeout and ``handler:`` section)."""
    path = out_dir / "model-config.yaml"
    path.write_text(yaml.safe_dump(model_config(settings), sort_keys=False))
    return path


# ``tsvision archive``'s defaults (docs/performance.md, "Workers and batch size"): two workers of batch 4 overlap
# one batch's reading and answering with the other's model run; the best measured for every task on 2 cores.
DEFAULT_WORKERS = 2
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_BATCH_DELAY = 20


def model_config(settings: Settings, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_batch_delay: int = DEFAULT_MAX_BATCH_DELAY, workers: int = DEFAULT_WORKERS) -> dict:
    """An archive's ``model-config.yaml``: TorchServe's batching, workers and timeout, and the
    ``handler:`` section (the defaults are ``tsvision archive``'s)."""
    return {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": batch_size,
        "maxBatchDelay": max_batch_delay,
        "responseTimeout": 120,
        "handler": settings.to_mapping(),
    }
