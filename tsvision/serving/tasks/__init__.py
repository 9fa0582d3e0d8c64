"""The tasks: each turns a batch of images into one answer per image, with no TorchServe in sight."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Optional, Type

from tsvision.serving import formats
from tsvision.serving.runtimes import available_cores, load_runtime
from tsvision.serving.settings import DETECTING_TASKS, Settings, load_labels
from tsvision.serving.tasks.base import VisionTask
from tsvision.serving.tasks.classification import ClassificationTask
from tsvision.serving.tasks.embedding import EmbeddingTask
from tsvision.serving.tasks.multi_label import MultiLabelClassificationTask
from tsvision.serving.tasks.segmentation import SegmentationTask

# The tasks without a detection_format; a detecting task's class is its format's (tsvision.serving.formats).
TASK_CLASSES: Dict[str, Type[VisionTask]] = {"classification": ClassificationTask, "segmentation": SegmentationTask,
                                             "embedding": EmbeddingTask}
# Read from the model folder when the settings name no labels file: ours, then TorchServe's stock name.
LABEL_FILES = ("labels.json", "index_to_name.json")


def task_class(settings: Settings) -> Type[VisionTask]:
    """The task class for these settings: by ``task``, and for a detecting task its format's record's."""
    if settings.task in DETECTING_TASKS:
        return formats.lookup(settings.task, settings.detection_format).load_task_class()
    if settings.multi_label:
        return MultiLabelClassificationTask
    return TASK_CLASSES[settings.task]


def build_task(model_path: Path, settings: Settings, base_dir: Optional[Path] = None, workers: int = 1,
               device: str = "cpu") -> VisionTask:
    """Load the model file with the runtime its suffix names and wrap it in the settings' task.

    ``settings.labels`` is read relative to ``base_dir`` (an archive's or an export's folder); when
    the settings name none, the first of ``LABEL_FILES`` found in ``base_dir`` is read (the task's
    settings then name it); ``workers`` (the model's worker count) sizes the image-preparation threads and, unless
    ``settings.threads`` is set, the runtime's (``runtime_threads``); ``device`` is ``cpu`` or
    ``cuda:N`` (``runtimes.pick_device``)."""
    labels_path = None
    if not settings.labels and base_dir is not None:
        found = next((name for name in LABEL_FILES if (Path(base_dir) / name).is_file()), None)
        settings = dataclasses.replace(settings, labels=found)
    if settings.labels:
        labels_path = Path(settings.labels)
        if not labels_path.is_absolute() and base_dir is not None:
            labels_path = Path(base_dir) / labels_path
        if not labels_path.is_file():
            raise FileNotFoundError(f"the settings name the labels file {settings.labels!r}, which is not in "
                                    f"{labels_path.parent}: put it in the archive (torch-model-archiver --extra-files: "
                                    "tsvision extra-files --labels FILE) "
                                    "or set labels: null")
    cls = task_class(settings)
    cls.before_load()
    graph = faster_graph(Path(model_path), settings)
    settings = dataclasses.replace(settings, split_head=graph is not None)  # what runs: the decoder reads it
    runtime = load_runtime(Path(model_path), runtime_threads(settings.threads, workers), device, settings.spinning,
                           runtime_streams(settings.streams, cls, device, settings.input_size), graph)
    return cls(runtime, settings, load_labels(labels_path), workers)


def faster_graph(model_path: Path, settings: Settings) -> Optional[bytes]:
    """For an ONNX model of a detecting task, its format's cheaper equivalent graph, if it offers one."""
    if model_path.suffix.lower() != ".onnx" or settings.task not in DETECTING_TASKS:
        return None
    record = formats.lookup(settings.task, settings.detection_format)
    return record.faster_graph(model_path, settings) if record.faster_graph is not None else None


def runtime_threads(threads: int, workers: int, cores: Optional[int] = None) -> int:
    """The runtime's intra-op threads: ``threads`` when set; else, with several workers, each one's
    share of the cores (two workers each running one thread per core would fight over them:
    docs/performance.md, "Scaling"); else 0, the runtime's own default."""
    if threads > 0 or workers <= 1:
        return threads
    return max(1, (cores or available_cores()) // workers)


# Above this many model-input pixels ``streams`` defaults to 1: two runs at once served faster at 224×224
# (classification, 1.07x ONNX) and 320×320 (detection, 1.20x) but slower at 640×640 (YOLOv8n, 0.96x) and
# 520×924 (segmentation, 0.55x); the cap lies between (docs/performance.md, "Streams").
STREAMS_MAX_PIXELS = 512 * 512


def runtime_streams(streams: Optional[int], cls: Type[VisionTask], device: str, input_size: int = 0) -> int:
    """Runs of the model at once: ``streams`` when set; else on a CPU the task's default for a model
    input of at most ``STREAMS_MAX_PIXELS`` (``input_size`` squared), 1 for larger ones; 1 on a GPU."""
    if streams is not None:
        return streams
    if device != "cpu" or input_size * input_size > STREAMS_MAX_PIXELS:
        return 1
    return cls.default_streams


def load_export(folder: Path, model_file: str = "model.onnx", **overrides) -> VisionTask:
    """A task in-process from an export folder (``settings.json`` beside the model file)."""
    import json

    values = json.loads((Path(folder) / "settings.json").read_text())
    values.update(overrides)
    return build_task(Path(folder) / model_file, Settings.from_mapping(values), folder)
