"""micro_batch: one batch pipelined (prepare / model / finish overlapped) answers as the serial path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.checks import assert_same_answer, assert_same_classification
from tests.helpers import jpeg, load_task, png
from tests.unit.test_fixed_batch import SETTINGS as TINY_SETTINGS
from tests.unit.test_fixed_batch import TinyClassifier
from tsvision.serving.batching import InlineExecutor, PendingBatch
from tsvision.serving.errors import RequestError
from tsvision.serving.service import answer_requests
from tsvision.serving.settings import Settings
from tsvision.serving.tasks import build_task

MICRO = 2
THREADS = 2  # a pool even on a one-core machine (the pipeline needs one)


class CountingRuntime:
    """Wraps a runtime: records each forward pass's batch size; raises on the calls in ``fail``."""

    def __init__(self, runtime, fail=()) -> None:
        self.inner, self.fail, self.sizes = runtime, set(fail), []
        self.name, self.device, self.fixed_batch = runtime.name, runtime.device, getattr(runtime, "fixed_batch", None)

    def run(self, batch: np.ndarray):
        self.sizes.append(len(batch))
        if len(self.sizes) - 1 in self.fail:
            raise RuntimeError("boom")
        return self.inner.run(batch)


def mixed(photos) -> list:
    """Five good images (one tiny, odd-sized) among three bad ones."""
    good = [jpeg(p) for p in photos.values()] + [jpeg(Image.fromarray(np.full((41, 333, 3), 128, np.uint8)))]
    return [good[0], b"", good[1], b"not an image", good[2], RequestError(415, "UnsupportedMediaType", "x"),
            good[3], good[4]]


def pair(folder, backend="onnx"):
    return (load_task(folder, backend, preprocess_threads=THREADS, micro_batch=0),
            load_task(folder, backend, preprocess_threads=THREADS, micro_batch=MICRO))


def assert_same(task_name: str, a, b) -> None:
    if isinstance(a, RequestError) or isinstance(b, RequestError):
        assert ((type(a), getattr(a, "status", None), getattr(a, "kind", None))
                == (type(b), getattr(b, "status", None), getattr(b, "kind", None)))
    else:
        assert_same_answer(task_name, a, b)


@pytest.mark.parametrize("task_name", ["classification", "detection", "toy-detection", "toy-segmentation"])
def test_pipelined_answers_equal_serial(request, photos, task_name):
    name = task_name.replace("toy-", "")
    serial, pipelined = pair(
        request.getfixturevalue("toy_exports" if task_name.startswith("toy-") else "exports") / name)
    pipelined.runtime = counting = CountingRuntime(pipelined.runtime)
    data = mixed(photos)
    assert isinstance(pipelined.prepare_batch(data), PendingBatch), "the batch was not pipelined"
    counting.sizes.clear()
    expected, got = serial.run(data), pipelined.run(data)
    assert counting.sizes == [2, 2, 1]  # five live images in micro-batches of two
    assert [getattr(r, "status", 200) for r in got] == [200, 400, 200, 400, 200, 415, 200, 200]
    for a, b in zip(expected, got):
        assert_same(name, a, b)


@pytest.mark.parametrize("threads", [THREADS, 1])
def test_a_model_failure_fails_only_its_micro_batch(exports, photos, threads):
    serial = load_task(exports / "classification", "onnx", preprocess_threads=threads, micro_batch=0)
    pipelined = load_task(exports / "classification", "onnx", preprocess_threads=threads, micro_batch=MICRO)
    pipelined.runtime = CountingRuntime(pipelined.runtime, fail={1})  # the second micro-batch: live images 3 and 4
    data = mixed(photos)
    expected, got = serial.run(data), pipelined.run(data)
    failed = [4, 6]  # the slots of live images 3 and 4
    for position, (a, b) in enumerate(zip(expected, got)):
        if position in failed:
            assert isinstance(b, RequestError) and b.status == 500 and b.kind == "InferenceError", b
        else:
            assert_same("classification", a, b)


