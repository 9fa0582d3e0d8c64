"""One protocol for every backend: ``load_runtime(path).run(batch) -> list of arrays``.

The backend is chosen by the file: ``.pt``/``.ts`` TorchScript, ``.onnx`` ONNX Runtime, ``.pt2`` a
``torch.export`` program compiled ahead of time by AOTInductor (TorchScript's successor).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Protocol

import numpy as np


class Runtime(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        """Run one forward pass on a float32 N×3×H×W batch; return the outputs in order."""


class TorchScriptRuntime:
    name = "torchscript"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import torch
        import warnings

        if threads > 0:
            torch.set_num_threads(threads)
        # No fusion specialisations: by default the profiling executor compiles fused kernels for
        # every new batch size, about 1.3 s a time on these CPUs, several times per size: served
        # with batch sizes 1..8 that is half a minute of stalls. Without them it is as fast.
        torch.jit.set_fusion_strategy([("STATIC", 0), ("DYNAMIC", 0)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._module = torch.jit.load(str(path), map_location="cpu").eval()
        self._torch = torch

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        with self._torch.inference_mode():
            outputs = self._module(self._torch.from_numpy(batch))
        return [t.numpy() for t in _flatten(outputs)]


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would spin after each run, taking the cores the next batch's image
        # decoding needs (measured: 25% less classification throughput on 2 cores with spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads > 0:
            options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        return self._session.run(None, {self._input: batch})


class Pt2Runtime:
    """An AOTInductor package (``torch._inductor.aoti_compile_and_package``): native CPU code
    compiled at export time, loaded without TorchScript."""

    name = "pt2"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import torch
        import torch._inductor

        if threads > 0:
            torch.set_num_threads(threads)
        self._model = torch._inductor.aoti_load_package(str(path))
        self._torch = torch

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        with self._torch.inference_mode():
            outputs = self._model(self._torch.from_numpy(batch))
        return [t.numpy() for t in _flatten(outputs)]


RUNTIMES = {".pt": TorchScriptRuntime, ".ts": TorchScriptRuntime, ".onnx": OnnxRuntime, ".pt2": Pt2Runtime}


def load_runtime(path: Path, threads: int = 0) -> Runtime:
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIMES:
        raise ValueError(f"cannot tell the backend of {path}: expected one of {sorted(RUNTIMES)}")
    return RUNTIMES[suffix](Path(path), threads)


def _flatten(outputs) -> list:
    """TorchScript modules may return a tensor, a tuple/list, or a dict of tensors."""
    if isinstance(outputs, dict):
        return [t for value in outputs.values() for t in _flatten(value)]
    if isinstance(outputs, (list, tuple)):
        return [t for value in outputs for t in _flatten(value)]
    return [outputs]
