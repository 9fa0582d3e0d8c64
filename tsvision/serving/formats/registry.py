"""The registry of model output formats: one ``Format`` record per (task, ``detection_format``).

Every other module of this package is a family's file (``ssd.py``, ``yolo.py``, ...) whose
``FORMATS`` tuple lists its records; the registry imports them all, in the order of their names,
the first time it is asked anything, so a new format is one new file here (docs/formats.md).
Task classes are named, not imported (``task_class`` is ``"module:Class"``), so the tasks and the
settings can read the registry without an import cycle.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tsvision.serving.geometry import Placement

Shapes = Sequence[Sequence[int]]
ClassCount = Optional[Tuple[int, str]]


@dataclass
class Candidates:
    """What a decoder returns for one image: the boxes above ``score_threshold``, before NMS."""

    boxes: np.ndarray    # K×4 float32 x1, y1, x2, y2 in model-input pixels
    scores: np.ndarray   # K float32
    classes: np.ndarray  # K int64
    extra: Optional[np.ndarray] = None  # K×… per-candidate data a task carries along (keypoints, mask coefficients)

    def take(self, rows: np.ndarray) -> "Candidates":
        """These rows of every field."""
        return Candidates(self.boxes[rows], self.scores[rows], self.classes[rows],
                          None if self.extra is None else self.extra[rows])


Decoder = Callable[[Sequence[np.ndarray], Any, Placement], Candidates]


@dataclass(frozen=True)
class Format:
    """One (task, detection_format): everything the settings, the tasks and the tools know about it.

    ``decode(outputs, settings, placement)`` turns one image's outputs into ``Candidates``
    (None: the task class reads the outputs itself, as for a whole torchvision detector).
    ``resize`` is the family's preprocessing as it was trained (``input_size``, ``resize_mode``),
    ``defaults`` the other settings it implies; both apply to settings the user did not give.
    ``background``: a class index may mean "nothing" (``background_index`` applies).
    ``nms_free``: the model already suppressed overlapping boxes; else ``suppress(candidates, settings)``
    returns the rows NMS keeps, best first (None: torchvision's NMS on the boxes, per class unless
    ``agnostic_nms``). ``recognise(shapes)`` is True
    when output shapes (batch axis included) can only be this format (the archive's guess).
    ``class_count(outputs, background)``: how many classes one image's outputs score and where
    that shows (None: the layout does not tell). ``task_class``: ``"module:Class"`` serving it.
    ``ultralytics_task``: the ultralytics task whose ONNX export has this layout (the export tool).
    ``serial_micro_batch``: images per forward pass on a worker without preprocessing threads when
    ``micro_batch`` is unset (0: the whole batch at once; measured, docs/performance.md).
    ``faster_graph(path, settings)``: for an ONNX model file, an equivalent graph (serialised) that is
    cheaper to run and whose outputs ``decode`` also reads; None (or a call returning None): the file's."""

    name: str
    task: str
    decode: Optional[Decoder] = None
    resize: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    background: bool = False
    nms_free: bool = False
    suppress: Optional[Callable[[Candidates, Any], np.ndarray]] = None
    recognise: Optional[Callable[[Shapes], bool]] = None
    class_count: Optional[Callable[[Sequence[np.ndarray], bool], ClassCount]] = None
    task_class: str = "tsvision.serving.tasks.detection:DetectionTask"
    ultralytics_task: str = ""
    serial_micro_batch: int = 0
    faster_graph: Optional[Callable[[Any, Any], Optional[bytes]]] = None

    @property
    def implied(self) -> Dict[str, Any]:
        """The settings this format implies: its resize, then its other defaults."""
        return {**self.resize, **self.defaults}

    def load_task_class(self) -> type:
        """The task class ``task_class`` names (imported now)."""
        module, _, name = self.task_class.partition(":")
        return getattr(importlib.import_module(module), name)


_RECORDS: Dict[Tuple[str, str], Format] = {}
_LOCK = threading.Lock()
_loaded = False


def _load() -> None:
    """Read the ``FORMATS`` of every module of this package once, modules in name order, records in
    their order there; a (task, name) given twice is an error."""
    global _loaded
    if _loaded:
        return
    with _LOCK:
        if _loaded:
            return
        package = __name__.rpartition(".")[0]
        for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{package}.{info.name}")
            for record in getattr(module, "FORMATS", ()):
                key = (record.task, record.name)
                if key in _RECORDS:
                    raise ValueError(f"detection_format {record.name!r} is given twice for task {record.task!r} "
                                     f"({module.__name__})")
                _RECORDS[key] = record
        _loaded = True


def records(task: Optional[str] = None) -> Tuple[Format, ...]:
    """All records (of ``task``), in the order their files list them (files by name)."""
    _load()
    return tuple(r for r in _RECORDS.values() if task is None or r.task == task)


def names(task: Optional[str] = None) -> Tuple[str, ...]:
    """The detection_format names (served for ``task``), each once, in ``records`` order."""
    return tuple(dict.fromkeys(r.name for r in records(task)))


def find(task: str, name: str) -> Optional[Format]:
    """The record of (task, name), or None."""
    _load()
    return _RECORDS.get((task, name))


def lookup(task: str, name: str) -> Format:
    """The record of (task, name); ``ValueError`` naming the formats ``task`` serves when there is none."""
    record = find(task, name)
    if record is None:
        served = names(task)
        raise ValueError(f"task {task} needs detection_format {' or '.join(served)}, got {name!r} "
                         f"({task} serves detection_format {list(served)}: docs/models.md)")
    return record


def background_names() -> Tuple[str, ...]:
    """The formats whose class 0 (or ``background_index``) means "nothing"."""
    return tuple(dict.fromkeys(r.name for r in records() if r.background))


def guess_format(shapes: List[Sequence[int]], task: str = "detection") -> Optional[str]:
    """The format of ``task`` the output ``shapes`` (with their batch axis) unambiguously imply, else None."""
    matches = [r.name for r in records(task) if r.recognise is not None and r.recognise(shapes)]
    return matches[0] if len(matches) == 1 else None


def class_count(name: str, outputs: Sequence[np.ndarray], background: bool = True,
                task: str = "detection") -> ClassCount:
    """How many classes one image's ``outputs`` in format ``name`` score, and where that shows; None
    where the layout does not tell or the shapes do not fit (the decoder then says what is wrong)."""
    record = lookup(task, name)
    return record.class_count(outputs, background) if record.class_count is not None else None


def ultralytics_tasks() -> Dict[str, Tuple[str, str]]:
    """ultralytics task (``detect``, ``segment``, ...) -> (tsvision task, detection_format)."""
    return {r.ultralytics_task: (r.task, r.name) for r in records() if r.ultralytics_task}
