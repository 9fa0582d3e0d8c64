"""One protocol for every backend: ``load_runtime(path).run(batch) -> list of arrays``.

The backend is chosen by the file: ``.pt``/``.ts`` TorchScript, ``.onnx`` ONNX Runtime, ``.pt2`` a
``torch.export`` program compiled ahead of time by AOTInductor (TorchScript's successor).
``device`` is ``"cpu"`` or ``"cuda:N"`` (the GPU TorchServe assigned the worker); a GPU is used
only where the backend can use it here, and ``runtime.device`` says what was chosen.

``runtime.fixed_batch`` is the batch size a model was exported with when it accepts no other
(an ONNX input whose dim 0 is a number), else ``None``. Such a model still answers any batch:
``run`` feeds it chunks of that size, padding the last chunk and dropping the padded outputs.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, List, Optional, Protocol

import numpy as np


class Runtime(Protocol):
    name: str
    device: str
    fixed_batch: Optional[int]

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        """Run one forward pass on a float32 N×3×H×W batch; return the outputs in order."""

    def run_images(self, images: List[np.ndarray]) -> List[List[np.ndarray]]:
        """Run a model that takes a list of 3×H×W float32 images (a torchvision detector; the sizes
        may differ); return each image's outputs in order."""


def pick_device(gpu_id: Optional[int]) -> str:
    """``cuda:<gpu_id>`` when TorchServe assigned a GPU and torch can use it, else ``cpu``."""
    if gpu_id is None:
        return "cpu"
    import torch

    return f"cuda:{int(gpu_id)}" if torch.cuda.is_available() else "cpu"


class _TorchRuntime:
    """What TorchScript and AOTInductor share: torch threads, the device, tensors in and out."""

    name = "torch"
    fixed_batch: Optional[int] = None  # TorchScript and pt2 carry no batch size to read

    def __init__(self, threads: int, device: str) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self.device = device

    def _call(self, inputs):
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        with self._torch.inference_mode():
            outputs = self._call(self._torch.from_numpy(batch).to(self.device))
        return [t.cpu().numpy() for t in _flatten(outputs)]

    def run_images(self, images: List[np.ndarray]) -> List[List[np.ndarray]]:
        """One call with a list of 3×H×W float32 images (sizes may differ), for models
        that take a list (torchvision detectors): per image, its outputs (a dict in key order
        sorted by name, e.g. boxes, labels, scores). A ``(losses, detections)`` tuple gives
        the detections."""
        torch = self._torch
        with torch.inference_mode():
            outputs = self._call([torch.from_numpy(image).to(self.device) for image in images])
        if isinstance(outputs, tuple) and len(outputs) == 2 and isinstance(outputs[1], list):
            outputs = outputs[1]  # scripted torchvision detectors return (losses, detections)
        return [[t.cpu().numpy() for t in _flatten({k: out[k] for k in sorted(out)} if isinstance(out, dict) else out)]
                for out in outputs]


