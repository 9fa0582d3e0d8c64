"""YOLO models through ultralytics' own ONNX exporter (export time only; needs ``ultralytics``).

    tsvision export --task detection --arch yolov8n [--checkpoint best.pt] [--out DIR]

``--arch`` names an ultralytics model config (``yolov8n``, ``yolo11n``, ``yolov8n-seg``,
``yolov8n-pose``, ...; the ``.yaml`` is optional). Without ``--checkpoint`` the model is built
from that config with seeded RANDOM weights and conditioned (``condition_random_yolo``); with
a checkpoint (an ultralytics ``.pt`` such as ``runs/detect/train/weights/best.pt``) its trained
weights and class names are used. The file is written by ``YOLO.export(format="onnx")`` exactly
as a YOLO user would write it (dynamic batch and image size, ``names`` in the ONNX metadata),
then checked: ONNX Runtime against the eager model on a seeded image.

Writes ``model.onnx``, ``labels.json``, ``settings.json``, ``model-config.yaml`` (for
``torch-model-archiver --config-file``) and ``report.json`` into ``--out``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import onnx
import torch
import yaml
from PIL import Image
from torch import nn

from tsvision.serving import formats
from tsvision.serving.geometry import YOLO_FILL, fit_square
from tsvision.serving.runtimes import load_runtime
from tsvision.serving.settings import Settings
from tsvision.serving.tasks.keypoints import named_keypoints
from tsvision.tools.export.calibration import LOGIT_SPREAD, calibration_images, recompute_batchnorm
from tsvision.tools.export.model_files import write_model_config

# Random weights: these COCO classes are made to stand out (their scores spread over (0, 1));
# every other class scores near 0. ultralytics' default confidence is 0.25.
RANDOM_WEIGHTS_CLASSES = (0, 2, 16)  # person, car, dog
CALIBRATION_KEEP = 6  # anchors per conditioned class above the threshold in the most responsive calibration image
SCORE_THRESHOLD = 0.25
# ultralytics task -> (tsvision task, detection_format): the formats' records say (Format.ultralytics_task)
ULTRALYTICS_TASKS = formats.ultralytics_tasks()


def is_ultralytics_config(architecture: Optional[str]) -> bool:
    """``yolov8n``, ``yolo11s-seg.yaml``, ``yolov5nu``...: a name ultralytics builds from its configs."""
    return bool(architecture) and architecture.lower().startswith(("yolov", "yolo1", "yolo2"))


def _offline() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network (no downloads here)


@contextlib.contextmanager
def quiet_ultralytics() -> Iterator[None]:
    """Keep ultralytics' banner and per-step export log off stdout (its ``LOGGER`` at WARNING; its
    warnings still show)."""
    from ultralytics.utils import LOGGER  # optional: ultralytics, for its architectures only

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def build_yolo(architecture: str, checkpoint: Optional[Path], seed: int):
    """An ultralytics ``YOLO``: trained from ``checkpoint``, or built from the config with seeded
    random weights (conditioned)."""
    _offline()
    from ultralytics import YOLO  # optional: ultralytics, for its architectures only

    if checkpoint is not None:
        return YOLO(str(checkpoint))
    config = architecture if architecture.endswith(".yaml") else architecture + ".yaml"
    torch.manual_seed(seed)
    yolo = YOLO(config)
    condition_random_yolo(yolo.model, seed)
    names = coco_names(len(yolo.model.names), yolo.task)
    if names:  # a config-built model is named "0".."79": give it the dataset's names its head was sized for
        yolo.model.names = dict(enumerate(names))
    return yolo


def coco_names(classes: int, task: str) -> Optional[List[str]]:
    """COCO's class names from ultralytics' own dataset file (coco-pose.yaml for pose models), when
    ``classes`` matches it; else None."""
    from ultralytics.utils import ROOT  # optional: ultralytics, for its architectures only

    path = ROOT / "cfg" / "datasets" / ("coco-pose.yaml" if task == "pose" else "coco.yaml")
    names = yaml.safe_load(path.read_text()).get("names", {}) if path.is_file() else {}
    return [str(names[i]) for i in range(classes)] if len(names) == classes else None


def letterboxed(image: torch.Tensor, size: int) -> torch.Tensor:
    """A 3×H×W image in [0, 1] as a YOLO model sees it: 1×3×size×size, letterboxed on grey 114."""

    pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    array, _ = fit_square(Image.fromarray(pixels), size, "letterbox_center", YOLO_FILL)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].float() / 255


def condition_random_yolo(model: nn.Module, seed: int, size: int = 640) -> None:
    """Make a randomly initialised YOLO's answers well separated (it still knows nothing):

    1. BatchNorm statistics are recomputed on seeded noise (random weights otherwise shrink the
       activations layer by layer), as the torchvision exports do.
    2. In the head's last class convolution of every scale, the logits of ``RANDOM_WEIGHTS_CLASSES``
       are rescaled to standard deviation ``LOGIT_SPREAD`` over the anchors of the calibration
       images (``tools/export/calibration.py``), scale by scale, and shifted so that the most responsive
       image has ``CALIBRATION_KEEP`` anchors of each class above ``SCORE_THRESHOLD`` (the boxes
       this gives on scikit-image's photos: docs/models.md). The other classes' weights are zeroed and their bias set
       to -12 (sigmoid 6e-6), so ties and near-ties among untrained classes cannot decide anything.
    3. A pose head's keypoint convolutions (``cv4``) are standardised the same way, channel by
       channel: x and y offsets to standard deviation 1 (keypoints land within a few strides of
       their anchor instead of far outside the image), visibility logits to ``LOGIT_SPREAD``.
    """
    head = model.model[-1]
    convs = [branch[-1] for branch in head.cv3]
    recompute_batchnorm(model, seed, (2, 3, size, size), steps=3)
    seen: List[torch.Tensor] = []
    hooks = [conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach())) for conv in convs]
    keypoint_convs = [branch[-1] for branch in getattr(head, "cv4", [])] if hasattr(head, "kpt_shape") else []
    keypoint_seen: List[torch.Tensor] = []
    hooks += [conv.register_forward_hook(lambda _m, _i,
                                         out: keypoint_seen.append(out.detach())) for conv in keypoint_convs]
    try:
        with torch.no_grad():
            for image in calibration_images(seed)[0]:
                model(letterboxed(image, size))
    finally:
        for hook in hooks:
            hook.remove()
    per_image = [seen[i:i + len(convs)] for i in range(0, len(seen), len(convs))]
    at_threshold = float(np.log(SCORE_THRESHOLD / (1 - SCORE_THRESHOLD)))
    classes = [c for c in RANDOM_WEIGHTS_CLASSES if c < convs[0].out_channels]
    with torch.no_grad():
        for c in classes:
            # each scale standardised on its own (their raw spreads differ by orders of magnitude)
            standardised = [[] for _ in per_image]
            for level, conv in enumerate(convs):
                values = [outs[level][:, c].flatten() for outs in per_image]
                mean, std = float(torch.cat(values).mean()), float(torch.cat(values).std()) or 1.0
                conv.weight[c] *= LOGIT_SPREAD / std
                conv.bias[c] = (conv.bias[c] - mean) * LOGIT_SPREAD / std
                for image, value in zip(standardised, values):
                    image.append((value - mean) * LOGIT_SPREAD / std)
            # the most responsive calibration image has CALIBRATION_KEEP anchors of this class above
            # the threshold (random networks respond very unevenly: most photos get fewer or none)
            kth = max(float(torch.topk(torch.cat(image), CALIBRATION_KEEP).values[-1]) for image in standardised)
            for conv in convs:
                conv.bias[c] += at_threshold - kth
        for conv in convs:
            others = [c for c in range(conv.out_channels) if c not in classes]
            conv.weight[others] = 0.0
            conv.bias[others] = -12.0
        for level, conv in enumerate(keypoint_convs):
            values = torch.cat([keypoint_seen[i] for i in range(level, len(keypoint_seen), len(keypoint_convs))])
            mean, std = values.mean(dim=(0, 2, 3)), values.std(dim=(0, 2, 3)).clamp_min(1e-12)
            spread = torch.ones_like(std)
            if head.kpt_shape[1] == 3:
                spread[2::3] = LOGIT_SPREAD  # visibility logits
            conv.weight *= (spread / std)[:, None, None, None]
            conv.bias.copy_((conv.bias - mean) * spread / std)


def onnx_metadata(path: Path) -> Dict[str, str]:
    """The ``metadata_props`` of an ONNX file (ultralytics writes names, imgsz, task, stride...)."""
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def labels_from_metadata(metadata: Dict[str, str]) -> Optional[List[str]]:
    """Class names from ultralytics' ``names`` metadata (a Python dict literal {0: 'person', ...})."""
    text = metadata.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        size = max(int(k) for k in names) + 1 if names else 0
        return [str(names.get(i, i)) for i in range(size)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def settings_from_metadata(metadata: Dict[str, str]) -> dict:
    """Handler settings an ultralytics ONNX file implies: the task and format from ``task`` (a
    detector exported with ``nms=True``, or an end-to-end one such as YOLOv10/YOLO26, is ``yolo_nms``),
    and ``input_size`` from ``imgsz`` (square only)."""
    settings: dict = {}
    task = ULTRALYTICS_TASKS.get(metadata.get("task", ""))
    if task is not None:
        settings["task"], settings["detection_format"] = task
        if metadata.get("task") == "detect" and suppresses_in_graph(metadata):
            settings["detection_format"] = "yolo_nms"
    try:
        imgsz = ast.literal_eval(metadata.get("imgsz", ""))
    except (ValueError, SyntaxError):
        imgsz = None
    if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and imgsz[0] == imgsz[1]:
        settings["input_size"] = int(imgsz[0])
    return settings


def suppresses_in_graph(metadata: Dict[str, str]) -> bool:
    """Whether the ONNX graph already ran NMS: ultralytics writes ``end2end: True`` for end-to-end heads
    (YOLOv10, YOLO26) and ``'nms': True`` in ``args`` for ``export(nms=True)``; both output N×300×6."""
    if metadata.get("end2end", "").strip().lower() == "true":
        return True
    try:
        args = ast.literal_eval(metadata.get("args", ""))
    except (ValueError, SyntaxError):
        return False
    return isinstance(args, dict) and args.get("nms") is True


def export_yolo(architecture: str, out_dir: Path, checkpoint: Optional[Path] = None, seed: int = 0,
                imgsz: int = 640, tolerance: float = 1e-3) -> dict:
    """Build (``build_yolo``), export with ultralytics, check with ONNX Runtime, write the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        # ultralytics writes the .onnx beside the model file (the cwd for a config, the checkpoint's
        # folder for a .pt, where it would replace the user's own best.onnx): both happen in scratch
        if checkpoint is not None:
            checkpoint = Path(shutil.copy2(checkpoint, Path(scratch) / Path(checkpoint).name))
        here = os.getcwd()
        os.chdir(scratch)
        try:
            with quiet_ultralytics():
                yolo = build_yolo(architecture, checkpoint, seed)
                if yolo.task not in ULTRALYTICS_TASKS:
                    raise ValueError(f"{architecture}: ultralytics task {yolo.task!r} is not served by tsvision yet "
                                     f"(served: {sorted(ULTRALYTICS_TASKS)})")
                written = yolo.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=False, verbose=False)
        finally:
            os.chdir(here)
        shutil.move(str(Path(scratch) / written), out_dir / "model.onnx")
    ultralytics_task = yolo.task
    export_seconds = round(time.time() - started, 1)
    metadata = onnx_metadata(out_dir / "model.onnx")
    labels = labels_from_metadata(metadata) or [str(i) for i in range(len(yolo.names))]
    task, fmt = ULTRALYTICS_TASKS[ultralytics_task]
    random_weights = checkpoint is None
    settings = {"task": task, "detection_format": fmt, "input_size": imgsz, "labels": "labels.json",
                "random_weights": random_weights,
                "description": f"{Path(architecture).stem} via ultralytics "
                               f"({'random seeded weights' if random_weights else 'checkpoint'})"}
    if task == "keypoints":  # the names and edges go into the settings, so the archive carries them
        settings.update(named_keypoints(int(ast.literal_eval(metadata.get("kpt_shape", "[17, 3]"))[0])))
    photos, calibration = calibration_images(seed)
    difference, shapes = onnx_vs_eager(yolo.model, out_dir / "model.onnx", letterboxed(photos[0], imgsz))
    report = {
        "task": task,
        "architecture": Path(architecture).stem,
        "exporter": "ultralytics",
        "detection_format": fmt,
        "random_weights": random_weights,
        "input": ["batch", 3, "height", "width"],
        "outputs": shapes,
        "onnx_metadata": {k: v for k, v in metadata.items() if k != "names"},
        "parameters": sum(p.numel() for p in yolo.model.parameters()),
        "files": ["model.onnx"],
        "export_seconds": export_seconds,
        "conditioned_on": calibration if random_weights else None,
        "max_abs_diff": {"onnx_vs_eager": difference},
        "tolerance": tolerance,
        "ok": difference <= tolerance,
    }
    (out_dir / "labels.json").write_text(json.dumps(labels) + "\n")
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    write_model_config(out_dir, Settings.from_mapping(settings))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def onnx_vs_eager(model: nn.Module, onnx_path: Path, images: torch.Tensor) -> Tuple[float, List[List[int]]]:
    """Largest difference of the first output (the detections) between ONNX Runtime and the eager
    model, box (and pose keypoint) coordinates as a fraction of the image side (as for the
    torchvision detectors), and the ONNX output shapes. A segmentation model's mask coefficients
    and prototypes (second output) are compared relative to their largest magnitude (random ones
    reach the hundreds)."""
    with torch.no_grad():
        eager = model.eval()(images)
    eager = eager[0] if isinstance(eager, (list, tuple)) else eager
    protos = None
    if isinstance(eager, (list, tuple)):  # segment: ((detections, protos), raw predictions)
        eager, protos = eager[0], eager[1]
    outputs = load_runtime(onnx_path).run(images.numpy())
    difference = np.abs(outputs[0] - eager.numpy())
    difference[:, pixel_rows(model)] /= images.shape[-1]
    if protos is not None:  # mask coefficients and prototypes: relative to their largest magnitude
        coefficients = eager.numpy()[:, -protos.shape[1]:]
        difference[:, -protos.shape[1]:] /= max(1.0, float(np.abs(coefficients).max()))
    largest = float(difference.max())
    if protos is not None:
        protos = protos.numpy()
        largest = max(largest, float(np.abs(outputs[1] - protos).max()) / max(1.0, float(np.abs(protos).max())))
    return largest, [list(o.shape) for o in outputs]


def pixel_rows(model: nn.Module) -> List[int]:
    """The rows of the first output that are input-pixel coordinates: the box's four and, for a
    pose head (``kpt_shape`` K×D), each keypoint's x and y."""
    head = model.model[-1]
    rows = [0, 1, 2, 3]
    shape = getattr(head, "kpt_shape", None)
    if shape is not None:
        first = 4 + int(head.nc)
        rows += [first + k * int(shape[1]) + axis for k in range(int(shape[0])) for axis in (0, 1)]
    return rows
