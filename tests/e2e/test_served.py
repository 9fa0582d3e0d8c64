"""End to end against the run's one real TorchServe (tests/e2e/conftest.py, free loopback ports)."""

from __future__ import annotations

import json

import numpy as np
import psutil
import pytest
import requests

from tests.checks import (
    assert_same_classification,
    assert_same_detections,
    check_classification,
    check_detection,
    check_segmentation,
    mask_agreement,
)
from tests.helpers import AB_MODEL, BACKENDS, TASKS, all_at_once, jpeg, load_task, png
from tests.scenes import GEOMETRY_SIZES, bright_box_scene, colour_scene
from tsvision.serving.tasks.segmentation import decode_png
from tsvision.tools.archive.workflow_cli import main as workflow_main
from tsvision.tools.serve.manage import Management, ManagementError
from tsvision.tools.serve.server import TorchServe

pytestmark = pytest.mark.e2e
DEFAULT_MODELS = [f"{task}_{backend}" for task in TASKS for backend in BACKENDS]
TOY_MODELS = [f"toy_{task}_{backend}" for task in ("detection", "segmentation") for backend in BACKENDS]


def ask(served: TorchServe, model: str, data: bytes):
    response = served.predict(model, data)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def test_all_archives_are_ready(served):
    names = {m["modelName"] for m in served.list_models()}
    assert names == set(DEFAULT_MODELS + TOY_MODELS
                        + ["classification_batched", "person_counter", "cat_counter", AB_MODEL])
    for name in names:
        workers = served.describe(name)[0]["workers"]
        assert workers and all(w["status"] == "READY" for w in workers)


def test_every_model_answers_real_photos_with_the_documented_schema(served, exports, photos):
    for task in TASKS:
        labels = json.loads((exports / task / "labels.json").read_text())
        threshold = json.loads((exports / task / "settings.json").read_text()).get("score_threshold", 0.5)
        for backend in BACKENDS:
            for image in photos.values():
                answer = ask(served, f"{task}_{backend}", jpeg(image))
                if task == "classification":
                    check_classification(answer, labels)
                elif task == "segmentation":
                    check_segmentation(answer, image.width, image.height, len(labels))
                else:
                    check_detection(answer, image.width, image.height, threshold)


def test_torchscript_and_onnx_archives_agree(served, photos):
    for image in photos.values():
        data = jpeg(image)
        a, b = (ask(served, f"classification_{backend}", data) for backend in BACKENDS)
        assert_same_classification(a, b)
        a, b = (ask(served, f"detection_{backend}", data) for backend in BACKENDS)
        assert a and b, "the random-weights detector is set up to show boxes"
        assert_same_detections(a, b)
        a, b = (ask(served, f"segmentation_{backend}", data) for backend in BACKENDS)
        assert mask_agreement(a, b) >= 0.995


def test_served_answers_equal_in_process_answers(served, exports, photos):
    """The adapter adds nothing and loses nothing: TorchServe answers what the task computes."""
    data = jpeg(photos["coffee"])
    for task in TASKS:
        local = load_task(exports / task, "onnx").run([data])[0]
        assert ask(served, f"{task}_onnx", data) == json.loads(json.dumps(local))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_toy_geometry_through_torchserve(served, backend):
    for width, height in GEOMETRY_SIZES:
        image, truth = bright_box_scene(width, height)
        answer = ask(served, f"toy_detection_{backend}", jpeg(image, quality=95))
        assert len(answer) == 1 and np.abs(np.subtract(answer[0]["box"], truth)).max() <= 2.0, (answer, truth)
        image, truth = colour_scene(width, height)
        mask = decode_png(ask(served, f"toy_segmentation_{backend}", png(image))["mask"])
        assert mask.shape == truth.shape and (mask == truth).mean() >= 0.99


def send_together(served: TorchServe, model: str, items: list) -> list:
    """Post all items at the same instant from separate threads; return (json, batch size)."""
    def post(data):
        response = served.predict(model, data)
        assert response.status_code == 200, response.text
        return response.json(), int(response.headers["X-Batch-Size"])

    return all_at_once(post, items)


@pytest.mark.parametrize("model", ["classification_onnx", "segmentation_torchscript", "detection_onnx",
                                   "toy_detection_onnx"])
def test_concurrent_differently_sized_images_batch_and_match_one_by_one(served, photos, model):
    images = list(photos.values()) + [bright_box_scene(w, h)[0] for w, h in GEOMETRY_SIZES]
    items = [jpeg(image) for image in images]
    alone = [ask(served, model, data) for data in items]
    for _ in range(5):  # the frontend decides batching; retry until it did batch
        together = send_together(served, model, items)
        if max(size for _, size in together) > 1:
            break
    assert max(size for _, size in together) > 1, "TorchServe never batched the concurrent requests"
    for (answer, _), single in zip(together, alone):
        if model.startswith("classification"):
            assert_same_classification(answer, single, score_tol=1e-5)
        elif model.startswith("segmentation"):
            assert mask_agreement(answer, single) >= 0.9999
        else:
            assert_same_detections(answer, single, box_tol=0.05, score_tol=1e-5)


def test_bad_input_gets_a_json_error_and_the_worker_survives(served, photos):
    pids = served.worker_pids("classification_onnx")
    response = served.predict("classification_onnx", b"\x89PNG this is not really a png")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 400 and body["type"] == "UnreadableImage" and "PNG" in body["message"]
    assert ask(served, "classification_onnx", jpeg(photos["chelsea"]))
    assert served.worker_pids("classification_onnx") == pids


def test_torchserve_is_stopped_by_pid_even_when_the_test_fails_and_the_serving_profile_refuses_registration(
        model_store, tmp_path):
    """A server of its own: this test stops it, and it runs the shipped serving profile (the run's
    server has registration on). Two checks once the server is up: registration is refused (the
    serving profile), and the server is stopped by pid when the block fails."""
    server = TorchServe(model_store, tmp_path, models="toy_segmentation_onnx.mar")
    processes = []
    with pytest.raises(RuntimeError, match="a failing test"):
        with server:
            management = Management(server.management_url, server.workdir / "key_file.json")
            with pytest.raises(ManagementError, match="model API is off"):
                management.register("toy_detection_onnx.mar", store=model_store)
            # TorchServe does not gate POST /workflows on the model API: a real .war in the model store
            # must still not register (the serving profile's workflow store is an empty folder)
            assert workflow_main(["--name", "refused_workflow", "--store", str(model_store)]) == 0
            answer = requests.post(f"{server.management_url}/workflows", params={"url": "refused_workflow.war"},
                                   headers=server.headers("management"), timeout=120)
            assert answer.status_code == 404, answer.text
            listed = requests.get(f"{server.management_url}/workflows", headers=server.headers("management"),
                                  timeout=30)
            assert "refused_workflow" not in listed.text
            frontend = psutil.Process(server.pid)
            processes = [frontend] + frontend.children(recursive=True)
            assert len(processes) >= 2, "frontend and at least one worker"
            raise RuntimeError("a failing test")
    assert processes and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