def test_a_per_request_setting_still_applies(exports, photos):
    serial, pipelined = pair(exports / "classification")
    data = [jpeg(p) for p in photos.values()]
    rows = [{"body": data[0]}, {"body": data[1], "top_k": b"2"}, {"body": data[2]}, {"body": data[3], "top_k": b"1"}]
    expected, got = answer_requests(serial, rows), answer_requests(pipelined, rows)
    assert [len(r.body) for r in got] == [5, 2, 5, 1]
    for a, b in zip(expected, got):
        assert a.status == b.status == 200
        assert_same_classification(a.body, b.body, score_tol=1e-5)


def test_a_fixed_batch_model_runs_whole_chunks(tmp_path, photos):
    import torch

    path = tmp_path / "batch2.onnx"
    torch.onnx.export(TinyClassifier().eval(), torch.randn(2, 3, 32, 32), str(path), external_data=False)
    serial = build_task(path, Settings.from_mapping({**TINY_SETTINGS, "preprocess_threads": THREADS}))
    pipelined = build_task(path, Settings.from_mapping({**TINY_SETTINGS, "preprocess_threads": THREADS,
                                                        "micro_batch": 3}))
    assert pipelined.runtime.fixed_batch == 2
    pipelined.runtime = counting = CountingRuntime(pipelined.runtime)
    data = mixed(photos)
    expected, got = serial.run(data), pipelined.run(data)
    assert counting.sizes == [4, 1]  # micro_batch 3 rounded up to whole fixed batches of 2
    for a, b in zip(expected, got):
        assert_same("classification", a, b)


@pytest.mark.parametrize("task_name", ["classification", "detection"])
def test_without_threads_a_set_micro_batch_runs_chunk_after_chunk(exports, photos, task_name):
    """One preparation thread: a micro_batch that is set runs the model on that many images at a time, one
    chunk after another, with the serial path's answers; the task's default (measured for pipelining) does not
    apply there: one forward pass for the whole batch."""
    serial = load_task(exports / task_name, "onnx", preprocess_threads=1, micro_batch=0)
    chunked = load_task(exports / task_name, "onnx", preprocess_threads=1, micro_batch=MICRO)
    assert isinstance(chunked.micro_batching.pool, InlineExecutor)
    chunked.runtime = counting = CountingRuntime(chunked.runtime)
    data = mixed(photos)
    expected, got = serial.run(data), chunked.run(data)
    assert counting.sizes == [2, 2, 1]  # five live images, two at a time
    assert [getattr(r, "status", 200) for r in got] == [200, 400, 200, 400, 200, 415, 200, 200]
    for a, b in zip(expected, got):
        assert_same(task_name, a, b)
    default = load_task(exports / task_name, "onnx", preprocess_threads=1)
    assert default.micro_batch == 4 and default.micro_batching is None
    default.runtime = counting = CountingRuntime(default.runtime)
    default.run(data)
    assert counting.sizes == [5]


def test_an_inline_executor_runs_at_once_and_keeps_the_error_for_result():
    inline = InlineExecutor()
    assert inline.submit(lambda a, b=0: a + b, 2, b=3).result() == 5
    failed = inline.submit(lambda: 1 / 0)
    assert failed.done()
    with pytest.raises(ZeroDivisionError):
        failed.result()


def test_a_small_batch_stays_serial(exports, photos):
    _, pipelined = pair(exports / "classification")
    assert not isinstance(pipelined.prepare_batch(mixed(photos)[:MICRO]), PendingBatch)


def test_a_closed_task_still_answers_serially(exports, photos):
    """After ``close`` (the threads are gone) a batch is prepared serially, with the same answers."""
    serial, pipelined = pair(exports / "classification")
    pipelined.close()
    data = mixed(photos)
    assert not isinstance(pipelined.prepare_batch(data), PendingBatch)
    for a, b in zip(serial.run(data), pipelined.run(data)):
        assert_same("classification", a, b)


