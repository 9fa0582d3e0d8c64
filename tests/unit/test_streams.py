"""``streams``: one forward pass split into several runs at once (``runtimes.Streams``) gives the
answers of one run, shares the runtime's threads out, and fails as one run fails."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest

from tests.checks import assert_same_answer
from tests.helpers import jpeg, load_task
from tests.instance_checks import toy_task
from tsvision.serving.errors import RequestError
from tsvision.serving.runtimes import Streams, available_cores, load_runtime, split_evenly
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import runtime_streams
from tsvision.serving.tasks.classification import ClassificationTask


@pytest.mark.parametrize("count, parts, unit, expected", [
    (8, 2, 1, [(0, 4), (4, 8)]),
    (3, 2, 1, [(0, 2), (2, 3)]),
    (8, 3, 1, [(0, 3), (3, 6), (6, 8)]),
    (1, 2, 1, [(0, 1)]),
    (0, 2, 1, []),
    (5, 2, 4, [(0, 4), (4, 5)]),   # a fixed batch of 4: whole chunks first
    (2, 4, 1, [(0, 1), (1, 2)]),   # never an empty part
])
def test_split_evenly(count, parts, unit, expected):
    assert [(s.start, s.stop) for s in split_evenly(count, parts, unit)] == expected


@pytest.mark.parametrize("task_name", ["classification", "segmentation", "detection"])
@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_two_streams_answer_as_one_run(exports, photos, task_name, backend):
    images = [jpeg(photo) for photo in photos.values()] + [b"not an image"] + [jpeg(photos["astronaut"])] * 3
    one = load_task(exports / task_name, backend, streams=1, micro_batch=0)
    two = load_task(exports / task_name, backend, streams=2, micro_batch=0)
    if available_cores() >= 2:
        assert isinstance(two.runtime, Streams) and two.runtime.streams == 2
    # within float noise: a part of the batch may take other kernels than the whole (TorchScript's oneDNN on
    # an AMD EPYC, 2026-12-04: classification scores 1.5e-9 apart)
    for a, b in zip(comparable(two.run(images)), comparable(one.run(images)), strict=True):
        if isinstance(a, tuple) or isinstance(b, tuple):
            assert a == b
        else:
            assert_same_answer(task_name, a, b)


def comparable(answers: list) -> list:
    """Answers with each error as its (status, kind, message): exceptions compare by identity."""
    return [(a.status, a.kind, str(a)) if isinstance(a, RequestError) else a for a in answers]


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_streams_split_the_image_lists_of_one_image_models(instance_toys, backend):
    """torchvision's detectors take a list of images (``run_images``): the list is split, the
    answers come back in order."""
    from tests.instance_checks import bright_box_scene

    images = [jpeg(bright_box_scene(width, height)[0]) for width, height in ((320, 240), (400, 300), (320, 240))]
    one = toy_task(instance_toys, "torchvision", backend, streams=1).run(images)
    task = toy_task(instance_toys, "torchvision", backend, streams=2)
    if not isinstance(task.runtime, Streams):
        pytest.skip("one core: one run at a time")
    inner, sizes = task.runtime.runtime, []
    real_run_images = inner.run_images
    inner.run_images = lambda part: sizes.append(len(part)) or real_run_images(part)
    two = task.run(images)
    assert two == one and all(answer for answer in one)
    # two 320×240 images (one model call each, side by side) and the 400×300 one alone
    assert sorted(sizes) == [1, 1, 1]


def test_the_threads_are_shared_out_among_the_streams(exports):
    model = exports / "classification" / "model.onnx"

    def intra_op(runtime) -> int:
        return runtime._session.get_session_options().intra_op_num_threads

    runtime = load_runtime(model, threads=4, streams=2)
    assert isinstance(runtime, Streams) and runtime.streams == 2 and intra_op(runtime) == 2
    assert runtime.name == "onnx" and runtime.fixed_batch is None and runtime.device == "cpu"
    plain = load_runtime(model, threads=1, streams=2)  # never more runs than threads
    assert not isinstance(plain, Streams) and intra_op(plain) == 1
    assert intra_op(load_runtime(model, threads=3, streams=1)) == 3
    cores = available_cores()
    automatic = load_runtime(model, streams=2)
    assert intra_op(automatic) == (cores // 2 if cores >= 2 else 0)


class Doubling:
    """A runtime whose outputs are its inputs doubled (and their sum per image); it records each
    call's batch size and fails on a batch holding a negative value."""

    name, device, fixed_batch = "stub", "cpu", None

    def __init__(self) -> None:
        self.calls: List[int] = []

    def run(self, batch: np.ndarray) -> List[np.ndarray]:
        self.calls.append(len(batch))
        if (batch < 0).any():
            raise RuntimeError("the model failed")
        return [batch * 2, batch.reshape(len(batch), -1).sum(1)]


def test_streams_join_the_outputs_in_order_and_fail_as_one_run():
    inner = Doubling()
    streams = Streams(inner, 2)
    batch = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    doubled, sums = streams.run(batch)
    assert sorted(inner.calls) == [2, 3]
    np.testing.assert_array_equal(doubled, batch * 2)
    np.testing.assert_array_equal(sums, batch.reshape(5, -1).sum(1))
    batch[4] = -1
    with pytest.raises(RuntimeError, match="the model failed"):
        streams.run(batch)
    inner.calls.clear()
    streams.run(batch[:1])  # one image: one run, on the calling thread
    assert inner.calls == [1]


def test_a_failing_part_gives_its_batch_the_500_and_the_worker_goes_on(exports, photos):
    """Through a task: the batch whose run failed gets the 500 of one failed run; the next is answered."""
    task = load_task(exports / "classification", "onnx", streams=2, micro_batch=0)
    if not isinstance(task.runtime, Streams):
        pytest.skip("one core: one run at a time")
    inner = task.runtime.runtime
    calls = {"n": 0}
    real_run = inner.run

    def failing_once(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory")
        return real_run(batch)

    inner.run = failing_once
    images = [jpeg(photo) for photo in photos.values()]
    failed = task.run(images)
    assert all(isinstance(answer, RequestError) and answer.status == 500 for answer in failed), failed
    inner.run = real_run
    assert all(isinstance(answer, list) for answer in task.run(images))


def test_the_default_streams_and_the_setting():
    from tsvision.serving.tasks.detection import DetectionTask
    from tsvision.serving.tasks.segmentation import SegmentationTask

    assert runtime_streams(3, ClassificationTask, "cpu", 224) == 3
    assert runtime_streams(3, SegmentationTask, "cuda:0", 900) == 3
    assert runtime_streams(None, ClassificationTask, "cuda:0", 224) == 1
    assert runtime_streams(None, ClassificationTask, "cpu", 224) == 2
    assert runtime_streams(None, DetectionTask, "cpu", 320) == 2
    assert runtime_streams(None, DetectionTask, "cpu", 640) == 1  # YOLO's 640×640: a large input, one run
    assert runtime_streams(None, SegmentationTask, "cpu", 520) == 1
    with pytest.raises(ValueError, match="streams must be >= 1"):
        Settings.from_mapping({"task": "classification", "streams": 0})
    with pytest.raises(ValueError, match="streams"):
        Settings.from_mapping({"task": "classification", "streams": "two"})
