"""The shared batch pipeline: decode and prepare each image, one forward pass, finish each image.

The three steps are separate so TorchServe's ``preprocess`` / ``inference`` / ``postprocess``
hooks each run one of them; ``run`` chains them for in-process use."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from tsvision.serving.errors import RequestError, as_request_error, internal_error
from tsvision.serving.geometry import check_resizer, normalize
from tsvision.serving.images import decode_image
from tsvision.serving.runtimes import Runtime
from tsvision.serving.settings import Settings, label_for

Item = Union[bytes, bytearray, Image.Image, RequestError]
ClassCount = Optional[Tuple[int, str]]  # (classes, the output that shows them) or None: the outputs do not say
Prepared = Union[Tuple[np.ndarray, Any], RequestError]  # what ``_prepare_item`` gives for one item
logger = logging.getLogger(__name__)


@dataclass
class ImageBatch:
    """The images of one batch between the steps.

    ``results`` has one slot per image: ``None`` while it is live, else its ``RequestError``
    (or, after ``finish_batch``, its answer). ``inputs`` is the model input of the live images,
    whose slots are ``positions``: one N×3×H×W array, or, when their shapes differ (segmentation's
    ``shorter_side``), a list of 3×H×W arrays run one shape at a time (``outputs`` then holds a
    list per output, one array per image); ``metas`` is what ``finish`` needs for each of them.

    Pipelined (``micro_batch``): ``pending`` holds one preparation per slot until ``infer``
    takes them, and ``finishing`` the (slot, answer) of every image ``infer`` has finished.
    """

    results: List[Any]
    inputs: Union[np.ndarray, List[np.ndarray], None] = None
    metas: List[Any] = field(default_factory=list)
    positions: List[int] = field(default_factory=list)
    outputs: Optional[List[Any]] = None
    settings: List[Any] = field(default_factory=list)  # per slot: the request's Settings (empty: the archive's)
    pending: List["Future[Prepared]"] = field(default_factory=list)
    finishing: List[Tuple[int, "Future[Any]"]] = field(default_factory=list)

    def settings_at(self, position: int) -> Any:
        """The settings image ``position`` is finished with (None: the task's own)."""
        return self.settings[position] if position < len(self.settings) else None

    def __len__(self) -> int:
        return len(self.results)


class LabelCountError(ValueError):
    """The labels do not name the model's classes one for one (found when the model loads)."""

    def __init__(self, labels: int, classes: int, shown_by: str, source: str = "the labels") -> None:
        self.labels, self.classes, self.shown_by = labels, classes, shown_by
        super().__init__(self.describe(source))

    def describe(self, source: str) -> str:
        """The message, naming the labels file as ``source``."""
        return (f"{source} names {self.labels} classes, but the model has {self.classes} ({self.shown_by}): "
                f"give exactly one name per class index 0..{self.classes - 1}")


class VisionTask:
    """Base of the tasks. Subclasses define ``prepare``, ``finish`` and ``headline``.

    Every image gets an answer: a result, or the ``RequestError`` it raised. One bad image
    never fails the others, and all good images share one forward pass.
    """

    name = ""
    # Per-request options this task accepts (tsvision.serving.options.PARSERS names; "format" always).
    # Each names a Settings field: while ``finish`` and ``draw`` run, ``self.settings`` holds the
    # request's value, so a task honours an option by reading its setting.
    options: Tuple[str, ...] = ()
    # ``micro_batch`` when the settings leave it unset (None): measured per task in
    # docs/performance.md ("Pipelining inside one worker"); 0 keeps one batch serial.
    default_micro_batch = 0

    def __init__(self, runtime: Runtime, settings: Settings, labels: Sequence[str] = (), workers: int = 1) -> None:
        check_resizer(settings.resize_mode)  # a host without the family's resizer refuses to load
        self.runtime = runtime
        self.archive_settings = settings
        self._request = threading.local()  # the settings of the request being finished on this thread
        self.labels = list(labels)
        # The worker's share of the cores: workers x threads must not oversubscribe the machine.
        threads = settings.preprocess_threads or max(1, (os.cpu_count() or 1) // max(1, workers))
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tsvision") if threads > 1 else None

    @classmethod
    def before_load(cls) -> None:
        """Called before the model file is loaded (e.g. to register the custom ops it calls)."""

    def prepare(self, image: Image.Image) -> Tuple[np.ndarray, Any]:
        """RGB image -> (H×W×3 uint8 array, usually input_size×input_size; whatever ``finish`` needs)."""
        raise NotImplementedError

    def finish(self, outputs: List[np.ndarray], meta: Any) -> Any:
        """This image's slice of every model output -> its JSON-ready answer."""
        raise NotImplementedError

    def class_count(self, outputs: List[np.ndarray]) -> ClassCount:
        """How many classes one image's outputs score, and which output shows it; None where the
        outputs do not tell (e.g. a whole detector that outputs label indices)."""
        return None

    def check_labels(self, outputs: List[np.ndarray]) -> None:
        """Refuse labels whose count is not the model's class count (``LabelCountError``), when
        one image's ``outputs`` tell the count; no labels at all are fine (answers carry indices)."""
        found = self.class_count(outputs) if self.labels else None
        if found is not None and found[0] != len(self.labels):
            raise LabelCountError(len(self.labels), found[0], found[1], self.settings.labels or "the labels")

    def headline(self, answer: Any) -> str:
        """The one label that sums up an answer (logged per A/B variant); '' if none."""
        raise NotImplementedError

    def draw(self, image: Image.Image, answer: Any) -> Image.Image:
        """The answer drawn for a person (``Accept: image/png``): a picture at the image's size or larger."""
        raise NotImplementedError(f"the {self.name} task draws no pictures")

    def label(self, index: int) -> str:
        return label_for(self.labels, index)

    @property
    def settings(self) -> Settings:
        """The archive's settings, or while one request is finished or drawn, that request's."""
        return getattr(self._request, "settings", None) or self.archive_settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self.archive_settings = value

    @property
    def micro_batch(self) -> int:
        """Images per forward pass when one batch is pipelined (0: serial): the setting, else the task's default."""
        value = self.archive_settings.micro_batch
        return self.default_micro_batch if value is None else value

    def with_settings(self, settings: Optional[Settings], function: Callable, *args) -> Any:
        """``function(*args)`` with ``self.settings`` being ``settings`` on this thread."""
        if settings is None:
            return function(*args)
        self._request.settings = settings
        try:
            return function(*args)
        finally:
            self._request.settings = None

    # -- the three steps ---------------------------------------------------------------------
    def prepare_batch(self, items: Sequence[Item]) -> ImageBatch:
        """Decode and prepare every image (on the worker's threads); errors stay in their slots.

        With ``micro_batch`` set (and threads, and more items than it), this only hands each
        item's preparation to the threads and returns; ``infer`` takes them as they are ready."""
        batch = ImageBatch([None] * len(items))
        if self._pool is not None and 0 < self.micro_batch < len(items):
            batch.pending = [self._pool.submit(self._prepare_item, item) for item in items]
            return batch
        return self._gather(batch, enumerate(self._map(self._prepare_item, items)))

    def prepared(self, batch: ImageBatch) -> ImageBatch:
        """``batch`` as the unpipelined ``prepare_batch`` makes it (``inputs`` holds every live
        image): waits for the pending preparations, for callers that read ``inputs`` themselves."""
        pending, batch.pending = batch.pending, []
        return self._gather(batch, ((position, future.result()) for position, future in enumerate(pending)))

    def infer(self, batch: ImageBatch) -> ImageBatch:
        """One forward pass over the live images; if the model fails, each of them gets the 500.
        A pipelined batch runs in micro-batches instead (``_infer_pipelined``)."""
        if batch.pending:
            return self._infer_pipelined(batch)
        if isinstance(batch.inputs, list):
            return self._infer_by_shape(batch)
        if batch.inputs is not None:
            try:
                batch.outputs = self.runtime.run(batch.inputs)
            except Exception:  # the model failed: its images get 500, the worker lives on
                self._fail(batch, internal_error("InferenceError", f"the model failed on this batch of {len(batch.positions)} images"))
        return batch

    def finish_batch(self, batch: ImageBatch) -> List[Any]:
        """Every image's answer (or its error), in the order the images came."""
        if batch.outputs is not None:
            for position, answer in zip(batch.positions, self._map(self._finish_item, self._rows(batch))):
                batch.results[position] = answer
            batch.outputs = None
        for position, future in batch.finishing:  # pipelined: the answers finished on the threads
            batch.results[position] = future.result()
        batch.finishing = []
        return batch.results

    def run(self, items: Sequence[Item]) -> List[Any]:
        """All three steps: an answer or a ``RequestError`` per item."""
        return self.finish_batch(self.infer(self.prepare_batch(items)))

    def close(self) -> None:
        """Stop the preparation threads (the worker is going away)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _infer_by_shape(self, batch: ImageBatch) -> ImageBatch:
        """Images of different shapes: one forward pass per shape (padding them to one shape would
        change a fully convolutional model's answers near the edges), each image's outputs kept in
        its row; a pass that fails gives only its own images the 500."""
        rows: List[Optional[List[np.ndarray]]] = [None] * len(batch.inputs)
        for shape, indices in group_by_shape(batch.inputs).items():
            try:
                outputs = self.runtime.run(np.stack([batch.inputs[i] for i in indices]))
            except Exception:  # the model failed on this shape: its images get 500, the others go on
                error = internal_error("InferenceError", f"the model failed on {len(indices)} image(s) of "
                                       f"{shape[-1]}×{shape[-2]} pixels in this batch")
                for i in indices:
                    batch.results[batch.positions[i]] = error
                continue
            for row, i in enumerate(indices):
                rows[i] = [output[row] for output in outputs]
        live = [i for i, row in enumerate(rows) if row is not None]
        batch.positions, batch.metas = [batch.positions[i] for i in live], [batch.metas[i] for i in live]
        batch.outputs = [list(column) for column in zip(*(rows[i] for i in live))] if live else None
        batch.inputs = None
        return batch

    def _infer_pipelined(self, batch: ImageBatch) -> ImageBatch:
        """The model on ``micro_batch`` live images at a time, in order: while it runs on one
        micro-batch the threads prepare the next ones and finish the previous ones. Each
        micro-batch is stacked, run and failed on its own (its images only get its 500)."""
        size = self.micro_batch
        fixed = getattr(self.runtime, "fixed_batch", None)
        if fixed:  # whole chunks of the model's own batch size: no padded forward passes in between
            size = -(-size // fixed) * fixed
        pending, batch.pending = batch.pending, []
        chunk: List[Tuple[int, Prepared]] = []
        for position, future in enumerate(pending):
            prepared = future.result()
            if isinstance(prepared, RequestError):
                batch.results[position] = prepared
                continue
            chunk.append((position, prepared))
            if len(chunk) == size:
                self._run_micro_batch(batch, chunk)
                chunk = []
        if chunk:
            self._run_micro_batch(batch, chunk)
        return batch

    def _run_micro_batch(self, batch: ImageBatch, chunk: Sequence[Tuple[int, Prepared]]) -> None:
        """Stack ``chunk`` (slot, prepared image), run the model on it (``infer``), and hand each
        image's ``finish`` to the threads (``batch.finishing``). Slots and settings are ``batch``'s."""
        part = self.infer(self._gather(ImageBatch(batch.results, settings=batch.settings), chunk))
        if part.outputs is not None:
            batch.finishing.extend((position, self._pool.submit(self._finish_item, row))
                                   for position, row in zip(part.positions, self._rows(part)))

    def _gather(self, batch: ImageBatch, prepared: Iterable[Tuple[int, Prepared]]) -> ImageBatch:
        """Put each (slot, prepared image) into ``batch``: errors in their slots, the live images
        normalised into ``inputs`` (stacked when they all have one shape, else a list)."""
        arrays = self._place(batch, prepared)
        if arrays:
            mean, std = self.settings.mean, self.settings.std
            try:
                if len({array.shape for array in arrays}) > 1:  # e.g. shorter_side: one forward pass per shape
                    batch.inputs = [normalize(array[None], mean, std)[0] for array in arrays]
                else:
                    batch.inputs = normalize(np.stack(arrays), mean, std)
            except Exception:  # e.g. an overridden prepare() that returns something other than H×W×3 uint8
                self._fail(batch, internal_error("PreprocessError", f"stacking this batch of {len(arrays)} images failed"))
        return batch

    @staticmethod
    def _place(batch: ImageBatch, prepared: Iterable[Tuple[int, Prepared]]) -> List[np.ndarray]:
        """Each error into its slot, each live image's meta and slot into ``batch``; returns the live arrays."""
        arrays = []
        for position, item in prepared:
            if isinstance(item, RequestError):
                batch.results[position] = item
                continue
            arrays.append(item[0])
            batch.metas.append(item[1])
            batch.positions.append(position)
        return arrays

    @staticmethod
    def _rows(batch: ImageBatch) -> List[Tuple[List[np.ndarray], Any, Optional[Settings]]]:
        """Per live image: its slice of every model output, its meta, its request's settings."""
        return [([output[row] for output in batch.outputs], meta, batch.settings_at(position))
                for row, (meta, position) in enumerate(zip(batch.metas, batch.positions))]

    @staticmethod
    def _fail(batch: ImageBatch, error: RequestError) -> None:
        for position in batch.positions:
            batch.results[position] = error
        batch.inputs, batch.positions, batch.metas = None, [], []

    def _prepare_item(self, item: Item) -> Prepared:
        """Whatever one item raises is that item's answer: its own 4xx, or a 500 for a bug."""
        try:
            return self.prepare(self._image(item))
        except Exception as error:
            return as_request_error(error, "PreprocessError", "preparing this image failed")

    def _finish_item(self, row: Tuple[List[np.ndarray], Any, Optional[Settings]]) -> Any:
        """One image's answer, finished with its request's settings (``row[2]``, None: the archive's)."""
        try:
            return self.with_settings(row[2] if len(row) > 2 else None, self.finish, *row[:2])
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
        optimises on its first calls), and check the labels against its outputs (``check_labels``)."""
        size = self.settings.input_size
        blank = np.zeros((batch_size, size, size, 3), dtype=np.uint8)
        for _ in range(rounds):
            outputs = self.runtime.run(normalize(blank, self.settings.mean, self.settings.std))
        self.check_labels([output[0] for output in outputs])

    def _image(self, item: Item) -> Image.Image:
        if isinstance(item, RequestError):
            raise item
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        return decode_image(bytes(item), self.settings.max_pixels)


def group_by_shape(arrays: Sequence[np.ndarray]) -> Dict[tuple, List[int]]:
    """The indices of ``arrays`` grouped by shape, groups in order of first appearance."""
    groups: Dict[tuple, List[int]] = {}
    for index, array in enumerate(arrays):
        groups.setdefault(tuple(array.shape), []).append(index)
    return groups