def test_micro_batch_must_not_be_negative():
    assert Settings.from_mapping({"task": "classification", "micro_batch": 4}).micro_batch == 4
    with pytest.raises(ValueError, match="micro_batch"):
        Settings.from_mapping({"task": "classification", "micro_batch": -1})


def test_each_task_has_its_measured_default(exports, toy_exports, photos):
    """micro_batch unset: 4 for classification, detection and segmentation (measured faster served);
    an explicit 0 turns it off."""
    images = mixed(photos)
    for folder, expected in ((exports / "classification", 4), (exports / "detection", 4), (exports / "segmentation", 4),
                             (toy_exports / "segmentation", 4)):
        task = load_task(folder, "onnx", preprocess_threads=THREADS)
        assert task.archive_settings.micro_batch is None and task.micro_batch == expected, folder
        assert isinstance(task.prepare_batch(images), PendingBatch) == (expected > 0)
        assert load_task(folder, "onnx", preprocess_threads=THREADS, micro_batch=0).micro_batch == 0
    assert Settings.from_mapping({"task": "classification"}).to_mapping()["micro_batch"] is None


def test_torchscript_runs_serially_on_one_stream_unless_micro_batch_is_set(exports, photos):
    """On TorchScript running one stream the default is serial (its OpenMP threads compete with the
    pipeline's: measured in docs/performance.md); with two streams (one thread each) the task's default
    pipelines again; a micro_batch that is set always pipelines, with the serial path's answers."""
    images = mixed(photos)
    task = load_task(exports / "classification", "torchscript", preprocess_threads=THREADS, streams=1)
    assert task.archive_settings.micro_batch is None and task.micro_batch == 0
    assert not isinstance(task.prepare_batch(images), PendingBatch)
    pipelined = load_task(exports / "classification", "torchscript", preprocess_threads=THREADS, micro_batch=4,
                          streams=1)
    assert pipelined.micro_batch == 4 and isinstance(pipelined.prepare_batch(images), PendingBatch)
    two = load_task(exports / "classification", "torchscript", preprocess_threads=THREADS, streams=2)
    assert two.micro_batch == (4 if getattr(two.runtime, "streams", 1) == 2 else 0)
    serial = task.run(images)
    for answers in (pipelined.run(images), two.run(images)):
        for a, b in zip(serial, answers):
            assert_same("classification", a, b)


def test_a_yolov8_detector_without_threads_runs_one_image_at_a_time(format_exports):
    """The yolov8 layout's measured ``serial_micro_batch`` (1): a worker without threads runs its images one by
    one, with the answers of one forward pass for the whole batch; with threads it pipelines at the task's 4,
    and a micro_batch that is set wins over both."""
    from tests.scenes import bright_box_scene
    from tests.unit.test_detection_formats import format_task

    data = [png(bright_box_scene(w, h)[0]) for w, h in ((640, 480), (777, 333), (41, 333))] + [b"not an image"]
    whole = format_task(format_exports, "yolov8", preprocess_threads=1, micro_batch=0)
    alone = format_task(format_exports, "yolov8", preprocess_threads=1)
    assert alone.serial_micro_batch == 1 and isinstance(alone.micro_batching.pool, InlineExecutor)
    whole.runtime = CountingRuntime(whole.runtime)
    alone.runtime = counting = CountingRuntime(alone.runtime)
    expected, got = whole.run(data), alone.run(data)
    assert counting.sizes == [1, 1, 1] and whole.runtime.sizes == [3]
    assert got[:3] == expected[:3] and got[3].status == expected[3].status == 400
    assert format_task(format_exports, "yolov8", preprocess_threads=THREADS).micro_batching.size == 4
    assert format_task(format_exports, "yolov8", preprocess_threads=1, micro_batch=2).micro_batching.size == 2
    assert format_task(format_exports, "yolov5", preprocess_threads=1).micro_batching is None  # not measured
