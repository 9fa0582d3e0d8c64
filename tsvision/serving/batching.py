"""The batch between the three steps, and how its images go to the model.

``ImageBatch`` is a plain record: one slot per image (its answer or error, its request's settings,
the decoded picture when the request asked for one) and the model input and outputs of the live
images. A task picks a strategy for the forward pass:

- ``Stack``: every live image in one N×3×H×W array, one ``runtime.run`` (the default);
- ``BySize``: one call per group of equally sized images, each image at its own size (the torchvision
  detectors through ``runtime.run_images``, segmentation's ``shorter_side`` through ``runtime.run``):
  padding images to one size would change a convolutional model's answers near the edges.

``MicroBatching`` wraps a task's three steps as pytorch/serve's ``MicroBatching`` wraps a handler:
it pipelines one batch in chunks (prepare, model and finish overlapped on the worker's threads) and
gives the answers of the plain steps. On a worker without threads (``InlineExecutor``) it only runs the
model on one chunk at a time, which is faster where a big input's batch outgrows the caches (YOLO at 640²).
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from tsvision.serving.errors import RequestError, internal_error
from tsvision.serving.geometry import normalize
from tsvision.serving.runtimes import Runtime
from tsvision.serving.settings import Settings

Inputs = Union[np.ndarray, List[np.ndarray]]  # N×3×H×W stacked, or one 3×H×W array per image
Rows = List[Union[List[np.ndarray], RequestError]]  # per live image: its outputs, or the error of its forward pass
Mapper = Callable[[Callable, Sequence], List[Any]]


@dataclass
class ImageBatch:
    """The images of one batch between the steps.

    Per slot (one per image, in the order they came): ``results`` holds ``None`` while the image is
    live, else its ``RequestError``, and after ``finish_batch`` its result; ``settings`` the request's
    effective settings (empty: the archive's); ``pictures`` the decoded RGB image when its request
    asked for a picture (drawn on it later, never decoded again). Per live image (slots
    ``positions``): ``metas`` what ``finish`` needs, ``inputs`` the model input (the strategy's),
    ``outputs`` after ``infer`` its own outputs."""

    results: List[Any]
    settings: List[Optional[Settings]] = field(default_factory=list)
    pictures: List[Optional[Image.Image]] = field(default_factory=list)
    positions: List[int] = field(default_factory=list)
    metas: List[Any] = field(default_factory=list)
    inputs: Optional[Inputs] = None
    outputs: Optional[List[List[np.ndarray]]] = None

    def settings_at(self, position: int) -> Optional[Settings]:
        """The settings slot ``position`` is finished with (None: the task's own)."""
        return self.settings[position] if position < len(self.settings) else None

    def picture_at(self, position: int) -> Optional[Image.Image]:
        """The decoded image of slot ``position`` when its request asked for a picture."""
        return self.pictures[position] if position < len(self.pictures) else None

    def fail(self, error: RequestError) -> None:
        """Every live image gets ``error``; none is live any more."""
        for position in self.positions:
            self.results[position] = error
        self.inputs, self.outputs, self.positions, self.metas = None, None, [], []

    def __len__(self) -> int:
        return len(self.results)


def group_by_shape(arrays: Sequence[np.ndarray]) -> Dict[tuple, List[int]]:
    """The indices of ``arrays`` grouped by shape, groups in order of first appearance."""
    groups: Dict[tuple, List[int]] = {}
    for index, array in enumerate(arrays):
        groups.setdefault(tuple(array.shape), []).append(index)
    return groups


def to_chw_float(image: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 -> 3×H×W float32 in [0, 1] (a torchvision detector normalises itself)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def _batch_error(count: int) -> RequestError:
    return internal_error("InferenceError", f"the model failed on this batch of {count} images")


@dataclass(frozen=True)
class BySize:
    """One forward pass per group of equally sized images; each image's outputs in its row.

    ``images``: the model takes a list of 3×H×W images in [0, 1] (``runtime.run_images``, the
    torchvision detectors), else a stacked, normalised N×3×H×W array per group (``runtime.run``).
    ``whole_batch``: a failing call fails every image of the batch (else only its group's)."""

    images: bool = False
    whole_batch: bool = False

    def collate(self, arrays: List[np.ndarray], settings: Settings, map: Mapper) -> Inputs:
        """The prepared H×W×3 uint8 arrays -> one model input per image."""
        if self.images:
            return map(to_chw_float, arrays)
        return [normalize(array[None], settings.mean, settings.std)[0] for array in arrays]

    def run(self, runtime: Runtime, inputs: Inputs) -> Rows:
        rows: Rows = [None] * len(inputs)  # type: ignore[list-item]
        groups = group_by_shape(inputs)
        for shape, indices in groups.items():
            group = [inputs[i] for i in indices]
            try:
                if self.images:
                    found = runtime.run_images(group)
                else:
                    outputs = runtime.run(np.stack(group))
                    found = [[output[row] for output in outputs] for row in range(len(indices))]
            except Exception:  # the model failed on this group: its images get 500, the others go on
                if self.whole_batch or len(groups) == 1:
                    return [_batch_error(len(inputs))] * len(inputs)
                error = internal_error("InferenceError", f"the model failed on {len(indices)} image(s) of "
                                       f"{shape[-1]}×{shape[-2]} pixels in this batch")
                found = [error] * len(indices)
            for i, row in zip(indices, found):
                rows[i] = row
        return rows


@dataclass(frozen=True)
class Stack:
    """Every live image in one normalised N×3×H×W array and one ``runtime.run``. Images of
    different shapes (an overridden ``prepare``) go ``BySize``."""

    def collate(self, arrays: List[np.ndarray], settings: Settings, map: Mapper) -> Inputs:
        if len({array.shape for array in arrays}) > 1:
            return BySize().collate(arrays, settings, map)
        return normalize(np.stack(arrays), settings.mean, settings.std)

    def run(self, runtime: Runtime, inputs: Inputs) -> Rows:
        if isinstance(inputs, list):
            return BySize().run(runtime, inputs)
        try:
            outputs = runtime.run(inputs)
        except Exception:  # the model failed: its images get 500, the worker lives on
            return [_batch_error(len(inputs))] * len(inputs)
        return [[output[row] for output in outputs] for row in range(len(inputs))]


Strategy = Union[Stack, BySize]


def run_by_size(runtime: Runtime, images: List[np.ndarray]) -> List[List[np.ndarray]]:
    """``runtime.run_images`` on each group of equally sized images; outputs in the images' order
    (raises when the model does: for warm-ups)."""
    outputs: List[Any] = [None] * len(images)
    for indices in group_by_shape(images).values():
        for index, result in zip(indices, runtime.run_images([images[i] for i in indices])):
            outputs[index] = result
    return outputs


# -- micro-batching ---------------------------------------------------------------------------
Prepared = Union[Tuple[np.ndarray, Any, Optional[Image.Image]], RequestError]  # one item: array, meta, picture


@dataclass
class PendingBatch(ImageBatch):
    """A batch ``MicroBatching`` pipelines: ``pending`` holds each slot's preparation until
    ``infer`` takes it, ``finishing`` the (slot, result) of every image already finished."""

    pending: List["Future[Prepared]"] = field(default_factory=list)
    finishing: List[Tuple[int, "Future[Any]"]] = field(default_factory=list)


class Steps(Protocol):
    """What ``MicroBatching`` calls on the task it wraps (``VisionTask`` has them)."""

    runtime: Runtime

    def prepare_item(self, item: Any, keep: bool = False, settings: Optional[Settings] = None) -> Prepared: ...

    def gather(self, batch: ImageBatch, prepared: Iterable[Tuple[int, Prepared]]) -> ImageBatch: ...

    def infer(self, batch: ImageBatch) -> ImageBatch: ...

    def rows(self, batch: ImageBatch) -> List[Tuple[List[np.ndarray], Any, Optional[Settings]]]: ...

    def answer_rows(self, batch: ImageBatch) -> List[Tuple[int, Any]]: ...

    def finish_item(self, row: Tuple[List[np.ndarray], Any, Optional[Settings]]) -> Any: ...


class InlineExecutor(Executor):
    """An executor that runs each call at once on the caller's thread (a worker without threads):
    ``MicroBatching`` over it runs the chunks one after another, nothing overlapped."""

    def submit(self, fn, /, *args, **kwargs) -> "Future[Any]":
        future: "Future[Any]" = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # as a thread pool's future: raised by result()
            future.set_exception(error)
        return future


class MicroBatching:
    """Wraps a task's steps: ``size`` live images per forward pass, in order. While the model runs
    on one chunk, the ``pool`` prepares the next ones and finishes the previous ones (an
    ``InlineExecutor``: one after another). Each chunk is stacked, run and failed on its own (its
    images only get its 500)."""

    def __init__(self, task: Steps, size: int, pool: Executor) -> None:
        self.task, self.size, self.pool = task, size, pool

    def prepare_batch(self, items: Sequence[Any], settings: List[Optional[Settings]],
                      keep: Sequence[bool]) -> PendingBatch:
        """Hand each item's preparation to the threads and return at once."""
        keep = list(keep) or [False] * len(items)
        batch = PendingBatch([None] * len(items), settings=settings, pictures=[None] * len(items))
        batch.pending = [self.pool.submit(self.task.prepare_item, item, wanted, batch.settings_at(position))
                         for position, (item, wanted) in enumerate(zip(items, keep))]
        return batch

    def prepared(self, batch: PendingBatch) -> ImageBatch:
        """``batch`` as the plain ``prepare_batch`` makes it (waits for every preparation)."""
        pending, batch.pending = batch.pending, []
        return self.task.gather(batch, ((position, future.result()) for position, future in enumerate(pending)))

    def infer(self, batch: PendingBatch) -> PendingBatch:
        size = self.size
        fixed = getattr(self.task.runtime, "fixed_batch", None)
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
                self._run_chunk(batch, chunk)
                chunk = []
        if chunk:
            self._run_chunk(batch, chunk)
        return batch

    def finish_batch(self, batch: PendingBatch) -> List[Any]:
        for position, future in batch.finishing:
            batch.results[position] = future.result()
        batch.finishing = []
        return batch.results

    def _run_chunk(self, batch: PendingBatch, chunk: Sequence[Tuple[int, Prepared]]) -> None:
        """The plain ``infer`` on ``chunk`` (slot, prepared image); each image's ``finish`` to the threads."""
        part = self.task.infer(self.task.gather(ImageBatch(batch.results, batch.settings, batch.pictures), chunk))
        if part.outputs is not None:
            batch.finishing.extend((position, self.pool.submit(self.task.finish_item, row))
                                   for position, row in self.task.answer_rows(part))