class TorchScriptRuntime(_TorchRuntime):
    name = "torchscript"

    def __init__(self, path: Path, threads: int = 0, device: str = "cpu") -> None:
        super().__init__(threads, device)
        # No fusion specialisations: by default the profiling executor compiles fused kernels for
        # every new batch size, stalling the first requests of each size (docs/performance.md).
        self._torch.jit.set_fusion_strategy([("STATIC", 0), ("DYNAMIC", 0)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._module = self._torch.jit.load(str(path), map_location=device).eval()

    def _call(self, inputs):
        return self._module(inputs)

    @property
    def module(self):
        """The scripted module itself, for what needs its gradients (explanations: ``attribution``)."""
        return self._module


class Pt2Runtime(_TorchRuntime):
    """An AOTInductor package (``torch._inductor.aoti_compile_and_package``): native code compiled
    at export time for one device kind, loaded without TorchScript."""

    name = "pt2"

    def __init__(self, path: Path, threads: int = 0, device: str = "cpu") -> None:
        import torch._inductor

        super().__init__(threads, device)
        index = int(device.split(":")[1]) if device.startswith("cuda:") else -1
        self._model = torch._inductor.aoti_load_package(str(path), device_index=index)

    def _call(self, inputs):
        return self._model(inputs)


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path: Path, threads: int = 0, device: str = "cpu", spinning: str = "run",
                 graph: Optional[bytes] = None) -> None:
        """``graph``: a serialised graph to run instead of the file's (a format's ``faster_graph``)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ``spinning`` (the setting): "run" lets idle intra-op threads busy-wait between a run's operators
        # (YOLOv8n 46 -> 42 ms, classification at batch 8 8.7 -> 6.6 ms) and stops them when the run ends,
        # so they do not take the cores the next batch's image decoding needs; "never" was the default
        # before 2026-12-03; "always" is ONNX Runtime's own (figures in docs/performance.md).
        if spinning == "never":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif spinning == "run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads > 0:
            options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        # The CUDA provider comes with the onnxruntime-gpu package; plain onnxruntime runs on the CPU.
        if device.startswith("cuda:") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}))
        self._session = onnxruntime.InferenceSession(graph if graph is not None else str(path), options,
                                                     providers=providers)
        self.device = device if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        model_input = self._session.get_inputs()[0]
        self._input = model_input.name
        # dim 0 is a number when the model was exported without a dynamic batch axis (a plain
        # torch.onnx.export of a 1×3×H×W sample): it accepts that many images and no other count.
        # A rank-3 input is one 3×H×W image (a torchvision detector's ONNX): it has no batch axis.
        first = model_input.shape[0] if model_input.shape and len(model_input.shape) == 4 else None
        self.fixed_batch: Optional[int] = first if isinstance(first, int) and first > 0 else None

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        if self.fixed_batch is None or len(batch) == self.fixed_batch:
            return self._session.run(None, {self._input: batch})
        return run_in_chunks(lambda chunk: self._session.run(None, {self._input: chunk}), batch, self.fixed_batch)

    def run_images(self, images: List[np.ndarray]) -> List[List[np.ndarray]]:
        """For graphs that take ONE 3×H×W image (torchvision detectors exported to ONNX; batches
        are unsupported there): one call per image, its outputs in the graph's order."""
        return [self._session.run(None, {self._input: image}) for image in images]


RUNTIMES = {".pt": TorchScriptRuntime, ".ts": TorchScriptRuntime, ".onnx": OnnxRuntime, ".pt2": Pt2Runtime}


class Streams:
    """``count`` runs of one model at once (kept as ``streams``): each batch (or list of images) is
    split into ``count`` parts, run side by side on threads (ONNX Runtime and torch release the GIL) and
    joined again in order. ``load_runtime`` gave the wrapped runtime ``threads / count`` intra-op threads, so the runs
    share the cores instead of one run's threads waiting on each other. Everything else (``name``,
    ``device``, ``fixed_batch``, a TorchScript ``module``) is the wrapped runtime's."""

    def __init__(self, runtime: Runtime, count: int) -> None:
        self.runtime, self.streams = runtime, count
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="tsvision-stream")

    def __getattr__(self, name: str) -> Any:
        if name == "runtime":  # not set yet (a half-built object): no recursion
            raise AttributeError(name)
        return getattr(self.runtime, name)

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        parts = split_evenly(len(batch), self.streams, self.runtime.fixed_batch or 1)
        if len(parts) < 2:
            return self.runtime.run(batch)
        results = list(self._pool.map(lambda part: self.runtime.run(batch[part]), parts))
        return [np.concatenate(outputs) for outputs in zip(*results)]

    def run_images(self, images: List[np.ndarray]) -> List[List[np.ndarray]]:
        parts = split_evenly(len(images), self.streams)
        if len(parts) < 2:
            return self.runtime.run_images(images)
        results = self._pool.map(lambda part: self.runtime.run_images(images[part]), parts)
        return [outputs for result in results for outputs in result]


def split_evenly(count: int, parts: int, unit: int = 1) -> List[slice]:
    """``count`` items as at most ``parts`` consecutive slices of near-equal size, each a multiple of
    ``unit`` items but the last (a model's fixed batch size: no more padded chunks than one run)."""
    units = -(-count // unit)
    step = -(-units // max(1, parts)) * unit
    return [slice(start, min(start + step, count)) for start in range(0, count, max(1, step))]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_runtime(path: Path, threads: int = 0, device: str = "cpu", spinning: str = "run",
                 streams: int = 1, graph: Optional[bytes] = None) -> Runtime:
    """The runtime for the model file ``path`` (by its suffix). ``threads``: intra-op threads in all
    (0: the runtime's default, one per core); ``streams`` > 1: that many runs at once (``Streams``),
    each with its share of the threads, never more runs than threads; ``graph``: ONNX only, the
    serialised graph to run in place of the file's (a format's ``faster_graph``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIMES:
        raise ValueError(f"cannot tell the backend of {path}: expected one of {sorted(RUNTIMES)}")
    if streams > 1:
        total = threads if threads > 0 else available_cores()
        streams = min(streams, total)
        threads = total // streams if streams > 1 else threads
    if RUNTIMES[suffix] is OnnxRuntime:
        runtime: Runtime = OnnxRuntime(Path(path), threads, device, spinning, graph)
    else:
        runtime = RUNTIMES[suffix](Path(path), threads, device)  # torch's threads do not spin between runs
    return Streams(runtime, streams) if streams > 1 else runtime


def run_in_chunks(run, batch: np.ndarray, size: int) -> List[np.ndarray]:
    """``run`` on chunks of exactly ``size`` images (the last one padded with copies of its last
    image), the outputs concatenated along the batch axis without the padded rows."""
    pieces: List[List[np.ndarray]] = []
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        live = len(chunk)
        if live < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - live, axis=0)])
        pieces.append([output[:live] for output in run(np.ascontiguousarray(chunk))])
    return [np.concatenate(parts) for parts in zip(*pieces)]


def _flatten(outputs) -> list:
    """TorchScript modules may return a tensor, a tuple/list, or a dict of tensors."""
    if isinstance(outputs, dict):
        return [t for value in outputs.values() for t in _flatten(value)]
    if isinstance(outputs, (list, tuple)):
        return [t for value in outputs for t in _flatten(value)]
    return [outputs]
