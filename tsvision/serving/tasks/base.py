"""The shared batch pipeline: decode and prepare each image, one forward pass, finish each image.

The three steps are separate so TorchServe's ``preprocess`` / ``inference`` / ``postprocess``
hooks each run one of them; ``run`` chains them for in-process use. ``finish`` gives each image a
result object (``tsvision.serving.results``) built with that image's request settings, passed in
explicitly; ``answers`` turns results into JSON-ready answers."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from tsvision.serving import formats
from tsvision.serving.batching import (  # noqa: F401 (ImageBatch, group_by_shape: their old home)
    ImageBatch,
    InlineExecutor,
    MicroBatching,
    PendingBatch,
    Prepared,
    Stack,
    Strategy,
    group_by_shape,
)
from tsvision.serving.errors import RequestError, as_request_error, internal_error
from tsvision.serving.geometry import check_resizer, normalize
from tsvision.serving.images import Draft, decode_image
from tsvision.serving.results import Result
from tsvision.serving.runtimes import Runtime, available_cores
from tsvision.serving.settings import Settings, label_for
from tsvision.serving.tasks.slices import SliceMeta, Slices, finish_slices, group_rows, prepare_slices, wants_slices

Item = Union[bytes, bytearray, Image.Image, RequestError]
ClassCount = Optional[Tuple[int, str]]  # (classes, the output that shows them) or None: the outputs do not say
logger = logging.getLogger(__name__)


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
    never fails the others, and all good images share one forward pass (``batching``).
    """

    name = ""
    # Per-request options this task accepts (tsvision.serving.options.PARSERS names; "format" always).
    # Each names a Settings field: ``finish`` receives the request's effective settings, so a task
    # honours an option by reading its setting there.
    options: Tuple[str, ...] = ()
    # ``micro_batch`` when the settings leave it unset (None): measured per task in
    # docs/performance.md ("Pipelining inside one worker"); 0 keeps one batch serial.
    default_micro_batch = 0
    # Runtimes on which that default is 0 when they run one stream: TorchScript's own intra-op (OpenMP)
    # threads compete with the pipeline's, classification served 1.19x faster without it; with two
    # streams (one thread each) it pipelines again, 185.8 -> 205.8 req/s (docs/performance.md, "Streams").
    serial_runtimes: Tuple[str, ...] = ("torchscript",)
    # ``streams`` (runs of the model at once) when the settings leave it unset, on a CPU: measured per
    # task in docs/performance.md ("Streams"); 1 where not measured. A GPU runs one at a time.
    default_streams = 1
    # How the live images go to the model (``tsvision.serving.batching``).
    batching: Strategy = Stack()

    def __init__(self, runtime: Runtime, settings: Settings, labels: Sequence[str] = (), workers: int = 1) -> None:
        check_resizer(settings.resize_mode)  # a host without the family's resizer refuses to load
        self.runtime = runtime
        self.settings = settings  # the archive's; a request's own come to ``prepare`` and ``finish``
        self.labels = list(labels)
        # The worker's share of the cores: workers x threads must not oversubscribe the machine.
        threads = settings.preprocess_threads or max(1, available_cores() // max(1, workers))
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tsvision") if threads > 1 else None
        # Batches of more than micro_batch images go through this wrapper: pipelined on the threads, or, on a
        # worker without threads, run a chunk at a time.
        self.micro_batching: Optional[MicroBatching] = None
        size = self.micro_batch if self._pool is not None else self.serial_micro_batch
        if size > 0:
            self.micro_batching = MicroBatching(self, size, self._pool or InlineExecutor())

    @classmethod
    def before_load(cls) -> None:
        """Called before the model file is loaded (e.g. to register the custom ops it calls)."""

    def prepare(self, image: Image.Image, settings: Optional[Settings] = None) -> Tuple[np.ndarray, Any]:
        """RGB image -> (H×W×3 uint8 array, usually input_size×input_size; whatever ``finish`` needs),
        with ``settings`` (None: the archive's, as the pipeline calls it; a request's options reach the
        preparation only through ``prepare_for``: segmentation's tiling)."""
        raise NotImplementedError

    def finish(self, outputs: List[np.ndarray], meta: Any, settings: Optional[Settings] = None) -> Result:
        """This image's slice of every model output -> its result, with the request's ``settings``
        (None: the archive's)."""
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
        """The one label that sums up a JSON answer (logged per A/B variant); '' if none."""
        raise NotImplementedError

    def draw(self, image: Image.Image, answer: Any) -> Image.Image:
        """An answer drawn for a person (``Accept: image/png``): a picture at the image's size or
        larger. ``answer`` is a result (drawn from its arrays) or a JSON answer (e.g. one a handler changed)."""
        if isinstance(answer, Result):
            return answer.draw(image)
        return self.draw_answer(image, answer)

    def draw_answer(self, image: Image.Image, answer: Any) -> Image.Image:
        """A JSON answer drawn on ``image``."""
        raise NotImplementedError(f"the {self.name} task draws no pictures")

    def label(self, index: int) -> str:
        return label_for(self.labels, index)

    def v2_tensor(self, answers: Sequence[Any]) -> Optional[dict]:
        """An Open Inference Protocol output tensor holding one request's answers in place of the BYTES
        ``answers`` output (``{"name", "datatype", "shape", "data"}``), or None (the embedding task's)."""
        return None

    @property
    def archive_settings(self) -> Settings:
        """The archive's settings (``self.settings``)."""
        return self.settings

    @property
    def micro_batch(self) -> int:
        """Images per forward pass when one batch is pipelined (0: serial): the setting, else the task's default
        (0 on the ``serial_runtimes`` running one stream)."""
        value = self.settings.micro_batch
        if value is not None:
            return value
        serial = getattr(self.runtime, "name", "") in self.serial_runtimes and getattr(self.runtime, "streams", 1) == 1
        return 0 if serial else self.default_micro_batch

    @property
    def serial_micro_batch(self) -> int:
        """Images per forward pass on a worker without preprocessing threads (0: the whole batch): the setting,
        else the model format's measured value (the tasks' ``default_micro_batch`` was measured pipelining)."""
        if self.settings.micro_batch is not None:
            return self.settings.micro_batch
        record = formats.find(self.settings.task, self.settings.detection_format)
        return record.serial_micro_batch if record is not None else 0

    # -- the three steps ---------------------------------------------------------------------
    def prepare_batch(self, items: Sequence[Item], settings: Optional[Sequence[Optional[Settings]]] = None,
                      keep: Sequence[bool] = ()) -> ImageBatch:
        """Decode and prepare every image (on the worker's threads); errors stay in their slots.
        ``settings``: per item, its request's settings (None: the archive's); ``keep``: per item,
        whether to keep its decoded image for drawing (``batch.pictures``).

        With ``micro_batch`` set (and threads, and more items than it), ``MicroBatching`` takes the
        batch: this only hands each item's preparation to the threads and returns."""
        settings = list(settings) if settings is not None and any(s is not None for s in settings) else []
        keep = list(keep) or [False] * len(items)
        if self.micro_batching is not None and self.micro_batching.size < len(items):
            return self.micro_batching.prepare_batch(items, settings, keep)
        batch = ImageBatch([None] * len(items), settings, [None] * len(items))
        own = [batch.settings_at(position) for position in range(len(items))]
        return self.gather(batch, enumerate(self._map(self._prepare_pair, list(zip(items, keep, own)))))

    def prepared(self, batch: ImageBatch) -> ImageBatch:
        """``batch`` as the plain ``prepare_batch`` makes it (``inputs`` holds every live image):
        waits for the pending preparations of a pipelined batch, for callers that read ``inputs``."""
        if isinstance(batch, PendingBatch) and self.micro_batching is not None:
            return self.micro_batching.prepared(batch)
        return batch

    def infer(self, batch: ImageBatch) -> ImageBatch:
        """One forward pass over the live images (``batching``); if the model fails, its images get
        the 500. A pipelined batch runs in micro-batches instead (``MicroBatching``)."""
        if isinstance(batch, PendingBatch) and batch.pending and self.micro_batching is not None:
            return self.micro_batching.infer(batch)
        if batch.inputs is not None:
            rows = self.batching.run(self.runtime, batch.inputs)
            failed = {batch.positions[i] for i, row in enumerate(rows) if isinstance(row, RequestError)}
            live = [i for i in range(len(rows)) if batch.positions[i] not in failed]  # an image's slices fail together
            for i, row in enumerate(rows):
                if isinstance(row, RequestError):
                    batch.results[batch.positions[i]] = row
            batch.positions, batch.metas = [batch.positions[i] for i in live], [batch.metas[i] for i in live]
            batch.outputs = [rows[i] for i in live] if live else None
            batch.inputs = None
        return batch

    def finish_batch(self, batch: ImageBatch) -> List[Any]:
        """Every image's result (or its error), in the order the images came."""
        if isinstance(batch, PendingBatch) and self.micro_batching is not None:
            self.micro_batching.finish_batch(batch)
        if batch.outputs is not None:
            answers = self.answer_rows(batch)
            for (position, _), result in zip(answers, self._map(self.finish_item, [row for _, row in answers])):
                batch.results[position] = result
            batch.outputs = None
        return batch.results

    def answers(self, results: Sequence[Any]) -> List[Any]:
        """Each result as its JSON-ready answer (``to_json``, on the worker's threads); errors stay.
        A result that fails to serialise is that image's 500."""
        return self._map(_to_json, list(results))

    def run(self, items: Sequence[Item]) -> List[Any]:
        """All three steps: a JSON-ready answer or a ``RequestError`` per item."""
        return self.answers(self.finish_batch(self.infer(self.prepare_batch(items))))

    def close(self) -> None:
        """Stop the preparation threads (the worker is going away); later calls run serially."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self.micro_batching = None

    # -- one image (also what ``MicroBatching`` runs) ------------------------------------------
    def gather(self, batch: ImageBatch, prepared: Iterable[Tuple[int, Prepared]]) -> ImageBatch:
        """Put each (slot, prepared image) into ``batch``: errors in their slots, the live images
        collated into ``inputs`` by the task's ``batching``."""
        arrays = []
        for position, item in prepared:
            if isinstance(item, RequestError):
                batch.results[position] = item
                continue
            if isinstance(item[0], Slices):  # one image's slices: each a model input of its own, one slot
                arrays.extend(item[0].arrays)
                batch.metas.extend(SliceMeta(item[0], index) for index in range(len(item[0].arrays)))
                batch.positions.extend([position] * len(item[0].arrays))
            else:
                arrays.append(item[0])
                batch.metas.append(item[1])
                batch.positions.append(position)
            if item[2] is not None:
                batch.pictures[position] = item[2]
        if arrays:
            try:
                batch.inputs = self.batching.collate(arrays, self.settings, self._map)
            except Exception:  # e.g. an overridden prepare() that returns something other than H×W×3 uint8
                batch.fail(internal_error("PreprocessError", f"stacking this batch of {len(arrays)} images failed"))
        return batch

    @staticmethod
    def rows(batch: ImageBatch) -> List[Tuple[List[np.ndarray], Any, Optional[Settings]]]:
        """Per live image: its outputs, its meta, its request's settings."""
        return [(outputs, meta, batch.settings_at(position))
                for outputs, meta, position in zip(batch.outputs or [], batch.metas, batch.positions)]

    def answer_rows(self, batch: ImageBatch) -> List[Tuple[int, Tuple[Any, Any, Optional[Settings]]]]:
        """Per answer: its slot and its row; an image's slices come back as one row (``group_rows``)."""
        return group_rows(batch.positions, self.rows(batch))

    def prepare_item(self, item: Item, keep: bool = False, settings: Optional[Settings] = None) -> Prepared:
        """(array, meta, the decoded image when ``keep``) of one item, with its request's ``settings``
        (None: the archive's); whatever it raises is that item's answer: its own 4xx, or a 500 for a bug.
        With ``slice_size`` in the settings, the array is the image's ``Slices`` (tasks/slices.py)."""
        try:
            sliced = wants_slices(settings or self.settings)  # slices need the full-resolution image: no draft
            image = self._image(item) if keep or sliced or self.draft is None else self._image(item, self.draft)
            if sliced:
                return prepare_slices(image, settings or self.settings, self.prepare), None, image if keep else None
            array, meta = self.prepare_for(image, settings)
            return array, meta, image if keep else None
        except Exception as error:
            return as_request_error(error, "PreprocessError", "preparing this image failed")

    def prepare_for(self, image: Image.Image, settings: Optional[Settings]) -> Tuple[Any, Any]:
        """``prepare`` for one request: a task whose options change how an image goes to the model
        (segmentation's tiles) overrides this; the plain one ignores ``settings``."""
        return self.prepare(image)  # one argument: overrides written as prepare(self, image) keep working

    def _prepare_pair(self, pair: Tuple[Item, bool, Optional[Settings]]) -> Prepared:
        return self.prepare_item(*pair)

    def finish_item(self, row: Tuple[List[np.ndarray], Any, Optional[Settings]]) -> Any:
        """One image's result, finished with its request's settings (``row[2]``, None: the archive's)."""
        try:
            if isinstance(row[1], list):  # one image's slices (group_rows): finished, moved and merged
                return finish_slices(self.finish, row[0], row[1], row[2] or self.settings)
            return self.finish(row[0], row[1], row[2] or self.settings)
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

    @property
    def draft(self) -> Optional[Draft]:
        """The smallest decoded size this task can use, for ``decode_draft`` (None: decode in full)."""
        return None

    def _image(self, item: Item, draft: Optional[Draft] = None) -> Image.Image:
        if isinstance(item, RequestError):
            raise item
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        return decode_image(bytes(item), self.settings.max_pixels, draft)


def _to_json(result: Any) -> Any:
    """A result's JSON-ready answer; an error or an already JSON-ready answer stays as it is."""
    if not isinstance(result, Result):
        return result
    try:
        return result.to_json()
    except Exception as error:
        return as_request_error(error, "PostprocessError", "post-processing this image failed")
