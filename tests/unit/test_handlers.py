"""The handler classes in-process only, through TorchServe's own Context (LocalWorker): the entry
files, gRPC's stream marker on the rows, an explanation inside a batch, a hook that raises, handler
files and tasks refused at load, devices. Per-request statuses in a mixed batch, a user's handler
file, explanations, describe and metrics over every transport (in-process included) are
tests/e2e/test_handlers.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TOY_SETTINGS, png
from tests.scenes import bright_box_scene
from tsvision.serving import ImageClassifier, ObjectDetector
from tsvision.serving.runtimes import load_runtime, pick_device
from tsvision.tools.archive.local_worker import LocalWorker, load_handler_class
from tsvision.tools.archive.package import default_handler


def toy_detector_folder(toy_exports: Path, tmp_path: Path, labels: list) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(parents=True)
    shutil.copy(toy_exports / "detection" / "model.onnx", folder / "model.onnx")
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def toy_config(**extra) -> dict:
    return {"batchSize": 8,
            "handler": {"task": "detection", "labels": "labels.json", **TOY_SETTINGS["detection"], **extra}}


@pytest.fixture()
def detector(toy_exports, tmp_path):
    folder = toy_detector_folder(toy_exports, tmp_path, ["background", "bright rectangle"])
    return LocalWorker(load_handler_class(default_handler("detection", tmp_path)), folder, "model.onnx", toy_config(),
                       name="toy", version="3.0")


def test_entry_files_define_exactly_one_handler_class_each():
    for task, cls in (("classification", "ImageClassifier"), ("segmentation", "ImageSegmenter"),
                      ("detection", "ObjectDetector")):
        loaded = load_handler_class(REPO / "handlers" / default_handler(task, REPO).name)
        assert loaded.__name__ == cls and loaded.task_name == task


def test_grpc_answers_close_the_stream_and_rest_answers_stay_plain(detector):
    """TorchServe's gRPC requests have no text headers (only the inputs' content types): their answers,
    errors included, carry ``ts_stream_next: false`` (StreamPredictions needs it; without it TorchServe
    0.12 restarts the worker). A REST answer must not carry it (it would become a broken stream)."""
    scene, _ = bright_box_scene(320, 200)
    rows = [{"data": png(scene)}, {"data": b"junk"}, {"body": png(scene)}]
    headers = [{"data": {"content-type": ""}}, {"data": {"content-type": ""}},
               {"body": {"content-type": "image/png"}, "Host": "127.0.0.1:8080", "Content-Length": "123"}]
    grpc, grpc_bad, rest = detector.predict(rows, headers)
    assert [r.status for r in (grpc, grpc_bad, rest)] == [200, 400, 200]
    assert grpc.headers.get("ts_stream_next") == "false" and grpc_bad.headers.get("ts_stream_next") == "false"
    assert "ts_stream_next" not in rest.headers


def test_an_explanation_of_a_detector_is_refused_per_request_inside_a_batch(detector):
    """An explanation and a prediction in one batch: explanations are for classification (answered:
    tests/unit/test_explanations.py); each alone, and describe, over every transport: tests/e2e/test_handlers.py."""
    scene, _ = bright_box_scene(320, 200)
    responses = detector.predict([{"body": png(scene)}, {"body": png(scene)}],
                                 [{"body": {"content-type": "image/png"}, "explain": "True"},
                                  {"body": {"content-type": "image/png"}}])
    assert [r.status for r in responses] == [501, 200]
    assert responses[0].json()["type"] == "NotSupported" and len(responses[1].json()) == 1
    assert "classification" in responses[0].json()["message"] and "detection" in responses[0].json()["message"]


def test_an_exception_in_a_users_hook_is_a_500_per_request_and_the_worker_lives(toy_exports, tmp_path):
    class Broken(ObjectDetector):
        def postprocess(self, batch):
            raise RuntimeError("secret detail 0xdead")

    folder = toy_detector_folder(toy_exports, tmp_path, ["background", "bright rectangle"])
    worker = LocalWorker(Broken, folder, "model.onnx", toy_config())
    scene, _ = bright_box_scene(120, 90)
    responses = worker.predict([{"body": png(scene)}] * 3, [{"body": {"content-type": "image/png"}}] * 3)
    assert [r.status for r in responses] == [500] * 3
    body = responses[0].json()
    assert body["type"] == "InternalError" and "error id" in body["message"] and "0xdead" not in body["message"]


def test_a_handler_for_another_task_is_refused_at_start(exports, tmp_path):
    settings = json.loads((exports / "classification" / "settings.json").read_text())
    with pytest.raises(ValueError, match="ObjectDetector serves detection"):
        LocalWorker(ObjectDetector, exports / "classification", "model.onnx", {"handler": settings})
    worker = LocalWorker(ImageClassifier, exports / "classification", "model.onnx", {"handler": settings})
    assert worker.handler.task.runtime.device == "cpu"


def test_a_handler_file_with_two_classes_is_refused(tmp_path):
    path = tmp_path / "two.py"
    path.write_text("from tsvision.serving import ObjectDetector\n"
                    "class A(ObjectDetector):\n    pass\nclass B(ObjectDetector):\n    pass\n")
    with pytest.raises(ValueError, match="defines 2 classes"):
        load_handler_class(path)


def test_the_device_is_the_cpu_without_cuda_and_the_assigned_gpu_with_it():
    assert pick_device(None) == "cpu"
    assert pick_device(0) == ("cuda:0" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_torchscript_runs_on_the_assigned_gpu(exports):
    runtime = load_runtime(exports / "classification" / "model.pt", device="cuda:0")
    cpu = load_runtime(exports / "classification" / "model.pt")
    batch = torch.rand(2, 3, 224, 224).numpy()
    assert runtime.device == "cuda:0"
    assert abs(runtime.run(batch)[0] - cpu.run(batch)[0]).max() < 1e-3


@pytest.mark.parametrize("spinning, allow, force_stop", [("run", "", "1"), ("never", "0", ""), ("always", "", "")])
def test_the_spinning_setting_reaches_onnx_runtimes_session(exports, spinning, allow, force_stop):
    runtime = load_runtime(exports / "classification" / "model.onnx", spinning=spinning)
    options = runtime._session.get_session_options()

    def entry(key: str) -> str:  # "" when not set: ONNX Runtime's default
        try:
            return options.get_session_config_entry(key)
        except RuntimeError:  # "does not have configuration with key"
            return ""

    assert entry("session.intra_op.allow_spinning") == allow
    assert entry("session.force_spinning_stop") == force_stop


def test_an_unknown_spinning_value_is_refused():
    from tsvision.serving.settings import Settings

    with pytest.raises(ValueError, match="spinning must be one of"):
        Settings.from_mapping({"task": "classification", "spinning": "sometimes"})


@pytest.mark.parametrize("config, expected", [({"minWorkers": 2}, 2), ({"minWorkers": 1}, 1), ({}, 6)])
def test_each_worker_sizes_its_threads_by_the_archives_workers(exports, monkeypatch, config, expected):
    """The handler tells the task how many workers share the host: the model-config's minWorkers, else
    TorchServe's default (one per core; 6 cores here); on a GPU, one per device."""
    import ts
    from ts.context import Context

    from tsvision.serving import handler as adapter

    seen = []

    def build_task(model_path, settings, base_dir, workers, device):
        seen.append(workers)
        raise StopIteration  # the count is all this test needs

    monkeypatch.setattr(adapter, "available_cores", lambda: 6)
    monkeypatch.setattr(adapter, "build_task", build_task)
    settings = json.loads((exports / "classification" / "settings.json").read_text())
    manifest = {"model": {"modelName": "m", "modelVersion": "1.0", "serializedFile": "model.onnx"}}
    context = Context("m", str(exports / "classification"), manifest, 1, None, ts.__version__, True, None,
                      {**config, "handler": settings})
    with pytest.raises(StopIteration):
        ImageClassifier().initialize(context)
    assert seen == [expected]
    assert adapter.default_workers("cuda:0") == 1


def test_a_local_worker_runs_alone_whatever_workers_the_archive_asks_for(exports):
    """tsvision predict, batch and kserve run one handler in the process: it gets the process's cores."""
    settings = json.loads((exports / "classification" / "settings.json").read_text())
    worker = LocalWorker(ImageClassifier, exports / "classification", "model.onnx",
                         {"minWorkers": 2, "maxWorkers": 2, "handler": settings})
    assert worker.context.model_yaml_config["minWorkers"] == 1
    assert worker.predict([{"body": png(bright_box_scene(64, 48)[0])}])[0].status == 200
