"""The shared batch pipeline: decode each item, prepare it, one forward pass, finish each item."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from handlers.errors import RequestError, as_request_error, internal_error
from handlers.geometry import normalize
from handlers.images import decode_image
from handlers.runtimes import Runtime, load_runtime
from handlers.settings import Settings, label_for, load_labels

Item = Union[bytes, bytearray, Image.Image, RequestError]
logger = logging.getLogger(__name__)


class VisionTask:
    """Base of the three tasks. Subclasses define ``prepare`` and ``finish``.

    ``run`` answers every item: a result, or the ``RequestError`` that item raised. One bad item
    never fails the others, and all good items share one forward pass.
    """

    def __init__(self, runtime: Runtime, settings: Settings, labels: Sequence[str] = ()) -> None:
        self.runtime = runtime
        self.settings = settings
        self.labels = list(labels)
        threads = settings.preprocess_threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tsvision") if threads > 1 else None

    def prepare(self, image: Image.Image) -> Tuple[np.ndarray, Any]:
        """RGB image -> (input_size×input_size×3 uint8 array, whatever ``finish`` needs)."""
        raise NotImplementedError

    def finish(self, outputs: List[np.ndarray], meta: Any) -> Any:
        """This item's slice of every model output -> its JSON-ready answer."""
        raise NotImplementedError

    def headline(self, answer: Any) -> str:
        """The one label that sums up an answer (logged per A/B variant); '' if none."""
        raise NotImplementedError

    def label(self, index: int) -> str:
        return label_for(self.labels, index)

    def run(self, items: Sequence[Item]) -> List[Any]:
        results: List[Any] = [None] * len(items)
        arrays, metas, positions = [], [], []
        for position, prepared in enumerate(self._map(self._prepare_item, items)):
            if isinstance(prepared, RequestError):
                results[position] = prepared
                continue
            arrays.append(prepared[0])
            metas.append(prepared[1])
            positions.append(position)
        if arrays:
            try:
                batch = normalize(np.stack(arrays), self.settings.mean, self.settings.std)
                outputs = self.runtime.run(batch)
            except Exception:  # the model failed: its items get 500, the worker lives on
                failure = internal_error("InferenceError", f"the model failed on this batch of {len(arrays)} images")
                for position in positions:
                    results[position] = failure
                return results
            rows = [([output[row] for output in outputs], meta) for row, meta in enumerate(metas)]
            for position, answer in zip(positions, self._map(self._finish_item, rows)):
                results[position] = answer
        return results

    def _prepare_item(self, item: Item) -> Union[Tuple[np.ndarray, Any], RequestError]:
        """Whatever one item raises is that item's answer: its own 4xx, or a 500 for a bug."""
        try:
            return self.prepare(self._image(item))
        except Exception as error:
            return as_request_error(error, "PreprocessError", "preparing this image failed")

    def _finish_item(self, row: Tuple[List[np.ndarray], Any]) -> Any:
        try:
            return self.finish(*row)
        except Exception as error:
            return as_request_error(error, "PostprocessError", "post-processing this image failed")

    def _map(self, function: Callable, values: Sequence) -> List[Any]:
        """``function`` over ``values``, on the worker's thread pool when there are several: decoding,
        resizing and most numpy work release the GIL, so the images of a batch use every core."""
        if self._pool is None or len(values) < 2:
            return [function(value) for value in values]
        return list(self._pool.map(function, values))

    def warm_up(self, batch_size: int = 2, rounds: int = 2) -> None:
        """Run the model on blank input so the first real requests are not slow (TorchScript
        optimises on its first calls)."""
        size = self.settings.input_size
        blank = np.zeros((batch_size, size, size, 3), dtype=np.uint8)
        for _ in range(rounds):
            self.runtime.run(normalize(blank, self.settings.mean, self.settings.std))

    def _image(self, item: Item) -> Image.Image:
        if isinstance(item, RequestError):
            raise item
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        return decode_image(bytes(item), self.settings.max_pixels)


def build_task(model_path: Path, settings: Settings, base_dir: Optional[Path] = None) -> VisionTask:
    """Load the model file with the runtime its suffix names and wrap it in the settings' task."""
    from handlers.classification import ClassificationTask
    from handlers.detection import DetectionTask
    from handlers.segmentation import SegmentationTask

    task_class = {"classification": ClassificationTask, "segmentation": SegmentationTask, "detection": DetectionTask}[settings.task]
    labels_path = None
    if settings.labels:
        labels_path = Path(settings.labels)
        if not labels_path.is_absolute() and base_dir is not None:
            labels_path = Path(base_dir) / labels_path
    return task_class(load_runtime(Path(model_path), settings.threads), settings, load_labels(labels_path))
