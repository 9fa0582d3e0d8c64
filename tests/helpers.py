"""Helpers every tier uses: image bytes, scikit-image photos, the repository's path, concurrent requests,
a runtime of fixed outputs, the toy scenes' sizes and the format toys' box check."""

from __future__ import annotations

import io
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Sequence, TypeVar

import numpy as np
import skimage.data
from filelock import FileLock
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
R = TypeVar("R")


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    """The image as JPEG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    """The image as PNG bytes (lossless: what the toys' pixel-exact checks send)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def photo(name: str, side: int = 0) -> Image.Image:
    """scikit-image's photo ``name`` as RGB; with ``side``, resized to side×side (bilinear)."""
    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return image.resize((side, side), Image.BILINEAR) if side else image


def all_at_once(send: Callable[[T], R], items: Sequence[T]) -> List[R]:
    """``send(item)`` for every item from its own thread, all released at the same instant (so that
    TorchServe can put them in one batch); the results in the items' order."""
    barrier = threading.Barrier(len(items))

    def released(item: T) -> R:
        barrier.wait()
        return send(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(released, items))


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """``build(folder)`` once per test run, and the folder. Session fixtures live once per process:
    under pytest-xdist (``bash run.sh test`` runs two workers) the worker that asks first builds,
    holding a file lock, and the other waits for it and reuses the folder; a build that failed half
    way is started again from an empty folder by the next one to ask."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    folder, done = root / f"built-{name}", root / f"built-{name}.done"
    with FileLock(str(root / f"built-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


class FixedOutputs:
    """A runtime that answers every image of a batch with the same outputs: hand-built model outputs
    whose right answer is known (NMS cases, a format's decoding)."""

    name, device, fixed_batch = "fixed", "cpu", None

    def __init__(self, *outputs: np.ndarray) -> None:
        self.outputs = outputs

    def run(self, batch: Sequence) -> List[np.ndarray]:
        return [np.repeat(o[None], len(batch), axis=0) for o in self.outputs]


# -- what the fixtures build (tests/conftest.py) and the tests read ----------------------------------
TASKS = ("classification", "segmentation", "detection")
BACKENDS = {"torchscript": "model.pt", "onnx": "model.onnx"}
AB_MODEL = "ab_classifier"
# Archive arguments for tests that start, measure or kill exactly one worker (the default is two).
ONE_WORKER = ("--workers", "1")
AB_TOP_K = {"1.0": 5, "2.0": 3, "3.0": 1}  # the length of an answer tells which version answered
EXAMPLE_HANDLER = REPO / "examples" / "handlers" / "people_counter.py"
TOY_INPUT_SIZE = 640
TOY_SETTINGS = {
    "detection": {"input_size": TOY_INPUT_SIZE, "mean": [0, 0, 0], "std": [1, 1, 1], "background_index": 0,
                  "score_threshold": 0.5, "resize_mode": "letterbox"},
    "segmentation": {"input_size": TOY_INPUT_SIZE, "mean": [0, 0, 0], "std": [1, 1, 1], "resize_mode": "stretch"},
}
SCENES = [(333, 777), (1280, 720)]  # width × height of the toys' bright_box_scene (tests/scenes.py), both tiers
FORMAT_SIZE = 640  # the detector-layout toys' input: 1280×720 -> scale 1/2, one input pixel is two original pixels
FORMAT_OUTPUTS = {"yolov8": ["output0"], "yolov5": ["output0"], "yolo_nms": ["output0"], "rtdetr": ["output0"],
                  "detr": ["pred_logits", "pred_boxes"]}
# What a user sets for each family's toy (the rest are the format's defaults).
FORMAT_SETTINGS = {fmt: {"input_size": FORMAT_SIZE, "score_threshold": 0.5} for fmt in FORMAT_OUTPUTS}
FORMAT_SETTINGS["detr"].update(mean=[0, 0, 0], std=[1, 1, 1])  # the toy thresholds raw pixels in [0, 1]


def load_task(folder: Path, backend: str, **overrides):
    """A task in-process from an export folder's files (settings.json or the toy settings)."""
    from tsvision.serving.settings import Settings
    from tsvision.serving.tasks import build_task, load_export

    if (folder / "settings.json").exists():
        return load_export(folder, BACKENDS[backend], **overrides)
    values = {"task": folder.name, "labels": "labels.json", **TOY_SETTINGS[folder.name], **overrides}
    return build_task(folder / BACKENDS[backend], Settings.from_mapping(values), folder)


def assert_box_on_rectangle(answer: list, truth: Sequence[float], *context: object) -> None:
    """A detector-layout toy's answer: one detection, the bright rectangle, its box within 1 px of
    ``truth`` (``context`` names the case in a failure)."""
    assert len(answer) == 1 and answer[0]["label"] == "bright rectangle", (*context, answer)
    error = np.abs(np.subtract(answer[0]["box"], truth)).max()
    assert error <= 1.0, (*context, answer[0]["box"], truth)
